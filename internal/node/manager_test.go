package node

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/agent/guestd"
	"github.com/hypervm/hyper/internal/config"
	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/guestcfg"
	"github.com/hypervm/hyper/internal/ids"
	"github.com/hypervm/hyper/internal/instance"
	"github.com/hypervm/hyper/internal/store"
	"github.com/hypervm/hyper/internal/units"
	"github.com/hypervm/hyper/internal/vmm/vmmtest"
)

// fakeHelper records the privileged calls the manager makes, and the
// cgroup calls it makes itself in the delegated parent (it is also the
// manager's Cgroups). The real helper and cgroups are exercised in
// internal/helper, internal/cgroup and test/e2e; here what matters is that
// every cgroup the manager creates it also removes.
type fakeHelper struct {
	mu      sync.Mutex
	cgroups map[string]bool
	memory  map[string]uint64 // each cgroup's memory limit
	calls   []string
	failOn  string
}

func (h *fakeHelper) call(op, vm string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, op+" "+vm)
	if h.failOn == op {
		return errors.New(op + " failed (injected)")
	}
	return nil
}

func (h *fakeHelper) Create(vm string, _, memory uint64) error {
	if err := h.call("create-cgroup", vm); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cgroups[vm] = true
	h.memory[vm] = memory
	return nil
}

func (h *fakeHelper) Attach(vm string, _ int) error {
	return h.call("attach-cgroup", vm)
}

func (h *fakeHelper) RemoveCgroup(_ context.Context, vm string) (bool, error) {
	if err := h.call("remove-cgroup", vm); err != nil {
		return false, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	had := h.cgroups[vm]
	delete(h.cgroups, vm)
	return had, nil
}

func (h *fakeHelper) ListCgroups(context.Context) ([]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for id := range h.cgroups {
		out = append(out, id)
	}
	return out, nil
}

func (h *fakeHelper) RemoveJail(_ context.Context, vm string) error { return h.call("remove-jail", vm) }

// fakeDisks makes sparse files; the real maker is tested in internal/disk.
type fakeDisks struct{}

func (fakeDisks) Create(_ context.Context, path string, size units.Size) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(int64(size))
}

type harness struct {
	t      *testing.T
	cfg    *config.Config
	store  *store.Store
	driver *vmmtest.Driver
	helper *fakeHelper
	image  store.Image
	agents sync.WaitGroup
	cancel context.CancelFunc
}

// newHarness builds a manager's world: a real SQLite store with one image,
// the in-memory driver whose VMs serve a real guest agent (running real
// processes on this host) over a pipe.
func newHarness(t *testing.T) *harness {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.WorkDir = dir
	cfg.Disk.LayerDir = filepath.Join(dir, "layers")
	cfg.Jails.UIDGIDRange = []int64{500000, 500003}
	cfg.VMM.BootTimeout.Duration = 5 * time.Second
	st, err := store.Open(context.Background(), filepath.Join(dir, "hyper.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	im, _, err := st.PutImage(context.Background(), store.Image{ID: strings.Repeat("ab", 32), Ref: "busybox", Arch: Arch(),
		Config: []byte(`{"cmd":["/bin/sh"],"env":["PATH=/usr/bin:/bin"]}`)})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, cfg: cfg, store: st, helper: &fakeHelper{cgroups: map[string]bool{}, memory: map[string]uint64{}}, image: im}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	reaper := guestd.NewReaper(false)
	srv := guestd.New(guestd.Config{VMID: "test", Reaper: reaper, Image: guestcfg.Image{Env: []string{"PATH=/usr/bin:/bin"}}})
	h.driver = &vmmtest.Driver{Agent: func(_ context.Context, id string) (net.Conn, error) {
		host, guestEnd := net.Pipe()
		h.agents.Go(func() { _ = srv.ServeConn(ctx, guestEnd) })
		return host, nil
	}}
	t.Cleanup(func() {
		cancel()
		h.agents.Wait()
		srv.Close()
		reaper.Close()
	})
	return h
}

func (h *harness) manager(capacity Capacity) *Manager {
	return NewManager(Options{
		Config: h.cfg, Node: "n1", Store: h.store, Driver: h.driver, Helper: h.helper, Cgroups: h.helper,
		Disks: fakeDisks{}, Initramfs: "/boot/initramfs.cpio", Kernel: guest.Kernel{Vmlinuz: "/boot/vmlinuz"},
		Budget: NewBudget(capacity), RestartBackoff: time.Millisecond, CrashWindow: time.Minute, MaxCrashes: 2,
		ExpiryInterval: 20 * time.Millisecond,
	})
}

