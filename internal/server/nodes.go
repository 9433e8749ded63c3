package server

import (
	"context"

	"connectrpc.com/connect"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
)

func (s *Server) ListNodes(ctx context.Context, _ *connect.Request[hyperv1.ListNodesRequest]) (*connect.Response[hyperv1.ListNodesResponse], error) {
	nodes, err := s.store.ListNodes(ctx)
	if err != nil {
		return nil, apiError(err)
	}
	out := &hyperv1.ListNodesResponse{}
	for _, n := range nodes {
		out.Nodes = append(out.Nodes, s.nodeToProto(n))
	}
	return connect.NewResponse(out), nil
}

func (s *Server) GetNode(ctx context.Context, req *connect.Request[hyperv1.GetNodeRequest]) (*connect.Response[hyperv1.Node], error) {
	return s.getNode(ctx, req.Msg.GetName())
}

func (s *Server) CordonNode(ctx context.Context, req *connect.Request[hyperv1.CordonNodeRequest]) (*connect.Response[hyperv1.Node], error) {
	return s.setCordoned(ctx, req.Msg.GetName(), true)
}

func (s *Server) UncordonNode(ctx context.Context, req *connect.Request[hyperv1.UncordonNodeRequest]) (*connect.Response[hyperv1.Node], error) {
	return s.setCordoned(ctx, req.Msg.GetName(), false)
}

func (s *Server) setCordoned(ctx context.Context, name string, cordoned bool) (*connect.Response[hyperv1.Node], error) {
	if name == "" {
		return nil, invalid("name", "required")
	}
	if err := s.store.SetCordoned(ctx, name, cordoned); err != nil {
		return nil, apiError(err)
	}
	return s.getNode(ctx, name)
}

func (s *Server) getNode(ctx context.Context, name string) (*connect.Response[hyperv1.Node], error) {
	if name == "" {
		return nil, invalid("name", "required")
	}
	n, err := s.store.GetNode(ctx, name)
	if err != nil {
		return nil, apiError(err)
	}
	return connect.NewResponse(s.nodeToProto(n)), nil
}
