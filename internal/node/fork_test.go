package node

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypervm/hyper/internal/agent/agenttest"
	"github.com/hypervm/hyper/internal/agent/guestd"
	"github.com/hypervm/hyper/internal/disk"
	"github.com/hypervm/hyper/internal/guestcfg"
	"github.com/hypervm/hyper/internal/ids"
	"github.com/hypervm/hyper/internal/store"
	"github.com/hypervm/hyper/internal/units"
	"github.com/hypervm/hyper/internal/vmm"
)

// spyCloner clones with the real disk.Cloner and, while it clones, runs
// during (which looks at the parent) or fails when told to.
type spyCloner struct {
	real   *disk.Cloner
	mu     sync.Mutex
	calls  int
	fail   error
	during func()
}

func (c *spyCloner) Clone(ctx context.Context, src, dst string) (disk.Method, error) {
	return c.spy(ctx, src, dst, c.real.Clone)
}

func (c *spyCloner) CloneScratch(ctx context.Context, src, dst string) (disk.Method, error) {
	return c.spy(ctx, src, dst, c.real.CloneScratch)
}

func (c *spyCloner) spy(ctx context.Context, src, dst string, clone func(ctx context.Context, src, dst string) (disk.Method, error)) (disk.Method, error) {
	c.mu.Lock()
	c.calls++
	fail, during := c.fail, c.during
	c.mu.Unlock()
	if during != nil {
		during()
	}
	if fail != nil {
		return 0, fail
	}
	return clone(ctx, src, dst)
}

func (c *spyCloner) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