// runWithVM starts m and creates a VM of h's image, which it returns.
func (h *harness) runWithVM(m *Manager) store.VM {
	h.t.Helper()
	h.run(m)
	vm, err := m.Create(context.Background(), h.req())
	must(h.t, err)
	return vm
}

// run starts m and returns a stop function that waits for it.
func (h *harness) run(m *Manager) (stop func()) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		h.t.Fatalf("Run: %v", err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				h.t.Errorf("Run: %v", err)
			}
		})
	}
	h.t.Cleanup(stop)
	return stop
}

var roomy = Capacity{Memory: 8 * units.GiB, Disk: 64 * units.GiB, CPUs: 2}

func (h *harness) req() CreateRequest {
	return CreateRequest{ImageID: h.image.ID, InstanceType: "micro", Arch: Arch(), Labels: map[string]string{"t": "1"}}
}

// leftovers lists what a VM could leave behind: its directory, cgroup and
// uid claim.
func (h *harness) leftovers(id string) []string {
	var out []string
	if _, err := os.Stat(h.cfg.VMDir(id)); err == nil {
		out = append(out, "vm dir")
	}
	h.helper.mu.Lock()
	if h.helper.cgroups[id] {
		out = append(out, "cgroup")
	}
	h.helper.mu.Unlock()
	claims, _ := h.store.ListUIDClaims(context.Background(), "n1")
	for _, vm := range claims {
		if vm == id {
			out = append(out, "uid claim")
		}
	}
	return out
}

func TestCreateExecStop(t *testing.T) {
	h := newHarness(t)
	m := h.manager(roomy)
	h.run(m)
	ctx := context.Background()

	vm, err := m.Create(ctx, h.req())
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != StateRunning || vm.Node != "n1" || vm.UID != 500000 || vm.StartedAt == nil {
		t.Fatalf("created %+v", vm)
	}
	if u := m.Usage(); u.VMs != 1 || u.Memory != 192*units.MiB || u.Disk != 2*units.GiB {
		t.Fatalf("budget after create: %+v", u)
	}
	if _, err := os.Stat(filepath.Join(h.cfg.VMDir(vm.ID), diskFile)); err != nil {
		t.Fatalf("writable disk: %v", err)
	}
	if !slices.Contains(h.helper.calls, "attach-cgroup "+vm.ID) {
		t.Fatalf("the VMM was not moved into its cgroup: %v", h.helper.calls)
	}

	c, err := m.Agent(ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	st, err := c.Exec(ctx, agent.ExecOptions{Argv: []string{"sh", "-c", "echo hi; exit 3"}, Stdout: &out})
	if err != nil || st.Code != 3 || out.String() != "hi\n" {
		t.Fatalf("exec: %+v %q %v", st, out.String(), err)
	}

	stopped, err := m.Stop(ctx, vm.ID, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if stopped.State != StateStopped || stopped.StoppedAt == nil {
		t.Fatalf("stopped %+v", stopped)
	}
	if l := h.leftovers(vm.ID); len(l) > 0 {
		t.Fatalf("stop left %v", l)
	}
	if u := m.Usage(); u.VMs != 0 || u.Memory != 0 {
		t.Fatalf("budget after stop: %+v", u)
	}
	again, err := m.Stop(ctx, vm.ID, time.Second)
	if err != nil || again.State != StateStopped {
		t.Fatalf("second stop: %+v %v", again, err)
	}
	if _, err := m.Agent(ctx, vm.ID); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("agent of a stopped vm: %v", err)
	}
	if _, err := m.Agent(ctx, ids.NewVM()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("agent of an unknown vm: %v", err)
	}
}

// The driver's VMM overhead, not instance.VMMOverhead, sizes a VM's cgroup
// and its budget share: QEMU under TCG needs room for its translation
// cache.
func TestVMMOverhead(t *testing.T) {
	for _, tc := range []struct {
		overhead, want units.Size
	}{
		{0, 128*units.MiB + instance.VMMOverhead},
		{200 * units.MiB, 328 * units.MiB},
	} {
		h := newHarness(t)
		m := h.manager(Capacity{Memory: 4 * units.GiB, Disk: 64 * units.GiB})
		m.o.VMMOverhead = tc.overhead
		h.run(m)
		vm, err := m.Create(context.Background(), h.req())
		if err != nil {
			t.Fatal(err)
		}
		h.helper.mu.Lock()
		limit := h.helper.memory[vm.ID]
		h.helper.mu.Unlock()
		if limit != uint64(tc.want) {
			t.Errorf("overhead %s: cgroup memory %d; want %d", tc.overhead, limit, tc.want)
		}
		if u := m.Usage(); u.Memory != tc.want {
			t.Errorf("overhead %s: budget holds %s; want %s", tc.overhead, u.Memory, tc.want)
		}
	}
}

func TestCreateRefusals(t *testing.T) {
	h := newHarness(t)
	m := h.manager(Capacity{Memory: 256 * units.MiB, Disk: 64 * units.GiB})
	h.run(m)
	ctx := context.Background()
	cases := []struct {
		name string
		edit func(*CreateRequest)
		want error
	}{
		{"unknown image", func(r *CreateRequest) { r.ImageID = strings.Repeat("cd", 32) }, store.ErrNotFound},
		{"unknown layer", func(r *CreateRequest) { r.ImageID, r.LayerID = "", ids.NewLayer() }, store.ErrNotFound},
		{"wrong arch", func(r *CreateRequest) { r.Arch = "aarch64" }, ErrArchMismatch},
		{"unknown type", func(r *CreateRequest) { r.InstanceType = "huge" }, ErrInvalid},
		{"over budget", func(r *CreateRequest) { r.InstanceType = "milli" }, ErrNoBudget},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.req()
			tc.edit(&r)
			if _, err := m.Create(ctx, r); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v; want %v", err, tc.want)
			}
			if u := m.Usage(); u.VMs != 0 {
				t.Fatalf("budget held after a refusal: %+v", u)
			}
			if entries, _ := os.ReadDir(h.cfg.VMsDir()); len(entries) != 0 {
				t.Fatalf("vm dirs left: %v", entries)
			}
		})
	}
}

