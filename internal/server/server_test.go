package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
	"github.com/hypervm/hyper/api/hyper/v1/hyperv1connect"
	"github.com/hypervm/hyper/internal/cluster"
	"github.com/hypervm/hyper/internal/ids"
	"github.com/hypervm/hyper/internal/store"
)

// newTestServer serves a Server backed by a real SQLite store over HTTP/2
// (httptest's TLS server), and returns a client for it.
func newTestServer(t *testing.T, now time.Time) (hyperv1connect.HyperClient, *store.Store) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "hyper.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv := New(Options{Store: st, Node: "n1", LeaseTTL: 15 * time.Second, Now: func() time.Time { return now }})
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.EnableHTTP2 = true
	hs.StartTLS()
	t.Cleanup(hs.Close)
	return hyperv1connect.NewHyperClient(hs.Client(), hs.URL, connect.WithGRPC()), st
}

func TestNodes(t *testing.T) {
	now := time.Now()
	c, st := newTestServer(t, now)
	ctx := context.Background()
	budget, _ := json.Marshal(cluster.Budget{MemTotal: 8 << 30, CPUs: 2})
	for _, n := range []store.Node{
		{Name: "n1", Arch: "x86_64", Driver: "qemu", Budget: budget},
		{Name: "n2", Arch: "x86_64"},
	} {
		if err := st.RenewLease(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := c.ListNodes(ctx, connect.NewRequest(&hyperv1.ListNodesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Msg.GetNodes()) != 2 {
		t.Fatalf("ListNodes = %v", resp.Msg)
	}
	n1, err := c.GetNode(ctx, connect.NewRequest(&hyperv1.GetNodeRequest{Name: "n1"}))
	if err != nil {
		t.Fatal(err)
	}
	if !n1.Msg.GetAlive() || n1.Msg.GetArch() != hyperv1.Arch_ARCH_X86_64 || n1.Msg.GetBudget().GetMemTotalBytes() != 8<<30 {
		t.Fatalf("GetNode(n1) = %v", n1.Msg)
	}
	got, err := c.CordonNode(ctx, connect.NewRequest(&hyperv1.CordonNodeRequest{Name: "n2"}))
	if err != nil || !got.Msg.GetCordoned() {
		t.Fatalf("CordonNode = %v, %v", got, err)
	}
	wantCode(t, "GetNode(missing)", connect.CodeNotFound, func() error {
		_, err := c.GetNode(ctx, connect.NewRequest(&hyperv1.GetNodeRequest{Name: "zz"}))
		return err
	})
	wantCode(t, "CordonNode(empty)", connect.CodeInvalidArgument, func() error {
		_, err := c.CordonNode(ctx, connect.NewRequest(&hyperv1.CordonNodeRequest{}))
		return err
	})
}

func TestNodeAliveFollowsLease(t *testing.T) {
	s := &Server{leaseTTL: 15 * time.Second, now: time.Now}
	fresh := s.nodeToProto(store.Node{Name: "a", RenewedAt: time.Now().Add(-14 * time.Second)})
	stale := s.nodeToProto(store.Node{Name: "b", RenewedAt: time.Now().Add(-16 * time.Second)})
	if !fresh.GetAlive() || stale.GetAlive() {
		t.Fatalf("alive: fresh=%v stale=%v", fresh.GetAlive(), stale.GetAlive())
	}
}

func TestVMs(t *testing.T) {
	c, st := newTestServer(t, time.Now())
	ctx := context.Background()
	im, _, err := st.PutImage(ctx, store.Image{ID: strings.Repeat("a", 64), Ref: "busybox", Arch: "x86_64", Config: json.RawMessage(`{"cmd":["/bin/sh"]}`)})
	if err != nil {
		t.Fatal(err)
	}
	var created []string
	for i := range 5 {
		vm := store.VM{ID: ids.NewVM(), Node: "n1", ImageID: im.ID, InstanceType: "micro", Arch: "x86_64", State: "running",
			Labels: map[string]string{"team": []string{"a", "b"}[i%2]}}
		if _, err := st.CreateVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
		created = append(created, vm.ID)
	}
	if _, err := st.UpdateVMState(ctx, created[0], nil, "stopped", ""); err != nil {
		t.Fatal(err)
	}

	// Page through with a page size of 2: every live VM exactly once.
	seen := map[string]bool{}
	req := &hyperv1.ListVmsRequest{PageSize: 2}
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		resp, err := c.ListVms(ctx, connect.NewRequest(req))
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range resp.Msg.GetVms() {
			if seen[v.GetId()] {
				t.Fatalf("%s listed twice", v.GetId())
			}
			seen[v.GetId()] = true
			if v.GetInstanceType() != hyperv1.InstanceType_INSTANCE_TYPE_MICRO || v.GetState() != hyperv1.VmState_VM_STATE_RUNNING {
				t.Fatalf("vm %v", v)
			}
		}
		if req.PageToken = resp.Msg.GetNextPageToken(); req.PageToken == "" {
			break
		}
	}
	if len(seen) != 4 || seen[created[0]] {
		t.Fatalf("listed %v; want the 4 running VMs", seen)
	}

	all, err := c.ListVms(ctx, connect.NewRequest(&hyperv1.ListVmsRequest{IncludeStopped: true, Labels: map[string]string{"team": "a"}}))
	if err != nil || len(all.Msg.GetVms()) != 3 {
		t.Fatalf("ListVms(team=a, all) = %v, %v", all, err)
	}
	stopped, err := c.ListVms(ctx, connect.NewRequest(&hyperv1.ListVmsRequest{State: hyperv1.VmState_VM_STATE_STOPPED}))
	if err != nil || len(stopped.Msg.GetVms()) != 1 || stopped.Msg.GetVms()[0].GetStoppedAt() == nil {
		t.Fatalf("ListVms(stopped) = %v, %v", stopped, err)
	}

	got, err := c.GetVm(ctx, connect.NewRequest(&hyperv1.GetVmRequest{Id: created[1]}))
	if err != nil || got.Msg.GetImageId() != im.ID || got.Msg.GetLabels()["team"] != "b" {
		t.Fatalf("GetVm = %v, %v", got, err)
	}
	wantCode(t, "GetVm(bad id)", connect.CodeInvalidArgument, func() error {
		_, err := c.GetVm(ctx, connect.NewRequest(&hyperv1.GetVmRequest{Id: "v_bad"}))
		return err
	})
	wantCode(t, "GetVm(unknown)", connect.CodeNotFound, func() error {
		_, err := c.GetVm(ctx, connect.NewRequest(&hyperv1.GetVmRequest{Id: ids.NewVM()}))
		return err
	})
	wantCode(t, "ListVms(bad token)", connect.CodeInvalidArgument, func() error {
		_, err := c.ListVms(ctx, connect.NewRequest(&hyperv1.ListVmsRequest{PageToken: "!!"}))
		return err
	})
	wantCode(t, "ListVms(bad state)", connect.CodeInvalidArgument, func() error {
		_, err := c.ListVms(ctx, connect.NewRequest(&hyperv1.ListVmsRequest{State: 99}))
		return err
	})

	img, err := c.GetImage(ctx, connect.NewRequest(&hyperv1.GetImageRequest{Id: "sha256:" + im.ID}))
	if err != nil || len(img.Msg.GetConfig().GetCmd()) != 1 {
		t.Fatalf("GetImage = %v, %v", img, err)
	}
	wantCode(t, "GetImage(bad id)", connect.CodeInvalidArgument, func() error {
		_, err := c.GetImage(ctx, connect.NewRequest(&hyperv1.GetImageRequest{Id: "abc"}))
		return err
	})
}

func TestUnimplementedNamesTheCapability(t *testing.T) {
	c, _ := newTestServer(t, time.Now())
	_, err := c.ForkVm(context.Background(), connect.NewRequest(&hyperv1.ForkVmRequest{Id: ids.NewVM(), Count: 1}))
	if connect.CodeOf(err) != connect.CodeUnimplemented || !strings.Contains(err.Error(), "ForkVm") {
		t.Fatalf("ForkVm = %v", err)
	}
}

func TestAPIErrorMapping(t *testing.T) {
	cases := []struct {
		err  error
		code connect.Code
	}{
		{store.ErrNotFound, connect.CodeNotFound},
		{&store.InUseError{Kind: "image", ID: "x", Users: []string{"vm a"}}, connect.CodeFailedPrecondition},
		{store.ErrExhausted, connect.CodeResourceExhausted},
		{context.DeadlineExceeded, connect.CodeDeadlineExceeded},
		{errors.New("boom"), connect.CodeInternal},
		{connect.NewError(connect.CodeUnavailable, errors.New("x")), connect.CodeUnavailable},
	}
	for _, tc := range cases {
		if got := connect.CodeOf(apiError(tc.err)); got != tc.code {
			t.Errorf("apiError(%v) code = %v; want %v", tc.err, got, tc.code)
		}
	}
}

func wantCode(t *testing.T, what string, code connect.Code, call func() error) {
	t.Helper()
	err := call()
	if connect.CodeOf(err) != code {
		t.Fatalf("%s: err = %v; want code %v", what, err, code)
	}
	if code == connect.CodeInvalidArgument && !strings.Contains(err.Error(), ":") {
		t.Fatalf("%s: message does not name the field: %v", what, err)
	}
}
