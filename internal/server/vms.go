package server

import (
	"context"

	"connectrpc.com/connect"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
	"github.com/hypervm/hyper/internal/ids"
	"github.com/hypervm/hyper/internal/store"
)

func (s *Server) GetVm(ctx context.Context, req *connect.Request[hyperv1.GetVmRequest]) (*connect.Response[hyperv1.Vm], error) {
	id := req.Msg.GetId()
	if !ids.IsVM(id) {
		return nil, invalid("id", "%q is not a VM id (want v followed by 16 of [a-z2-7])", id)
	}
	vm, err := s.store.GetVM(ctx, id)
	if err != nil {
		return nil, apiError(err)
	}
	return connect.NewResponse(vmToProto(vm)), nil
}

func (s *Server) ListVms(ctx context.Context, req *connect.Request[hyperv1.ListVmsRequest]) (*connect.Response[hyperv1.ListVmsResponse], error) {
	m := req.Msg
	if m.GetState() != hyperv1.VmState_VM_STATE_UNSPECIFIED && hyperv1.VmState_name[int32(m.GetState())] == "" {
		return nil, invalid("state", "unknown value %d", m.GetState())
	}
	f := store.VMFilter{
		Node:           m.GetNode(),
		Labels:         m.GetLabels(),
		IncludeStopped: m.GetIncludeStopped() || m.GetState() == hyperv1.VmState_VM_STATE_STOPPED,
		PageSize:       int(m.GetPageSize()),
		PageToken:      m.GetPageToken(),
	}
	if m.GetState() != hyperv1.VmState_VM_STATE_UNSPECIFIED {
		f.State = stateName(m.GetState())
	}
	vms, next, err := s.store.ListVMs(ctx, f)
	if err != nil {
		return nil, apiError(err)
	}
	out := &hyperv1.ListVmsResponse{NextPageToken: next, Vms: make([]*hyperv1.Vm, 0, len(vms))}
	for _, v := range vms {
		out.Vms = append(out.Vms, vmToProto(v))
	}
	return connect.NewResponse(out), nil
}

func (s *Server) ListLayers(ctx context.Context, req *connect.Request[hyperv1.ListLayersRequest]) (*connect.Response[hyperv1.ListLayersResponse], error) {
	if id := req.Msg.GetImageId(); id != "" && !ids.IsImage(id) {
		return nil, invalid("image_id", "%q is not an image id (want 64 lowercase hex characters)", id)
	}
	layers, err := s.store.ListLayers(ctx, store.LayerFilter{ImageID: req.Msg.GetImageId()})
	if err != nil {
		return nil, apiError(err)
	}
	out := &hyperv1.ListLayersResponse{}
	for _, l := range layers {
		out.Layers = append(out.Layers, layerToProto(l))
	}
	return connect.NewResponse(out), nil
}
