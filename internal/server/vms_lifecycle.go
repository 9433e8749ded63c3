package server

import (
	"context"
	"strings"
	"time"

	"connectrpc.com/connect"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
	"github.com/hypervm/hyper/internal/ids"
	"github.com/hypervm/hyper/internal/node"
)

// defaultGrace is how long a guest may take to shut down on StopVm.
const defaultGrace = 5 * time.Second

// labelKeyOK matches label keys: [a-z0-9._/-]{1,63}.
func labelKeyOK(k string) bool {
	if len(k) == 0 || len(k) > 63 {
		return false
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '/' || c == '-') {
			return false
		}
	}
	return true
}

// checkLabels validates the labels of a request.
func checkLabels(labels map[string]string) error {
	for k, v := range labels {
		if !labelKeyOK(k) {
			return invalid("labels", "key %q: want 1-63 of [a-z0-9._/-]", k)
		}
		if strings.HasPrefix(k, "hyper.") {
			return invalid("labels", "key %q: the hyper. prefix is reserved for labels Hyper sets", k)
		}
		if len(v) > 255 {
			return invalid("labels", "value of %q is longer than 255 bytes", k)
		}
	}
	return nil
}

func (s *Server) CreateVm(ctx context.Context, req *connect.Request[hyperv1.CreateVmRequest]) (*connect.Response[hyperv1.Vm], error) {
	m := req.Msg
	r := node.CreateRequest{BootArgs: m.GetBootArgs(), Labels: m.GetLabels()}
	switch src := m.GetSource().(type) {
	case *hyperv1.CreateVmRequest_ImageId:
		id, err := imageID(src.ImageId)
		if err != nil {
			return nil, invalid("image_id", "%q is not an image id (want 64 lowercase hex characters)", src.ImageId)
		}
		r.ImageID = id
	case *hyperv1.CreateVmRequest_LayerId:
		if !ids.IsLayer(src.LayerId) {
			return nil, invalid("layer_id", "%q is not a layer id (want l followed by 16 of [a-z2-7])", src.LayerId)
		}
		r.LayerID = src.LayerId
	default:
		return nil, invalid("source", "image_id or layer_id is required")
	}
	if m.GetInstanceType() == hyperv1.InstanceType_INSTANCE_TYPE_UNSPECIFIED || hyperv1.InstanceType_name[int32(m.GetInstanceType())] == "" {
		return nil, invalid("instance_type", "required: one of MICRO..TERA (got %v)", m.GetInstanceType())
	}
	r.InstanceType = instanceTypeName(m.GetInstanceType())
	arch, ok := archNames[m.GetArch()]
	if !ok {
		return nil, invalid("arch", "required: ARCH_X86_64 or ARCH_AARCH64 (got %v)", m.GetArch())
	}
	r.Arch = arch
	if err := checkLabels(m.GetLabels()); err != nil {
		return nil, err
	}
	if len(m.GetBootArgs()) > 2048 {
		return nil, invalid("boot_args", "longer than 2048 bytes")
	}
	if t := m.GetTtl(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() <= 0 {
			return nil, invalid("ttl", "must be a positive duration")
		}
		r.TTL = t.AsDuration()
	}
	if n := m.GetNode(); n != "" && n != s.node {
		return nil, connect.NewError(connect.CodeUnimplemented, errorf("node: placing a VM on another node (%s) lands with the cluster scheduler; create it through that node", n))
	}
	if s.vms == nil {
		return nil, unimplemented("CreateVm", "this node runs no VMs")
	}
	vm, err := s.vms.Create(ctx, r)
	if err != nil {
		return nil, apiError(err)
	}
	return connect.NewResponse(vmToProto(vm)), nil
}

func (s *Server) StopVm(ctx context.Context, req *connect.Request[hyperv1.StopVmRequest]) (*connect.Response[hyperv1.StopVmResponse], error) {
	id := req.Msg.GetId()
	if !ids.IsVM(id) {
		return nil, invalid("id", "%q is not a VM id (want v followed by 16 of [a-z2-7])", id)
	}
	grace := defaultGrace
	if g := req.Msg.GetGrace(); g != nil {
		if err := g.CheckValid(); err != nil || g.AsDuration() < 0 {
			return nil, invalid("grace", "must be a non-negative duration")
		}
		grace = g.AsDuration()
	}
	row, err := s.store.GetVM(ctx, id)
	if err != nil {
		return nil, apiError(err)
	}
	if row.Node != s.node {
		return nil, connect.NewError(connect.CodeUnimplemented, errorf("vm %s runs on node %s: forwarding between nodes lands with the cluster", id, row.Node))
	}
	if s.vms == nil {
		return nil, unimplemented("StopVm", "this node runs no VMs")
	}
	vm, err := s.vms.Stop(ctx, id, grace)
	if err != nil {
		return nil, apiError(err)
	}
	return connect.NewResponse(&hyperv1.StopVmResponse{Vm: vmToProto(vm)}), nil
}
