package server

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"

	"connectrpc.com/connect"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
	"github.com/hypervm/hyper/internal/ids"
	"github.com/hypervm/hyper/internal/node"
	"github.com/hypervm/hyper/internal/store"
)

// forkBudget is how many children a fake fork has room for.
const forkBudget = 2

// Fork makes count child rows of a running parent in the store, or fails
// as the node does: unknown parent, parent not running, no budget.
func (f *fakeVMs) Fork(ctx context.Context, parentID string, count int, labels map[string]string) ([]store.VM, error) {
	parent, err := f.st.GetVM(ctx, parentID)
	if err != nil {
		return nil, err
	}
	if parent.State != store.StateRunning {
		return nil, fmt.Errorf("vm %s is %s: %w", parentID, parent.State, node.ErrNotRunning)
	}
	if count > forkBudget {
		return nil, fmt.Errorf("%d children: %w", count, node.ErrNoBudget)
	}
	var out []store.VM
	for range count {
		l := maps.Clone(labels)
		if l == nil {
			l = map[string]string{}
		}
		l[node.ParentLabel] = parentID
		vm, err := f.st.CreateVM(ctx, store.VM{ID: ids.NewVM(), Node: "n1", ImageID: parent.ImageID, InstanceType: parent.InstanceType,
			Arch: parent.Arch, Labels: l, State: store.StateRunning})
		if err != nil {
			return nil, err
		}
		out = append(out, vm)
	}
	return out, nil
}

func (f *fakeVMs) Snapshot(ctx context.Context, id, label string) (store.Layer, error) {
	vm, err := f.st.GetVM(ctx, id)
	if err != nil {
		return store.Layer{}, err
	}
	if vm.State != store.StateRunning {
		return store.Layer{}, fmt.Errorf("vm %s is %s: %w", id, vm.State, node.ErrNotRunning)
	}
	return f.st.PutLayer(ctx, store.Layer{ID: ids.NewLayer(), ParentID: vm.LayerID, ImageID: vm.ImageID, Node: "n1", Label: label, Size: 4096})
}

func (f *fakeVMs) DeleteLayer(ctx context.Context, id string) error { return f.st.DeleteLayer(ctx, id) }

func TestForkVm(t *testing.T) {
	e := newGuestEnv(t)
	ctx := testCtx(t)
	fork := func(r *hyperv1.ForkVmRequest) func() error {
		return func() error {
			_, err := e.api.ForkVm(ctx, connect.NewRequest(r))
			return err
		}
	}
	wantCode(t, "count 0", connect.CodeInvalidArgument, fork(&hyperv1.ForkVmRequest{Id: e.running}))
	wantCode(t, "count too large", connect.CodeInvalidArgument, fork(&hyperv1.ForkVmRequest{Id: e.running, Count: node.MaxForkCount + 1}))
	wantCode(t, "bad label", connect.CodeInvalidArgument, fork(&hyperv1.ForkVmRequest{Id: e.running, Count: 1, Labels: map[string]string{"Bad Key": "x"}}))
	wantCode(t, "bad id", connect.CodeInvalidArgument, fork(&hyperv1.ForkVmRequest{Id: "nope", Count: 1}))
	wantCode(t, "unknown vm", connect.CodeNotFound, fork(&hyperv1.ForkVmRequest{Id: ids.NewVM(), Count: 1}))
	wantCode(t, "stopped parent", connect.CodeFailedPrecondition, fork(&hyperv1.ForkVmRequest{Id: e.stopped, Count: 1}))
	wantCode(t, "over budget", connect.CodeResourceExhausted, fork(&hyperv1.ForkVmRequest{Id: e.running, Count: forkBudget + 1}))

	res, err := e.api.ForkVm(ctx, connect.NewRequest(&hyperv1.ForkVmRequest{Id: e.running, Count: 2, Labels: map[string]string{"team": "a"}}))
	if err != nil {
		t.Fatal(err)
	}
	kids := res.Msg.GetChildren()
	if len(kids) != 2 {
		t.Fatalf("children: %v", kids)
	}
	for _, k := range kids {
		if k.GetLabels()["team"] != "a" || k.GetLabels()[node.ParentLabel] != e.running || k.GetState() != hyperv1.VmState_VM_STATE_RUNNING {
			t.Fatalf("child %v", k)
		}
	}
}

func TestSnapshotAndDeleteLayer(t *testing.T) {
	e := newGuestEnv(t)
	ctx := testCtx(t)
	wantCode(t, "label too long", connect.CodeInvalidArgument, func() error {
		_, err := e.api.SnapshotVm(ctx, connect.NewRequest(&hyperv1.SnapshotVmRequest{Id: e.running, Label: strings.Repeat("x", 256)}))
		return err
	})
	wantCode(t, "stopped vm", connect.CodeFailedPrecondition, func() error {
		_, err := e.api.SnapshotVm(ctx, connect.NewRequest(&hyperv1.SnapshotVmRequest{Id: e.stopped}))
		return err
	})
	res, err := e.api.SnapshotVm(ctx, connect.NewRequest(&hyperv1.SnapshotVmRequest{Id: e.running, Label: "golden"}))
	if err != nil {
		t.Fatal(err)
	}
	l := res.Msg
	if !ids.IsLayer(l.GetId()) || l.GetLabel() != "golden" || l.GetNode() != "n1" {
		t.Fatalf("layer %v", l)
	}
	// A VM on the layer keeps it.
	user := ids.NewVM()
	if _, err := e.st.CreateVM(ctx, store.VM{ID: user, Node: "n1", ImageID: l.GetImageId(), LayerID: l.GetId(), State: store.StateRunning}); err != nil {
		t.Fatal(err)
	}
	del := func(id string) func() error {
		return func() error {
			_, err := e.api.DeleteLayer(ctx, connect.NewRequest(&hyperv1.DeleteLayerRequest{Id: id}))
			return err
		}
	}
	wantCode(t, "bad layer id", connect.CodeInvalidArgument, del("nope"))
	wantCode(t, "unknown layer", connect.CodeNotFound, del(ids.NewLayer()))
	wantCode(t, "layer in use", connect.CodeFailedPrecondition, del(l.GetId()))
	if err := del(l.GetId())(); !strings.Contains(err.Error(), user) {
		t.Fatalf("the refusal does not name the vm that uses the layer: %v", err)
	}
	if _, err := e.st.UpdateVMState(ctx, user, nil, store.StateStopped, ""); err != nil {
		t.Fatal(err)
	}
	if err := del(l.GetId())(); err != nil {
		t.Fatalf("delete an unused layer: %v", err)
	}
	wantCode(t, "deleted layer", connect.CodeNotFound, del(l.GetId()))
}
