package server

import (
	"context"
	"unicode/utf8"

	"connectrpc.com/connect"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
	"github.com/hypervm/hyper/internal/ids"
	"github.com/hypervm/hyper/internal/node"
)

func (s *Server) ForkVm(ctx context.Context, req *connect.Request[hyperv1.ForkVmRequest]) (*connect.Response[hyperv1.ForkVmResponse], error) {
	m := req.Msg
	if n := m.GetCount(); n < 1 || n > node.MaxForkCount {
		return nil, invalid("count", "must be 1-%d (got %d)", node.MaxForkCount, n)
	}
	if err := checkLabels(m.GetLabels()); err != nil {
		return nil, err
	}
	if err := s.localVM(ctx, "ForkVm", m.GetId()); err != nil {
		return nil, err
	}
	children, err := s.vms.Fork(ctx, m.GetId(), int(m.GetCount()), m.GetLabels())
	if err != nil {
		return nil, apiError(err)
	}
	out := &hyperv1.ForkVmResponse{}
	for _, vm := range children {
		out.Children = append(out.Children, vmToProto(vm))
	}
	return connect.NewResponse(out), nil
}

func (s *Server) SnapshotVm(ctx context.Context, req *connect.Request[hyperv1.SnapshotVmRequest]) (*connect.Response[hyperv1.Layer], error) {
	m := req.Msg
	if l := m.GetLabel(); len(l) > 255 || !utf8.ValidString(l) {
		return nil, invalid("label", "must be valid UTF-8 of at most 255 bytes")
	}
	if err := s.localVM(ctx, "SnapshotVm", m.GetId()); err != nil {
		return nil, err
	}
	l, err := s.vms.Snapshot(ctx, m.GetId(), m.GetLabel())
	if err != nil {
		return nil, apiError(err)
	}
	return connect.NewResponse(layerToProto(l)), nil
}

func (s *Server) DeleteLayer(ctx context.Context, req *connect.Request[hyperv1.DeleteLayerRequest]) (*connect.Response[hyperv1.DeleteLayerResponse], error) {
	id := req.Msg.GetId()
	if !ids.IsLayer(id) {
		return nil, invalid("id", "%q is not a layer id (want l followed by 16 of [a-z2-7])", id)
	}
	if s.vms == nil {
		return nil, unimplemented("DeleteLayer", "this node runs no VMs")
	}
	if err := s.vms.DeleteLayer(ctx, id); err != nil {
		return nil, apiError(err)
	}
	return connect.NewResponse(&hyperv1.DeleteLayerResponse{}), nil
}

// localVM checks that id names a VM of this node, which runs VMs, for the
// RPC op.
func (s *Server) localVM(ctx context.Context, op, id string) error {
	if !ids.IsVM(id) {
		return invalid("id", "%q is not a VM id (want v followed by 16 of [a-z2-7])", id)
	}
	if s.vms == nil {
		return unimplemented(op, "this node runs no VMs")
	}
	row, err := s.store.GetVM(ctx, id)
	if err != nil {
		return apiError(err)
	}
	if row.Node != s.node {
		return connect.NewError(connect.CodeUnimplemented, errorf("vm %s runs on node %s: forwarding between nodes lands with the cluster", id, row.Node))
	}
	return nil
}
