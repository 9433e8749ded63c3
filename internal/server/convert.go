package server

import (
	"encoding/json"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
	"github.com/hypervm/hyper/internal/cluster"
	"github.com/hypervm/hyper/internal/store"
)

// Enum <-> store string conversions. The store keeps plain lowercase names
// so its rows read well and do not depend on proto numbering.

var archNames = map[hyperv1.Arch]string{
	hyperv1.Arch_ARCH_X86_64:  "x86_64",
	hyperv1.Arch_ARCH_AARCH64: "aarch64",
}

func archFromName(s string) hyperv1.Arch {
	for k, v := range archNames {
		if v == s {
			return k
		}
	}
	return hyperv1.Arch_ARCH_UNSPECIFIED
}

func stateName(s hyperv1.VmState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "VM_STATE_"))
}

func stateFromName(s string) hyperv1.VmState {
	return hyperv1.VmState(hyperv1.VmState_value["VM_STATE_"+strings.ToUpper(s)])
}

func instanceTypeName(t hyperv1.InstanceType) string {
	return strings.ToLower(strings.TrimPrefix(t.String(), "INSTANCE_TYPE_"))
}

func instanceTypeFromName(s string) hyperv1.InstanceType {
	return hyperv1.InstanceType(hyperv1.InstanceType_value["INSTANCE_TYPE_"+strings.ToUpper(s)])
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func tsPtr(t *time.Time) *timestamppb.Timestamp {
	if t == nil {
		return nil
	}
	return ts(*t)
}

func vmToProto(v store.VM) *hyperv1.Vm {
	return &hyperv1.Vm{
		Id:           v.ID,
		Node:         v.Node,
		ImageId:      v.ImageID,
		LayerId:      v.LayerID,
		InstanceType: instanceTypeFromName(v.InstanceType),
		Arch:         archFromName(v.Arch),
		BootArgs:     v.BootArgs,
		Labels:       v.Labels,
		State:        stateFromName(v.State),
		LastError:    v.LastError,
		Restarts:     uint32(v.Restarts),
		CreatedAt:    ts(v.CreatedAt),
		StartedAt:    tsPtr(v.StartedAt),
		StoppedAt:    tsPtr(v.StoppedAt),
		ExpiresAt:    tsPtr(v.ExpiresAt),
	}
}

func imageToProto(im store.Image) *hyperv1.Image {
	out := &hyperv1.Image{
		Id:        im.ID,
		Ref:       im.Ref,
		Label:     im.Label,
		Digest:    im.Digest,
		Arch:      archFromName(im.Arch),
		SizeBytes: uint64(im.Size),
		CreatedAt: ts(im.CreatedAt),
	}
	if len(im.Config) > 0 {
		var cfg imageConfig
		if json.Unmarshal(im.Config, &cfg) == nil {
			out.Config = &hyperv1.ImageConfig{
				Entrypoint:   cfg.Entrypoint,
				Cmd:          cfg.Cmd,
				Env:          cfg.Env,
				WorkingDir:   cfg.WorkingDir,
				User:         cfg.User,
				ExposedPorts: cfg.ExposedPorts,
			}
		}
	}
	return out
}

// imageConfig is how an image's OCI config subset is stored.
type imageConfig struct {
	Entrypoint   []string `json:"entrypoint,omitempty"`
	Cmd          []string `json:"cmd,omitempty"`
	Env          []string `json:"env,omitempty"`
	WorkingDir   string   `json:"working_dir,omitempty"`
	User         string   `json:"user,omitempty"`
	ExposedPorts []string `json:"exposed_ports,omitempty"`
}

func layerToProto(l store.Layer) *hyperv1.Layer {
	return &hyperv1.Layer{
		Id:        l.ID,
		ParentId:  l.ParentID,
		ImageId:   l.ImageID,
		Node:      l.Node,
		Label:     l.Label,
		SizeBytes: uint64(l.Size),
		CreatedAt: ts(l.CreatedAt),
	}
}

func (s *Server) nodeToProto(n store.Node) *hyperv1.Node {
	out := &hyperv1.Node{
		Name:           n.Name,
		Address:        n.Address,
		Alive:          s.now().Sub(n.RenewedAt) < s.leaseTTL,
		Cordoned:       n.Cordoned,
		LeaseRenewedAt: ts(n.RenewedAt),
		StartedAt:      ts(n.StartedAt),
		Arch:           archFromName(n.Arch),
		Driver:         n.Driver,
		Version:        n.Version,
		CachedImages:   n.Images,
	}
	var b cluster.Budget
	if len(n.Budget) > 0 && json.Unmarshal(n.Budget, &b) == nil {
		out.Budget = &hyperv1.Budget{
			MemTotalBytes: b.MemTotal, MemAllocatedBytes: b.MemAllocated,
			DiskTotalBytes: b.DiskTotal, DiskAllocatedBytes: b.DiskAllocated,
			CpuLoad: b.CPULoad, CpuMaxLoad: b.CPUMaxLoad, Cpus: b.CPUs, Vms: b.VMs,
		}
	}
	return out
}
