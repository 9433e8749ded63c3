package server

import (
	"context"
	"time"

	"connectrpc.com/connect"

	agentv1 "github.com/hypervm/hyper/api/agent/v1"
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
	out := vmToProto(vm)
	out.Main = s.mainProcess(ctx, vm)
	return connect.NewResponse(out), nil
}

// mainProcess asks a running VM's agent how the image's command is doing.
// It is best effort: a VM whose agent does not answer quickly is reported
// without it.
func (s *Server) mainProcess(ctx context.Context, vm store.VM) *hyperv1.MainProcess {
	if s.vms == nil || vm.Node != s.node || vm.State != "running" {
		return nil
	}
	c, err := s.vms.Agent(ctx, vm.ID)
	if err != nil {
		return nil
	}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	h, err := c.Health(hctx)
	if err != nil {
		return nil
	}
	mp := h.GetMain()
	out := &hyperv1.MainProcess{}
	switch mp.GetState() {
	case agentv1.MainProcess_STATE_RUNNING:
		out.Running = true
	case agentv1.MainProcess_STATE_EXITED:
		out.Exited = true
		out.ExitCode = mp.GetExit().GetCode()
		out.Signal = mp.GetExit().GetSignal()
	case agentv1.MainProcess_STATE_FAILED:
		out.Exited, out.ExitCode = true, -1
	default:
		return nil
	}
	return out
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