func TestFailedBootUndoesEverything(t *testing.T) {
	for _, step := range []string{"create-cgroup", "attach-cgroup", "start"} {
		t.Run(step, func(t *testing.T) {
			h := newHarness(t)
			m := h.manager(roomy)
			h.run(m)
			if step == "start" {
				h.driver.StartErr = errors.New("no kvm (injected)")
			} else {
				h.helper.failOn = step
			}
			_, err := m.Create(context.Background(), h.req())
			if err == nil || !strings.Contains(err.Error(), "injected") {
				t.Fatalf("err = %v", err)
			}
			vms, _, _ := h.store.ListVMs(context.Background(), store.VMFilter{IncludeStopped: true})
			if len(vms) != 1 || vms[0].State != StateFailed || !strings.Contains(vms[0].LastError, "injected") {
				t.Fatalf("rows: %+v", vms)
			}
			if l := h.leftovers(vms[0].ID); len(l) > 0 {
				t.Fatalf("failed create left %v", l)
			}
			if len(h.driver.Running()) != 0 {
				t.Fatalf("vmm left running: %v", h.driver.Running())
			}
			if u := m.Usage(); u.VMs != 0 {
				t.Fatalf("budget held: %+v", u)
			}
		})
	}
}

func waitState(t *testing.T, st *store.Store, id string, want ...string) store.VM {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		vm, err := st.GetVM(context.Background(), id)
		if err == nil && slices.Contains(want, vm.State) {
			return vm
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm %s is %s (%v); want %v", id, vm.State, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCrashRestartsThenFails(t *testing.T) {
	h := newHarness(t)
	m := h.manager(roomy)
	h.run(m)
	vm, err := m.Create(context.Background(), h.req())
	if err != nil {
		t.Fatal(err)
	}
	h.driver.Crash(vm.ID)
	got := waitState(t, h.store, vm.ID, StateRunning)
	for got.Restarts < 1 {
		got = waitState(t, h.store, vm.ID, StateRunning)
	}
	if _, err := m.Agent(context.Background(), vm.ID); err != nil {
		t.Fatalf("agent after restart: %v", err)
	}
	// MaxCrashes is 2: the third crash within the window fails the VM.
	for range 3 {
		waitState(t, h.store, vm.ID, StateRunning, StateFailed)
		h.driver.Crash(vm.ID)
		time.Sleep(20 * time.Millisecond)
	}
	failed := waitState(t, h.store, vm.ID, StateFailed)
	if !strings.Contains(failed.LastError, "crashed 3 times") || !strings.Contains(failed.LastError, "vmm exited") {
		t.Fatalf("last error: %q", failed.LastError)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(h.leftovers(vm.ID)) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if l := h.leftovers(vm.ID); len(l) > 0 {
		t.Fatalf("failed vm left %v", l)
	}
}

func TestReadoptAndReclaim(t *testing.T) {
	h := newHarness(t)
	m1 := h.manager(roomy)
	stop1 := h.run(m1)
	ctx := context.Background()
	survivor, err := m1.Create(ctx, h.req())
	if err != nil {
		t.Fatal(err)
	}
	gone, err := m1.Create(ctx, h.req())
	if err != nil {
		t.Fatal(err)
	}
	stop1() // the daemon stops; its VMs keep running
	if len(h.driver.Running()) != 2 {
		t.Fatalf("VMs did not outlive the manager: %v", h.driver.Running())
	}
	h.driver.Crash(gone.ID) // its VMM dies while no daemon watches

	// Leftovers of a VM no row owns: a directory, a cgroup, a uid claim.
	orphan := ids.NewVM()
	if err := os.MkdirAll(h.cfg.VMDir(orphan), 0o750); err != nil {
		t.Fatal(err)
	}
	h.helper.cgroups[orphan] = true
	// Someone else's cgroup under the parent is never touched.
	h.helper.cgroups["system.slice"] = true

	m2 := h.manager(roomy)
	h.run(m2)
	if vm := waitState(t, h.store, survivor.ID, StateRunning); vm.UID != survivor.UID {
		t.Fatalf("re-adopted %+v", vm)
	}
	c, err := m2.Agent(ctx, survivor.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Health(ctx); err != nil {
		t.Fatalf("re-adopted vm's agent: %v", err)
	}
	lost := waitState(t, h.store, gone.ID, StateLost)
	if l := h.leftovers(lost.ID); len(l) > 0 {
		t.Fatalf("lost vm left %v", l)
	}
	if l := h.leftovers(orphan); len(l) > 0 {
		t.Fatalf("orphan not reclaimed: %v", l)
	}
	if !h.helper.cgroups["system.slice"] {
		t.Fatal("reclaim removed a cgroup that is not a VM's")
	}
	if u := m2.Usage(); u.VMs != 1 {
		t.Fatalf("budget after re-adoption: %+v", u)
	}
	// A re-adopted VM that crashes is restarted as it was created.
	h.driver.Crash(survivor.ID)
	for deadline := time.Now().Add(10 * time.Second); ; {
		vm := waitState(t, h.store, survivor.ID, StateRunning, StateFailed)
		if vm.State == StateFailed {
			t.Fatalf("re-adopted vm failed on restart: %s", vm.LastError)
		}
		if vm.Restarts >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("re-adopted vm was not restarted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := m2.Stop(ctx, survivor.ID, time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentCreatesShareTheBudget(t *testing.T) {
	h := newHarness(t)
	// Room for exactly two micro VMs; four uids.
	m := h.manager(Capacity{Memory: 384 * units.MiB, Disk: 64 * units.GiB})
	h.run(m)
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for range 6 {
		wg.Go(func() {
			_, err := m.Create(context.Background(), h.req())
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrNoBudget):
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 2 {
		t.Fatalf("%d creates succeeded; want 2", ok)
	}
}

func TestTTLStopsTheVM(t *testing.T) {
	h := newHarness(t)
	m := h.manager(roomy)
	h.run(m)
	r := h.req()
	r.TTL = 100 * time.Millisecond
	vm, err := m.Create(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	if vm.ExpiresAt == nil {
		t.Fatal("no expiry recorded")
	}
	keep, err := m.Create(context.Background(), h.req())
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, h.store, vm.ID, StateStopped)
	if l := h.leftovers(vm.ID); len(l) > 0 {
		t.Fatalf("expired vm left %v", l)
	}
	if got := waitState(t, h.store, keep.ID, StateRunning); got.State != StateRunning {
		t.Fatalf("vm without a ttl is %s", got.State)
	}
}