// forkManager is the harness's manager with a spying cloner over the real
// one (a sparse copy or a reflink, whatever the temp directory offers).
func (h *harness) forkManager(capacity Capacity) (*Manager, *spyCloner) {
	h.t.Helper()
	must(h.t, os.MkdirAll(h.cfg.VMsDir(), 0o750))
	caps, err := disk.Probe(h.cfg.VMsDir())
	must(h.t, err)
	real, err := disk.NewCloner(disk.ModeAuto, caps)
	must(h.t, err)
	spy := &spyCloner{real: real}
	m := h.manager(capacity)
	m.o.Cloner = spy
	return m, spy
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// freezableGuest makes the harness's guests freeze a real ext4 filesystem,
// loop-mounted for the test, instead of the guest path the host lacks (on
// which Freeze fails and the manager pauses the VMM). It needs root.
func (h *harness) freezableGuest() string {
	t := h.t
	mnt := agenttest.MountExt4(t)
	ctx, cancel := context.WithCancel(context.Background())
	var conns sync.WaitGroup
	reaper := guestd.NewReaper(false)
	srv := guestd.New(guestd.Config{VMID: "test", Reaper: reaper, FreezePath: mnt, Image: guestcfg.Image{Env: []string{"PATH=/usr/bin:/bin"}}})
	h.driver.Agent = func(context.Context, string) (net.Conn, error) {
		host, guestEnd := net.Pipe()
		conns.Go(func() { _ = srv.ServeConn(ctx, guestEnd) })
		return host, nil
	}
	t.Cleanup(func() {
		cancel()
		conns.Wait()
		srv.Close()
		reaper.Close()
	})
	return mnt
}

// writeDisk writes data into a VM's writable disk at off, as its guest
// would.
func writeDisk(t *testing.T, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	must(t, err)
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

func readDisk(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// frozen reports whether the guest agent of vm says its disk is frozen.
func frozen(t *testing.T, m *Manager, vm string) bool {
	t.Helper()
	c, err := m.Agent(context.Background(), vm)
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := c.Health(ctx)
	must(t, err)
	return res.GetFrozen()
}

// vmmState is what the driver says of vm.
func (h *harness) vmmState(vm string) vmm.State {
	v, err := h.driver.Attach(context.Background(), vm, h.cfg.VMDir(vm))
	if err != nil {
		return vmm.Exited
	}
	st, _ := v.Status(context.Background())
	return st
}

func diskOf(h *harness, vm string) string { return filepath.Join(h.cfg.VMDir(vm), diskFile) }

// TestForkOne forks a parent into one child whose disk is a clone of the
// parent's, taken while the parent is quiesced: frozen by its agent when
// the agent can freeze, its VMM paused when it cannot.
func TestForkOne(t *testing.T) {
	for _, how := range []string{"freeze", "pause"} {
		t.Run(how, func(t *testing.T) {
			h := newHarness(t)
			if how == "freeze" {
				h.freezableGuest()
			}
			m, spy := h.forkManager(roomy)
			ctx := context.Background()
			parent := h.runWithVM(m)
			data := []byte("written by the parent before the fork")
			writeDisk(t, diskOf(h, parent.ID), 1<<20, data)

			var sawFrozen bool
			var sawState vmm.State
			spy.during = func() {
				if how == "freeze" {
					sawFrozen = frozen(t, m, parent.ID)
				}
				sawState = h.vmmState(parent.ID)
			}
			start := time.Now()
			kids, err := m.Fork(ctx, parent.ID, 1, map[string]string{"role": "child"})
			must(t, err)
			t.Logf("fork of one child (quiesce, clone, resume and the in-memory boot): %s", time.Since(start))
			if len(kids) != 1 || spy.count() != 1 {
				t.Fatalf("children %v, %d clones", kids, spy.count())
			}
			kid := kids[0]
			if kid.State != StateRunning || kid.Labels[ParentLabel] != parent.ID || kid.Labels["role"] != "child" ||
				kid.ImageID != parent.ImageID || kid.InstanceType != parent.InstanceType || kid.LayerID != "" {
				t.Fatalf("child %+v", kid)
			}
			switch how {
			case "freeze":
				if !sawFrozen || sawState != vmm.Running {
					t.Fatalf("during the clone: frozen %v, vmm %s; want frozen, running", sawFrozen, sawState)
				}
				if frozen(t, m, parent.ID) {
					t.Fatal("the parent is still frozen after the fork")
				}
			case "pause":
				if sawState != vmm.Paused {
					t.Fatalf("during the clone the vmm was %s; want paused", sawState)
				}
			}
			if s := h.vmmState(parent.ID); s != vmm.Running {
				t.Fatalf("parent vmm %s after the fork", s)
			}
			if got := readDisk(t, diskOf(h, kid.ID), 1<<20, len(data)); !bytes.Equal(got, data) {
				t.Fatalf("child's disk has %q; want the parent's %q", got, data)
			}
			// Later writes are each their own.
			writeDisk(t, diskOf(h, parent.ID), 1<<20, []byte("P"))
			writeDisk(t, diskOf(h, kid.ID), 2<<20, []byte("C"))
			if got := readDisk(t, diskOf(h, kid.ID), 1<<20, 1); got[0] != data[0] {
				t.Fatal("the child sees the parent's later write")
			}
			if got := readDisk(t, diskOf(h, parent.ID), 2<<20, 1); got[0] != 0 {
				t.Fatal("the parent sees the child's write")
			}
			c, err := m.Agent(ctx, kid.ID)
			must(t, err)
			if _, err := c.Health(ctx); err != nil {
				t.Fatalf("child's agent: %v", err)
			}
			for _, id := range []string{kid.ID, parent.ID} {
				if _, err := m.Stop(ctx, id, 0); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestForkAllOrNothing forks into three under a budget that has room for
// three children but not four.
func TestForkAllOrNothing(t *testing.T) {
	h := newHarness(t)
	h.freezableGuest()
	m, spy := h.forkManager(Capacity{Memory: 4 * 192 * units.MiB, Disk: 64 * units.GiB})
	ctx := context.Background()
	parent := h.runWithVM(m)
	data := []byte("state every child starts from")
	writeDisk(t, diskOf(h, parent.ID), 3<<20, data)

	if _, err := m.Fork(ctx, parent.ID, 4, nil); !errors.Is(err, ErrNoBudget) {
		t.Fatalf("fork into 4 over budget: %v; want ErrNoBudget", err)
	}
	vms, _, err := h.store.ListVMs(ctx, store.VMFilter{IncludeStopped: true})
	must(t, err)
	layers, err := h.store.ListLayers(ctx, store.LayerFilter{})
	must(t, err)
	if len(vms) != 1 || len(layers) != 0 || spy.count() != 0 || m.Usage().VMs != 1 {
		t.Fatalf("a refused fork made %d vms, %d layers, %d clones, budget %+v", len(vms), len(layers), spy.count(), m.Usage())
	}

	kids, err := m.Fork(ctx, parent.ID, 3, map[string]string{"batch": "1"})
	must(t, err)
	layers, err = h.store.ListLayers(ctx, store.LayerFilter{})
	must(t, err)
	if len(kids) != 3 || len(layers) != 1 || spy.count() != 4 {
		t.Fatalf("%d children, layers %v, %d clones; want 3, one layer, 4 clones", len(kids), layers, spy.count())
	}
	l := layers[0]
	if l.ImageID != parent.ImageID || l.ParentID != "" || l.Node != "n1" || l.Size <= 0 || !strings.Contains(l.Label, parent.ID) {
		t.Fatalf("layer %+v", l)
	}
	if fi, err := os.Stat(m.layerPath(l.ID)); err != nil || fi.Mode().Perm() != 0o400 {
		t.Fatalf("layer file: %v %v; want read-only", fi, err)
	}
	for _, k := range kids {
		if k.LayerID != l.ID || k.Labels[ParentLabel] != parent.ID || k.Labels["batch"] != "1" {
			t.Fatalf("child %+v", k)
		}
		if got := readDisk(t, diskOf(h, k.ID), 3<<20, len(data)); !bytes.Equal(got, data) {
			t.Fatalf("child %s's disk has %q", k.ID, got)
		}
	}
	if frozen(t, m, parent.ID) {
		t.Fatal("the parent is still frozen")
	}

	err = m.DeleteLayer(ctx, l.ID)
	var inUse *store.InUseError
	if !errors.As(err, &inUse) || len(inUse.Users) != 3 {
		t.Fatalf("delete a layer in use: %v; want refused naming the 3 children", err)
	}
	for _, k := range kids {
		_, err := m.Stop(ctx, k.ID, 0)
		must(t, err)
	}
	must(t, m.DeleteLayer(ctx, l.ID))
	if _, err := os.Stat(m.layerPath(l.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("layer file after delete: %v", err)
	}
	if err := m.DeleteLayer(ctx, l.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete a deleted layer: %v", err)
	}
}

// TestForkCloneFails injects a clone failure: the parent is thawed and
// keeps running, and nothing of the fork is left.
func TestForkCloneFails(t *testing.T) {
	for _, count := range []int{1, 2} {
		t.Run(strings.Repeat("child", count), func(t *testing.T) {
			h := newHarness(t)
			h.freezableGuest()
			m, spy := h.forkManager(roomy)
			ctx := context.Background()
			parent := h.runWithVM(m)
			var sawFrozen bool
			spy.fail = errors.New("disk full (injected)")
			spy.during = func() { sawFrozen = frozen(t, m, parent.ID) }
			if _, err := m.Fork(ctx, parent.ID, count, nil); err == nil || !strings.Contains(err.Error(), "injected") {
				t.Fatalf("fork with a failing clone: %v", err)
			}
			if !sawFrozen {
				t.Fatal("the parent was not frozen for the clone")
			}
			if frozen(t, m, parent.ID) {
				t.Fatal("the parent stays frozen after a failed clone")
			}
			if row, err := h.store.GetVM(ctx, parent.ID); err != nil || row.State != StateRunning || h.vmmState(parent.ID) != vmm.Running {
				t.Fatalf("parent after a failed fork: %+v %v, vmm %s", row, err, h.vmmState(parent.ID))
			}
			if u := m.Usage(); u.VMs != 1 {
				t.Fatalf("budget after a failed fork: %+v", u)
			}
			vms, _, err := h.store.ListVMs(ctx, store.VMFilter{IncludeStopped: true})
			must(t, err)
			for _, vm := range vms {
				if vm.ID == parent.ID {
					continue
				}
				if vm.State != StateFailed {
					t.Fatalf("child of a failed fork: %+v", vm)
				}
				if l := h.leftovers(vm.ID); len(l) > 0 {
					t.Fatalf("failed child left %v", l)
				}
			}
			if layers, _ := h.store.ListLayers(ctx, store.LayerFilter{}); len(layers) != 0 {
				t.Fatalf("layers after a failed fork: %v", layers)
			}
			if files := regularFiles(h.cfg.LayersDir()); len(files) != 0 {
				t.Fatalf("layer files after a failed fork: %v", files)
			}
			if running := h.driver.Running(); !slices.Equal(running, []string{parent.ID}) {
				t.Fatalf("running vmms: %v", running)
			}
			// The parent forks fine once the disk is back.
			spy.fail, spy.during = nil, nil
			kids, err := m.Fork(ctx, parent.ID, count, nil)
			must(t, err)
			for _, k := range kids {
				_, err := m.Stop(ctx, k.ID, 0)
				must(t, err)
			}
		})
	}
}

// failingStart fails the nth Start of its driver.
type failingStart struct {
	vmm.Driver
	mu sync.Mutex
	n  int
}

func (d *failingStart) Start(ctx context.Context, c vmm.Config) (vmm.VM, error) {
	d.mu.Lock()
	d.n--
	fail := d.n == 0
	d.mu.Unlock()
	if fail {
		return nil, errors.New("no memory for the vmm (injected)")
	}
	return d.Driver.Start(ctx, c)
}

// TestForkChildBootFails fails one child's boot of three: the others are
// stopped, the parent runs on, and the children's resources are freed.
func TestForkChildBootFails(t *testing.T) {
	h := newHarness(t)
	m, _ := h.forkManager(roomy)
	// The parent's start is the first; the second child's the third.
	m.o.Driver = &failingStart{Driver: h.driver, n: 3}
	ctx := context.Background()
	parent := h.runWithVM(m)
	if _, err := m.Fork(ctx, parent.ID, 3, nil); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("fork with a failing boot: %v", err)
	}
	if running := h.driver.Running(); !slices.Equal(running, []string{parent.ID}) {
		t.Fatalf("running vmms after a failed fork: %v", running)
	}
	if u := m.Usage(); u.VMs != 1 {
		t.Fatalf("budget after a failed fork: %+v", u)
	}
	vms, _, err := h.store.ListVMs(ctx, store.VMFilter{IncludeStopped: true})
	must(t, err)
	if len(vms) != 4 {
		t.Fatalf("%d vm rows; want the parent and 3 children", len(vms))
	}
	for _, vm := range vms {
		if vm.ID == parent.ID {
			continue
		}
		if vm.State != StateFailed && vm.State != StateStopped {
			t.Fatalf("child of a failed fork is %s", vm.State)
		}
		if l := h.leftovers(vm.ID); len(l) > 0 {
			t.Fatalf("child %s left %v", vm.ID, l)
		}
	}
}

// TestFreezeLease clones for longer than the guest's freeze lease: renewed,
// the parent stays frozen throughout; not renewed, it thaws by itself and
// the fork fails rather than keep a clone that may be torn.
func TestFreezeLease(t *testing.T) {
	defer func(lease, every time.Duration) { freezeLease, renewEvery = lease, every }(freezeLease, renewEvery)
	for _, tc := range []struct {
		name  string
		renew time.Duration
	}{{"renewed", 100 * time.Millisecond}, {"lapsed", time.Hour}} {
		t.Run(tc.name, func(t *testing.T) {
			freezeLease, renewEvery = 300*time.Millisecond, tc.renew
			renewed := tc.renew < freezeLease
			h := newHarness(t)
			h.freezableGuest()
			m, spy := h.forkManager(roomy)
			ctx := context.Background()
			parent := h.runWithVM(m)
			var frozenAfter bool
			spy.during = func() {
				time.Sleep(3 * freezeLease)
				frozenAfter = frozen(t, m, parent.ID)
			}
			kids, err := m.Fork(ctx, parent.ID, 1, nil)
			if frozenAfter != renewed {
				t.Fatalf("frozen after %s: %v", 3*freezeLease, frozenAfter)
			}
			if renewed {
				must(t, err)
				_, err = m.Stop(ctx, kids[0].ID, 0)
				must(t, err)
			} else if err == nil || !strings.Contains(err.Error(), "thawed by itself") {
				t.Fatalf("fork whose freeze lapsed: %v", err)
			}
			if frozen(t, m, parent.ID) || h.vmmState(parent.ID) != vmm.Running {
				t.Fatal("the parent is not running free after the fork")
			}
		})
	}
}

func TestForkRefusals(t *testing.T) {
	h := newHarness(t)
	m, spy := h.forkManager(roomy)
	ctx := context.Background()
	stopped := h.runWithVM(m)
	_, err := m.Stop(ctx, stopped.ID, 0)
	must(t, err)
	cases := []struct {
		name  string
		id    string
		count int
		want  error
	}{
		{"unknown", ids.NewVM(), 1, store.ErrNotFound},
		{"stopped", stopped.ID, 1, ErrNotRunning},
		{"count 0", stopped.ID, 0, ErrInvalid},
		{"count too large", stopped.ID, MaxForkCount + 1, ErrInvalid},
	}
	for _, tc := range cases {
		if _, err := m.Fork(ctx, tc.id, tc.count, nil); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v; want %v", tc.name, err, tc.want)
		}
	}
	if _, err := m.Snapshot(ctx, stopped.ID, ""); !errors.Is(err, ErrNotRunning) {
		t.Errorf("snapshot of a stopped vm: %v", err)
	}
	if spy.count() != 0 || m.Usage().VMs != 0 {
		t.Fatalf("refusals cloned %d disks, budget %+v", spy.count(), m.Usage())
	}
}

// TestCreateFromLayer snapshots a VM and boots two VMs on the layer, each
// with its own clone of it.
func TestCreateFromLayer(t *testing.T) {
	h := newHarness(t)
	m, _ := h.forkManager(roomy)
	ctx := context.Background()
	parent := h.runWithVM(m)
	data := []byte("golden state")
	writeDisk(t, diskOf(h, parent.ID), 5<<20, data)
	l, err := m.Snapshot(ctx, parent.ID, "golden")
	must(t, err)
	if l.Label != "golden" || l.ImageID != parent.ImageID || l.ParentID != "" {
		t.Fatalf("layer %+v", l)
	}
	if alloc, err := disk.Allocated(m.layerPath(l.ID)); err != nil || alloc != l.Size {
		t.Fatalf("layer size %d; the file has %d allocated (%v)", l.Size, alloc, err)
	}
	// The parent goes on writing; the layer does not change.
	writeDisk(t, diskOf(h, parent.ID), 5<<20, []byte("G"))

	req := h.req()
	req.ImageID, req.LayerID = "", l.ID
	var vms []store.VM
	for range 2 {
		vm, err := m.Create(ctx, req)
		must(t, err)
		if vm.LayerID != l.ID || vm.ImageID != parent.ImageID {
			t.Fatalf("vm on the layer: %+v", vm)
		}
		if got := readDisk(t, diskOf(h, vm.ID), 5<<20, len(data)); !bytes.Equal(got, data) {
			t.Fatalf("vm on the layer has %q", got)
		}
		vms = append(vms, vm)
	}
	writeDisk(t, diskOf(h, vms[0].ID), 5<<20, []byte("X"))
	if got := readDisk(t, diskOf(h, vms[1].ID), 5<<20, 1); got[0] != data[0] {
		t.Fatal("a vm sees its sibling's write")
	}

	// A VM on a snapshot of a VM on a layer: lineage image -> l -> l2.
	l2, err := m.Snapshot(ctx, vms[0].ID, "")
	must(t, err)
	if l2.ParentID != l.ID {
		t.Fatalf("second layer's parent %q; want %s", l2.ParentID, l.ID)
	}
	if err := m.DeleteLayer(ctx, l.ID); !errors.Is(err, store.ErrInUse) {
		t.Fatalf("delete a layer with a child layer and vms: %v", err)
	}
	must(t, m.DeleteLayer(ctx, l2.ID))

	// A layer's disk bigger than the instance type's is refused.
	big := h.req()
	big.ImageID, big.LayerID, big.InstanceType = "", l.ID, "micro"
	must(t, os.Chmod(m.layerPath(l.ID), 0o600))
	must(t, os.Truncate(m.layerPath(l.ID), int64(4*units.GiB)))
	if _, err := m.Create(ctx, big); !errors.Is(err, ErrInvalid) {
		t.Fatalf("create on a layer larger than the type's disk: %v", err)
	}
}

// TestSnapshotLatency measures what a fork costs its parent: quiesce,
// clone the writable disk, resume (a fork adds the children's boots), on a
// 2 GiB sparse disk with 0 and 64 MiB written in 1 MiB extents, with the
// real cloner and, as root, a real freeze. It logs the median and checks
// that every layer holds the parent's data.
func TestSnapshotLatency(t *testing.T) {
	for _, written := range []int64{0, 64 << 20} {
		t.Run(units.Size(written).String(), func(t *testing.T) {
			h := newHarness(t)
			how := "pause"
			if os.Geteuid() == 0 {
				h.freezableGuest()
				how = "freeze"
			}
			m, _ := h.forkManager(roomy)
			ctx := context.Background()
			parent := h.runWithVM(m)
			must(t, os.Truncate(diskOf(h, parent.ID), int64(2*units.GiB)))
			chunk := bytes.Repeat([]byte{0xa5}, 1<<20)
			for off := int64(0); off < written; off += 1 << 20 {
				writeDisk(t, diskOf(h, parent.ID), off*7, chunk)
			}
			var took []time.Duration
			for range 5 {
				start := time.Now()
				l, err := m.Snapshot(ctx, parent.ID, "")
				took = append(took, time.Since(start))
				must(t, err)
				if written > 0 && !bytes.Equal(readDisk(t, m.layerPath(l.ID), 7*(written-1<<20), 1<<20), chunk) {
					t.Fatal("the layer lacks the parent's last write")
				}
				must(t, m.DeleteLayer(ctx, l.ID))
			}
			slices.Sort(took)
			t.Logf("snapshot (%s, clone by %s) of a 2 GiB disk with %s written: median %s, min %s, max %s",
				how, spyMethod(t, h), units.Size(written), took[len(took)/2], took[0], took[len(took)-1])
		})
	}
}

func spyMethod(t *testing.T, h *harness) disk.Method {
	caps, err := disk.Probe(h.cfg.VMsDir())
	must(t, err)
	c, err := disk.NewCloner(disk.ModeAuto, caps)
	must(t, err)
	return c.Method()
}

// regularFiles lists the regular files anywhere under dir.
func regularFiles(dir string) []string {
	var files []string
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, path)
		}
		return nil
	})
	return files
}

// A daemon that died while making layers left their files in its partial
// directory: at start the node moves a recorded layer's file into place and
// removes the rest, and leaves other nodes' partial files alone.
func TestFinishLayersLeftByADeadDaemon(t *testing.T) {
	h := newHarness(t)
	m := h.manager(roomy)
	ctx := context.Background()
	recorded, unrecorded := ids.NewLayer(), ids.NewLayer()
	_, err := h.store.PutLayer(ctx, store.Layer{ID: recorded, ImageID: h.image.ID, Node: "n1", Label: "made before the crash"})
	must(t, err)
	mine := m.partialLayersDir()
	theirs := filepath.Join(h.cfg.LayersDir(), ".partial", "n2")
	for _, dir := range []string{mine, theirs} {
		must(t, os.MkdirAll(dir, 0o750))
	}
	write := func(path, body string) {
		t.Helper()
		must(t, os.WriteFile(path, []byte(body), 0o400))
	}
	write(filepath.Join(mine, recorded+layerExt), "recorded")
	write(filepath.Join(mine, unrecorded+layerExt), "unrecorded")
	write(filepath.Join(mine, "."+unrecorded+layerExt+".hyper-tmp-0123"), "clone in flight")
	write(filepath.Join(theirs, unrecorded+layerExt), "another node's")

	h.run(m)
	if b, err := os.ReadFile(m.layerPath(recorded)); err != nil || string(b) != "recorded" {
		t.Fatalf("the recorded layer's file: %q, %v", b, err)
	}
	if _, err := os.Stat(m.layerPath(unrecorded)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("an unrecorded layer was placed: %v", err)
	}
	if files := regularFiles(mine); len(files) != 0 {
		t.Fatalf("left in the partial directory: %v", files)
	}
	if files := regularFiles(theirs); len(files) != 1 {
		t.Fatalf("another node's partial files: %v; want them kept", files)
	}
}
