package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/agent/guestd"
	"github.com/hypervm/hyper/internal/cgroup"
	"github.com/hypervm/hyper/internal/config"
	"github.com/hypervm/hyper/internal/disk"
	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/guest/guesttest"
	"github.com/hypervm/hyper/internal/helper"
	"github.com/hypervm/hyper/internal/store"
	"github.com/hypervm/hyper/internal/store/storetest"
	"github.com/hypervm/hyper/internal/units"
	"github.com/hypervm/hyper/internal/vmm"
	"github.com/hypervm/hyper/internal/vmm/vmmtest"
)

// BenchmarkCreateVM measures what hyperd itself adds to creating a VM: the
// real Manager with a real store, real cgroups made by the manager in the
// parent cgroup the real setuid helper delegated to it (the helper still
// removes them at stop), the real setuid helper for the other privileged
// calls, real writable disks (clones of an mke2fs template) and the real
// config disk writer, and a VMM that is ready at once (vmmtest) whose guest
// agent, a real guestd, answers from another process over a unix socket,
// as QEMU's agent socket would. Each sub-benchmark creates its batch (200
// one after the other, or 50 at once), reports latency percentiles,
// throughput and, for the sequential batch, hyperd's memory per running
// VM, then stops them all and checks that nothing is left behind.
//
// One iteration is one batch: run it with -benchtime=1x (`make
// bench-create`). The helper needs root to be installed setuid; without
// root an in-memory helper stands in and the sub-benchmark says so.
// Everything on disk lives under $TMPDIR: its filesystem decides whether
// disks are reflinked (XFS) or copied (ext4).
func BenchmarkCreateVM(b *testing.B) {
	env := newBenchEnv(b)
	type engine struct {
		name string
		open func(testing.TB, ...store.Option) *store.Store
	}
	engines := []engine{{"sqlite", storetest.SQLite}}
	if os.Getenv(storetest.PostgresEnv) != "" {
		engines = append(engines, engine{"postgres", storetest.Postgres})
	}
	for _, e := range engines {
		for _, h := range env.helpers {
			for _, batch := range []struct {
				name       string
				n          int
				concurrent bool
			}{{"sequential", benchSequential, false}, {"concurrent", benchConcurrent, true}} {
				name := fmt.Sprintf("store=%s/helper=%s/%s-%d", e.name, h.name, batch.name, batch.n)
				b.Run(name, func(b *testing.B) {
					r := env.newRun(b, e.open(b), h)
					for range b.N {
						r.batch(b, batch.n, batch.concurrent)
					}
					r.report(b, batch.concurrent)
				})
			}
		}
	}
}

const (
	benchSequential = 200
	benchConcurrent = 50
	// benchGuestEnv, when set in the environment of this test binary,
	// makes it the benchmark's guest: see serveBenchGuest.
	benchGuestEnv = "HYPER_NODE_BENCH_GUEST"
	benchType     = "micro"
)

func init() {
	if sock := os.Getenv(benchGuestEnv); sock != "" {
		os.Exit(serveBenchGuest(sock))
	}
}

// serveBenchGuest serves the guest agent of every benchmark VM on the unix
// socket sock until its stdin closes. It runs in a child process so that
// the guest's memory and goroutines are not counted as hyperd's.
func serveBenchGuest(sock string) int {
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench guest:", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	reaper := guestd.NewReaper(false)
	defer reaper.Close()
	srv := guestd.New(guestd.Config{VMID: "bench", Reaper: reaper})
	defer srv.Close()
	if err := srv.ServeListener(ctx, l); err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "bench guest:", err)
		return 1
	}
	return 0
}

// benchEnv is what every sub-benchmark shares: the work directory (the
// helper's work_dir), the installed helper, the guest process, the shared
// initramfs and the disk maker.
type benchEnv struct {
	dir     string // root of everything the benchmark makes on disk
	cfg     *config.Config
	cgroup  string   // jails.cgroup: hyper-bench-<pid>
	hier    []string // cgroup hierarchies the helper uses
	helpers []benchHelper
	// cgroups are the node's delegated cgroups, shared by every run.
	cgroups Cgroups
	guest   string // the guest agent's socket
	initrd  *guest.Initramfs
	disks   *disk.Maker
	// agentRTT is agent.Dial plus one Health outside the manager: the part
	// of a create's "rest" spent reaching the guest.
	agentRTT time.Duration
}

// benchHelper is one way of running the privileged calls.
type benchHelper struct {
	name string
	priv Privileged
	// cred runs the stand-in VMM processes as the helper's caller: the
	// helper only attaches a process of its caller to a cgroup.
	cred *syscall.Credential
	// floor is the median of the cheapest privileged op (cgroup list): the
	// cost of one helper run before its op does anything.
	floor time.Duration
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	dir, err := os.MkdirTemp("", "hyper-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	// The helper's config must sit below root-owned directories that no one
	// else can write.
	if err := os.Chmod(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	e := &benchEnv{dir: dir, cgroup: "hyper-bench-" + strconv.Itoa(os.Getpid())}
	cfg := config.Default()
	cfg.WorkDir = filepath.Join(dir, "work")
	cfg.Disk.LayerDir = filepath.Join(cfg.WorkDir, "layers")
	cfg.Jails.UIDGIDRange = []int64{2_100_000_000, 2_100_000_999}
	cfg.Jails.Cgroup = e.cgroup
	cfg.VMM.BootTimeout.Duration = 10 * time.Second
	e.cfg = cfg
	for _, d := range []string{cfg.VMsDir(), cfg.ImagesDir(), cfg.DiskTemplatesDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	e.installHelpers(b)
	e.startGuest(b)
	e.buildInitramfs(b)
	e.makeDisks(b)
	return e
}

// installHelpers builds the setuid helper with a config naming this
// benchmark's work_dir and cgroup, installs it root:root 4755 in a
// root-owned directory, and offers it run by root (hyperd's own process
// here) and by an unprivileged caller (nobody), as hyperd runs it.
func (e *benchEnv) installHelpers(b *testing.B) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Log("not root: the setuid helper cannot be installed; an in-memory helper stands in (no cgroups)")
		e.helpers = []benchHelper{{name: "in-memory", priv: nopHelper{}}}
		e.cgroups = nopCgroups{}
		return
	}
	var err error
	if e.hier, err = benchHierarchies(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.removeCgroups)
	conf := filepath.Join(e.dir, "etc", "config.toml")
	bin := filepath.Join(e.dir, "bin", "hyper-suidhelper")
	for _, d := range []string{filepath.Dir(conf), filepath.Dir(bin)} {
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	text := fmt.Sprintf("work_dir = %q\n[jails]\nuid_gid_range = [%d, %d]\ncgroup = %q\n",
		e.cfg.WorkDir, e.cfg.Jails.UIDGIDRange[0], e.cfg.Jails.UIDGIDRange[1], e.cgroup)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		b.Fatal(err)
	}
	goBuild(b, bin, "github.com/hypervm/hyper/cmd/hyper-suidhelper", "-X main.configPath="+conf+" -X main.version=bench")
	// chown clears the setuid bit, so the mode comes last; os.Chmod
	// takes the bit as os.ModeSetuid, not 0o4000.
	if err := os.Chown(bin, 0, 0); err != nil {
		b.Fatal(err)
	}
	if err := os.Chmod(bin, os.ModeSetuid|0o755); err != nil {
		b.Fatal(err)
	}
	root := &helper.Client{Path: bin}
	st, err := root.SysTest(context.Background())
	if err != nil {
		b.Fatalf("installed helper: %v", err)
	}
	if st.WorkDir != e.cfg.WorkDir || st.CgroupParent != e.cgroup {
		b.Fatalf("installed helper reads %+v", st)
	}
	e.helpers = []benchHelper{{name: "setuid-as-root", priv: root}}
	if u, err := user.Lookup("nobody"); err == nil {
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		e.helpers = append(e.helpers, benchHelper{name: "setuid-as-nobody", priv: &helper.Client{Path: bin, Credential: cred}, cred: cred})
	} else {
		b.Logf("no user nobody (%v): the helper runs as root only", err)
	}
	for i := range e.helpers {
		e.helpers[i].floor = helperFloor(b, e.helpers[i].priv)
	}
	e.delegate(b, root)
}

// delegate has the helper hand the benchmark's parent cgroup over, as
// hyperd does at start, and keeps the tree every run's manager uses. The
// helper moves its caller into the parent under cgroup v2, so the caller
// is this process (root), moved back at cleanup; under v1 the parent goes
// to nobody, as it would to hyperd's user. The manager's cgroup writes run
// in this process, as root, either way: the benchmark times them, and
// internal/helper tests them as an unprivileged user.
func (e *benchEnv) delegate(b *testing.B, root *helper.Client) {
	b.Helper()
	c := root
	if len(e.hier) > 1 && len(e.helpers) > 1 {
		c = e.helpers[1].priv.(*helper.Client)
	}
	if len(e.hier) == 1 {
		self, err := os.ReadFile("/proc/self/cgroup")
		if err != nil {
			b.Fatal(err)
		}
		home := filepath.Join(e.hier[0], strings.TrimSpace(strings.TrimPrefix(string(self), "0::")))
		b.Cleanup(func() {
			if err := os.WriteFile(filepath.Join(home, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
				b.Errorf("move the benchmark back to %s: %v", home, err)
			}
		})
	}
	d, err := c.Delegate(context.Background())
	if err != nil {
		b.Fatalf("helper cgroup delegate: %v", err)
	}
	tree, err := cgroup.Delegated(d)
	if err != nil {
		b.Fatal(err)
	}
	e.cgroups = tree
}

// helperFloor returns the median time of the helper's cheapest
// privileged op.
func helperFloor(b *testing.B, priv Privileged) time.Duration {
	b.Helper()
	const runs = 30
	var d []time.Duration
	for range runs {
		start := time.Now()
		if _, err := priv.ListCgroups(context.Background()); err != nil {
			b.Fatalf("helper cgroup list: %v", err)
		}
		d = append(d, time.Since(start))
	}
	slices.Sort(d)
	return percentile(d, 50)
}

// removeCgroups removes this benchmark's cgroups, by name, in every
// hierarchy: the VM cgroups left by a failed run, then the parent.
func (e *benchEnv) removeCgroups() {
	for _, h := range e.hier {
		parent := filepath.Join(h, e.cgroup)
		entries, _ := os.ReadDir(parent)
		for _, ent := range entries {
			if ent.IsDir() {
				os.Remove(filepath.Join(parent, ent.Name()))
			}
		}
		os.Remove(parent)
	}
}

// vmCgroups lists the VM cgroups under this benchmark's parent.
func (e *benchEnv) vmCgroups() []string {
	var out []string
	for _, h := range e.hier {
		entries, _ := os.ReadDir(filepath.Join(h, e.cgroup))
		for _, ent := range entries {
			if ent.IsDir() {
				out = append(out, filepath.Join(h, e.cgroup, ent.Name()))
			}
		}
	}
	return out
}

// benchHierarchies are the cgroup directories the helper uses here.
func benchHierarchies() ([]string, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &fs); err != nil {
		return nil, err
	}
	if fs.Type == unix.CGROUP2_SUPER_MAGIC {
		return []string{"/sys/fs/cgroup"}, nil
	}
	var h []string
	for _, c := range []string{"cpu", "memory", "freezer", "pids"} {
		h = append(h, filepath.Join("/sys/fs/cgroup", c))
	}
	return h, nil
}

func goBuild(b *testing.B, out, pkg, ldflags string) {
	b.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ldflags, "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build %s: %v\n%s", pkg, err, o)
	}
}

// startGuest starts this test binary again as the guest agent and waits
// until it answers.
func (e *benchEnv) startGuest(b *testing.B) {
	b.Helper()
	e.guest = filepath.Join(e.dir, "guest.sock")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), benchGuestEnv+"="+e.guest)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	b.Cleanup(func() {
		stdin.Close()
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("bench guest: %v", err)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			b.Error("bench guest did not exit when its stdin closed; killed")
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const probes = 50
	var rtts []time.Duration
	for range probes {
		start := time.Now()
		c, err := agent.Dial(ctx, agent.DialUnix(e.guest))
		if err != nil {
			b.Fatalf("bench guest: %v", err)
		}
		if _, err := c.Health(ctx); err != nil {
			b.Fatalf("bench guest: %v", err)
		}
		rtts = append(rtts, time.Since(start))
		c.Close()
	}
	// The first dials wait for the child to listen.
	slices.Sort(rtts)
	e.agentRTT = percentile(rtts, 50)
}

// buildInitramfs builds the real shared initramfs (the pinned guest
// kernel's modules and hyper-agent) that every VM boots.
func (e *benchEnv) buildInitramfs(b *testing.B) {
	b.Helper()
	k := guesttest.Kernel(b)
	agentBin := filepath.Join(os.Getenv("HYPER_TEST_BIN"), "hyper-agent")
	if _, err := os.Stat(agentBin); os.Getenv("HYPER_TEST_BIN") == "" || err != nil {
		agentBin = filepath.Join(e.dir, "bin", "hyper-agent")
		goBuild(b, agentBin, "github.com/hypervm/hyper/cmd/hyper-agent", "-s -w")
	}
	var err error
	e.initrd, err = guest.BuildInitramfs(filepath.Join(e.dir, "initramfs"), k, agentBin, guest.InitramfsOptions{})
	if err != nil {
		b.Fatal(err)
	}
}

// makeDisks sets up the disk maker as hyperd does.
func (e *benchEnv) makeDisks(b *testing.B) {
	b.Helper()
	caps, err := disk.Probe(e.cfg.VMsDir())
	if err != nil {
		b.Fatal(err)
	}
	cloner, err := disk.NewCloner(e.cfg.Disk.Clone, caps)
	if err != nil {
		b.Fatal(err)
	}
	e.disks, err = disk.NewMaker(context.Background(), e.cfg.Tools.Mke2fs, e.cfg.DiskTemplatesDir(), cloner)
	if err != nil {
		b.Skipf("writable disks: %v", err)
	}
	b.Logf("writable disks: %s clones on %s; shared initramfs %s", cloner.Method(), caps.FSType, fileSize(e.initrd.Path))
}

func fileSize(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "?"
	}
	return units.Size(fi.Size()).String()
}

// benchRun is one sub-benchmark: a manager on its own store, and the
// samples of all its batches.
type benchRun struct {
	env    *benchEnv
	m      *Manager
	st     *store.Store
	driver *benchDriver
	steps  *stepTimes
	image  store.Image

	creates, stops []time.Duration
	createWall     time.Duration
	stopWall       time.Duration
	createSteps    map[string]stepTime
	stopSteps      map[string]stepTime
	createCPU      cpuTime
	mem            []memDelta
	helper         benchHelper
}

func (e *benchEnv) newRun(b *testing.B, st *store.Store, h benchHelper) *benchRun {
	b.Helper()
	ctx := context.Background()
	im, _, err := st.PutImage(ctx, store.Image{ID: strings.Repeat("be", 32), Ref: "busybox", Arch: Arch(),
		Config: []byte(`{"cmd":["/bin/sh"],"env":["PATH=/usr/bin:/bin"]}`)})
	if err != nil {
		b.Fatal(err)
	}
	steps := newStepTimes()
	r := &benchRun{env: e, st: st, steps: steps, image: im, helper: h,
		createSteps: map[string]stepTime{}, stopSteps: map[string]stepTime{}}
	r.driver = &benchDriver{d: &vmmtest.Driver{Agent: func(ctx context.Context, _ string) (net.Conn, error) {
		return agent.DialUnix(e.guest)(ctx)
	}}, t: steps}
	r.m = NewManager(Options{
		Config: e.cfg, Node: "bench", Store: timedStore{st, steps}, Driver: r.driver,
		Helper: timedHelper{h.priv, steps}, Cgroups: timedCgroups{e.cgroups, steps}, Disks: timedDisks{e.disks, steps}, Initramfs: e.initrd.Path,
		Kernel: guest.Kernel{Vmlinuz: "/boot/vmlinuz"},
		Budget: NewBudget(Capacity{Memory: units.TiB, Disk: 100 * units.TiB, CPUs: 2}),
		// hyperd logs every create and stop; the cost of formatting stays.
		Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
	})
	runCtx, cancel := context.WithCancel(ctx)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- r.m.Run(runCtx, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		b.Fatalf("Run: %v", err)
	}
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("Run: %v", err)
		}
	})
	// One create and stop warms the disk template, the store and the code.
	r.driver.pool = startVMMPool(b, 1, h.cred)
	vm, err := r.m.Create(ctx, r.req())
	if err != nil {
		b.Fatalf("warm-up create: %v", err)
	}
	if _, err := r.m.Stop(ctx, vm.ID, time.Second); err != nil {
		b.Fatalf("warm-up stop: %v", err)
	}
	r.driver.pool.close()
	steps.take()
	return r
}

func (r *benchRun) req() CreateRequest {
	return CreateRequest{ImageID: r.image.ID, InstanceType: benchType, Arch: Arch(), Labels: map[string]string{"bench": "1"}}
}

// batch creates n VMs, one after the other or all at once, then stops them
// the same way and checks that nothing is left. Only the creates are
// timed by the framework; the stops are measured on the side.
func (r *benchRun) batch(b *testing.B, n int, concurrent bool) {
	b.StopTimer()
	ctx := context.Background()
	r.driver.pool = startVMMPool(b, n, r.helper.cred)
	defer r.driver.pool.close()
	before := readMem()
	ids := make([]string, n)
	lat := make([]time.Duration, n)
	r.steps.take()
	cpu := readCPU()
	b.StartTimer()
	wall := runBatch(b, n, concurrent, func(i int) error {
		start := time.Now()
		vm, err := r.m.Create(ctx, r.req())
		lat[i] = time.Since(start)
		if err == nil && vm.State != StateRunning {
			err = fmt.Errorf("created vm %s is %s", vm.ID, vm.State)
		}
		ids[i] = vm.ID
		return err
	})
	b.StopTimer()
	r.createWall += wall
	r.creates = append(r.creates, lat...)
	mergeSteps(r.createSteps, r.steps.take())
	r.createCPU = r.createCPU.add(readCPU().sub(cpu))
	if !concurrent {
		r.mem = append(r.mem, readMem().sub(before, n))
	}
	if u := r.m.Usage(); u.VMs != n {
		b.Fatalf("%d VMs in the budget after %d creates", u.VMs, n)
	}
	if got := len(r.env.vmCgroups()); r.env.hier != nil && got != n*len(r.env.hier) {
		b.Fatalf("%d VM cgroups after %d creates in %d hierarchies", got, n, len(r.env.hier))
	}

	lat = make([]time.Duration, n)
	r.stopWall += runBatch(b, n, concurrent, func(i int) error {
		start := time.Now()
		vm, err := r.m.Stop(ctx, ids[i], time.Second)
		lat[i] = time.Since(start)
		if err == nil && vm.State != StateStopped {
			err = fmt.Errorf("stopped vm %s is %s", vm.ID, vm.State)
		}
		return err
	})
	r.stops = append(r.stops, lat...)
	mergeSteps(r.stopSteps, r.steps.take())
	r.checkClean(b)
	b.StartTimer()
}

// runBatch runs op(0..n-1) sequentially or all at once and returns the
// wall time from the first start to the last return.
func runBatch(b *testing.B, n int, concurrent bool, op func(i int) error) time.Duration {
	b.Helper()
	errs := make([]error, n)
	start := time.Now()
	if concurrent {
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-gate
				errs[i] = op(i)
			})
		}
		start = time.Now()
		close(gate)
		wg.Wait()
	} else {
		for i := range n {
			if errs[i] = op(i); errs[i] != nil {
				break
			}
		}
	}
	wall := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	return wall
}

// checkClean fails the benchmark if a stopped VM left anything behind.
func (r *benchRun) checkClean(b *testing.B) {
	b.Helper()
	var left []string
	if entries, _ := os.ReadDir(r.env.cfg.VMsDir()); len(entries) > 0 {
		left = append(left, fmt.Sprintf("%d vm dirs", len(entries)))
	}
	if cg := r.env.vmCgroups(); len(cg) > 0 {
		left = append(left, fmt.Sprintf("cgroups %v", cg))
	}
	if claims, err := r.st.ListUIDClaims(context.Background(), "bench"); err != nil || len(claims) > 0 {
		left = append(left, fmt.Sprintf("uid claims %v (%v)", claims, err))
	}
	if running := r.driver.d.Running(); len(running) > 0 {
		left = append(left, fmt.Sprintf("vmms %v", running))
	}
	if u := r.m.Usage(); u.VMs != 0 || u.Memory != 0 || u.Disk != 0 {
		left = append(left, fmt.Sprintf("budget %+v", u))
	}
	if live := r.driver.pool.live(); len(live) > 0 {
		left = append(left, fmt.Sprintf("vmm processes %v", live))
	}
	if len(left) > 0 {
		b.Fatalf("stopped VMs left: %s", strings.Join(left, "; "))
	}
}

// report prints the sub-benchmark's table and reports its metrics.
func (r *benchRun) report(b *testing.B, concurrent bool) {
	b.Helper()
	if len(r.creates) == 0 {
		return
	}
	cs, ss := sortedCopy(r.creates), sortedCopy(r.stops)
	createRate := float64(len(cs)) / r.createWall.Seconds()
	stopRate := float64(len(ss)) / r.stopWall.Seconds()
	b.ReportMetric(ms(percentile(cs, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(cs, 99)), "p99-ms")
	b.ReportMetric(createRate, "creates/s")
	b.ReportMetric(ms(percentile(ss, 50)), "stop-p50-ms")
	b.ReportMetric(ms(percentile(ss, 99)), "stop-p99-ms")
	b.ReportMetric(stopRate, "stops/s")

	var out strings.Builder
	tw := tabwriter.NewWriter(&out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(&out, "\n%s store, helper %s (one run of its cheapest op: %.2f ms), %d VMs per batch, %d batches, load average %s\n",
		r.st.Engine(), r.helper.name, ms(r.helper.floor), len(cs)/b.N, b.N, loadAvg())
	fmt.Fprintln(tw, "\tp50 ms\tp90 ms\tp99 ms\tmax ms\tper s\t")
	for _, row := range []struct {
		name string
		d    []time.Duration
		rate float64
	}{{"create", cs, createRate}, {"stop", ss, stopRate}} {
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.2f\t%.0f\t\n", row.name, ms(percentile(row.d, 50)), ms(percentile(row.d, 90)),
			ms(percentile(row.d, 99)), ms(row.d[len(row.d)-1]), row.rate)
	}
	tw.Flush()
	fmt.Fprintf(&out, "CPU per create: hyperd %.2f ms, helper runs %.2f ms (%d cores: at most %.0f creates/s on CPU alone)\n",
		ms(r.createCPU.self)/float64(len(cs)), ms(r.createCPU.children)/float64(len(cs)), runtime.NumCPU(),
		float64(runtime.NumCPU())*float64(len(cs))/(r.createCPU.self+r.createCPU.children).Seconds())
	b.ReportMetric(ms(r.createCPU.self+r.createCPU.children)/float64(len(cs)), "cpu-ms/create")
	writeSteps(&out, "create", r.createSteps, r.creates, r.env.agentRTT)
	writeSteps(&out, "stop", r.stopSteps, r.stops, 0)
	if !concurrent && len(r.mem) > 0 {
		var m memDelta
		for _, d := range r.mem {
			m.heap += d.heap / float64(len(r.mem))
			m.stack += d.stack / float64(len(r.mem))
			m.rss += d.rss / float64(len(r.mem))
			m.goroutines += d.goroutines / float64(len(r.mem))
		}
		fmt.Fprintf(&out, "hyperd per running VM: Go heap %.1f KiB, goroutine stacks %.1f KiB, RSS %.1f KiB, %.1f goroutines\n",
			m.heap/1024, m.stack/1024, m.rss/1024, m.goroutines)
		b.ReportMetric(m.heap, "heap-B/vm")
		b.ReportMetric(m.rss, "rss-B/vm")
		b.ReportMetric(m.goroutines, "goroutines/vm")
	}
	b.Log(out.String())
}

// writeSteps prints where a phase's time went: each timed step's calls and
// time per VM, and the rest (the manager's own work, and for a create the
// agent's handshake and Health, whose cost alone is agentRTT).
func writeSteps(w io.Writer, phase string, steps map[string]stepTime, lat []time.Duration, agentRTT time.Duration) {
	var total time.Duration
	for _, d := range lat {
		total += d
	}
	n := float64(len(lat))
	names := make([]string, 0, len(steps))
	for name := range steps {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int { return int(steps[b].total - steps[a].total) })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s step\tcalls/VM\tms/call\tms/VM\tshare\t\n", phase)
	var timed time.Duration
	for _, name := range names {
		s := steps[name]
		timed += s.total
		fmt.Fprintf(tw, "%s\t%.1f\t%.3f\t%.3f\t%.0f%%\t\n", name, float64(s.calls)/n, ms(s.total)/float64(s.calls),
			ms(s.total)/n, 100*float64(s.total)/float64(total))
	}
	rest := "rest (manager: agent Shutdown and close, vm dir removal)"
	if agentRTT > 0 {
		rest = fmt.Sprintf("rest (manager, agent handshake+Health: %.2f ms alone)", ms(agentRTT))
	}
	fmt.Fprintf(tw, "%s\t\t\t%.3f\t%.0f%%\t\n", rest, ms(total-timed)/n, 100*float64(total-timed)/float64(total))
	tw.Flush()
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func sortedCopy(d []time.Duration) []time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s
}

// percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method: the smallest sample with at least p% of the
// samples at or below it.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func TestPercentile(t *testing.T) {
	var hundred []time.Duration
	for i := 1; i <= 100; i++ {
		hundred = append(hundred, time.Duration(i))
	}
	for _, c := range []struct {
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{nil, 50, 0},
		{[]time.Duration{7}, 99, 7},
		{[]time.Duration{1, 2, 3, 4}, 50, 2},
		{[]time.Duration{1, 2, 3, 4}, 51, 3},
		{hundred, 50, 50},
		{hundred, 99, 99},
		{hundred, 100, 100},
		{hundred, 0.5, 1},
	} {
		if got := percentile(c.samples, c.p); got != c.want {
			t.Errorf("percentile(%d samples, %v) = %d, want %d", len(c.samples), c.p, got, c.want)
		}
	}
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(data))[:3], " ")
}

// cpuTime is user plus system time of this process and of its waited-for
// children (the helper runs).
type cpuTime struct{ self, children time.Duration }

func readCPU() cpuTime {
	get := func(who int) time.Duration {
		var ru unix.Rusage
		if err := unix.Getrusage(who, &ru); err != nil {
			return 0
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return cpuTime{get(unix.RUSAGE_SELF), get(unix.RUSAGE_CHILDREN)}
}

func (c cpuTime) sub(o cpuTime) cpuTime { return cpuTime{c.self - o.self, c.children - o.children} }
func (c cpuTime) add(o cpuTime) cpuTime { return cpuTime{c.self + o.self, c.children + o.children} }

// memDelta is the growth of the process per VM.
type memDelta struct{ heap, stack, rss, goroutines float64 }

type memSample struct {
	heap, stack, rss uint64
	goroutines       int
}

// readMem collects garbage, then reads the live heap, goroutine stacks,
// goroutine count and resident set of this process.
func readMem() memSample {
	runtime.GC()
	var st runtime.MemStats
	runtime.ReadMemStats(&st)
	s := memSample{heap: st.HeapAlloc, stack: st.StackInuse, goroutines: runtime.NumGoroutine()}
	if data, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(data)); len(f) > 1 {
			pages, _ := strconv.ParseUint(f[1], 10, 64)
			s.rss = pages * uint64(os.Getpagesize())
		}
	}
	return s
}

func (s memSample) sub(before memSample, n int) memDelta {
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
	return memDelta{per(s.heap, before.heap), per(s.stack, before.stack), per(s.rss, before.rss),
		float64(s.goroutines-before.goroutines) / float64(n)}
}

// stepTimes adds up the time spent in each step the manager calls out to.
type stepTimes struct {
	mu sync.Mutex
	m  map[string]stepTime
}

type stepTime struct {
	calls int
	total time.Duration
}

func newStepTimes() *stepTimes { return &stepTimes{m: map[string]stepTime{}} }

// add records a call to step that began at start; use it deferred.
func (s *stepTimes) add(step string, start time.Time) {
	d := time.Since(start)
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.m[step]
	t.calls++
	t.total += d
	s.m[step] = t
}

// take returns the steps recorded so far and starts afresh.
func (s *stepTimes) take() map[string]stepTime {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.m
	s.m = map[string]stepTime{}
	return m
}

func mergeSteps(dst, src map[string]stepTime) {
	for k, v := range src {
		t := dst[k]
		t.calls += v.calls
		t.total += v.total
		dst[k] = t
	}
}

// The wrappers below time, from the outside, each interface the manager
// consumes on the create and stop paths.

type timedStore struct {
	Store
	t *stepTimes
}

func (s timedStore) GetImage(ctx context.Context, id string) (store.Image, error) {
	defer s.t.add("store GetImage", time.Now())
	return s.Store.GetImage(ctx, id)
}

func (s timedStore) GetNode(ctx context.Context, name string) (store.Node, error) {
	defer s.t.add("store GetNode", time.Now())
	return s.Store.GetNode(ctx, name)
}

func (s timedStore) CreateVM(ctx context.Context, vm store.VM) (store.VM, error) {
	defer s.t.add("store CreateVM", time.Now())
	return s.Store.CreateVM(ctx, vm)
}

func (s timedStore) GetVM(ctx context.Context, id string) (store.VM, error) {
	defer s.t.add("store GetVM", time.Now())
	return s.Store.GetVM(ctx, id)
}

func (s timedStore) UpdateVMState(ctx context.Context, id string, from []string, to, lastError string) (store.VM, error) {
	defer s.t.add("store UpdateVMState", time.Now())
	return s.Store.UpdateVMState(ctx, id, from, to, lastError)
}

func (s timedStore) SetVMUID(ctx context.Context, id string, uid uint32) error {
	defer s.t.add("store SetVMUID", time.Now())
	return s.Store.SetVMUID(ctx, id, uid)
}

func (s timedStore) ClaimUID(ctx context.Context, node, vmID string, lo, hi uint32) (uint32, error) {
	defer s.t.add("store ClaimUID", time.Now())
	return s.Store.ClaimUID(ctx, node, vmID, lo, hi)
}

func (s timedStore) ClaimUIDExact(ctx context.Context, node, vmID string, uid uint32) (bool, error) {
	defer s.t.add("store ClaimUIDExact", time.Now())
	return s.Store.ClaimUIDExact(ctx, node, vmID, uid)
}

func (s timedStore) ReleaseUID(ctx context.Context, node string, uid uint32) error {
	defer s.t.add("store ReleaseUID", time.Now())
	return s.Store.ReleaseUID(ctx, node, uid)
}

type timedHelper struct {
	Privileged
	t *stepTimes
}

func (h timedHelper) RemoveCgroup(ctx context.Context, vm string) (bool, error) {
	defer h.t.add("helper cgroup remove", time.Now())
	return h.Privileged.RemoveCgroup(ctx, vm)
}

type timedCgroups struct {
	Cgroups
	t *stepTimes
}

func (c timedCgroups) Create(id string, milliCPU, mem uint64) error {
	defer c.t.add("cgroup create (delegated)", time.Now())
	return c.Cgroups.Create(id, milliCPU, mem)
}

func (c timedCgroups) Attach(id string, pid int) error {
	defer c.t.add("cgroup attach (delegated)", time.Now())
	return c.Cgroups.Attach(id, pid)
}

type timedDisks struct {
	Disks
	t *stepTimes
}

func (d timedDisks) Create(ctx context.Context, path string, size units.Size) error {
	defer d.t.add("disk create (template clone)", time.Now())
	return d.Disks.Create(ctx, path, size)
}

// nopHelper stands in for the setuid helper when the benchmark cannot
// install it (not root).
type nopHelper struct{}

func (nopHelper) RemoveCgroup(context.Context, string) (bool, error) { return true, nil }
func (nopHelper) ListCgroups(context.Context) ([]string, error)      { return nil, nil }
func (nopHelper) RemoveJail(context.Context, string) error           { return nil }

// nopCgroups stands in for the delegated cgroups without root.
type nopCgroups struct{}

func (nopCgroups) Create(string, uint64, uint64) error { return nil }
func (nopCgroups) Attach(string, int) error            { return nil }

// benchDriver is vmmtest's driver with a real process per VM, taken from a
// pool started before the timed creates: the helper moves only a live
// process of its caller into a cgroup, and a real driver's Stop kills its
// VMM, which this one does too.
type benchDriver struct {
	d    *vmmtest.Driver
	t    *stepTimes
	pool *vmmPool
}

var _ vmm.Driver = (*benchDriver)(nil)

func (d *benchDriver) Name() string { return d.d.Name() }

func (d *benchDriver) Start(ctx context.Context, c vmm.Config) (vmm.VM, error) {
	defer d.t.add("vmm start (ready at once)", time.Now())
	var p *vmmProc
	select {
	case p = <-d.pool.free:
	default:
		return nil, errors.New("bench driver: no stand-in vmm process left")
	}
	v, err := d.d.Start(ctx, c)
	if err != nil {
		p.kill()
		return nil, err
	}
	return &benchVM{VM: v, p: p, t: d.t}, nil
}

func (d *benchDriver) Attach(ctx context.Context, id, dir string) (vmm.VM, error) {
	return d.d.Attach(ctx, id, dir)
}

type benchVM struct {
	vmm.VM
	p *vmmProc
	t *stepTimes
}

func (v *benchVM) Pid() int { return v.p.cmd.Process.Pid }

func (v *benchVM) Stop(ctx context.Context) error {
	defer v.t.add("vmm stop (kill stand-in)", time.Now())
	err := v.VM.Stop(ctx)
	v.p.kill()
	return err
}

func (v *benchVM) DialAgent(ctx context.Context) (net.Conn, error) {
	defer v.t.add("agent socket connect", time.Now())
	return v.VM.DialAgent(ctx)
}

// vmmPool is a set of sleeping processes that stand in for VMMs.
type vmmPool struct {
	free chan *vmmProc
	all  []*vmmProc
}

type vmmProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startVMMPool(b *testing.B, n int, cred *syscall.Credential) *vmmPool {
	b.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		b.Fatal(err)
	}
	p := &vmmPool{free: make(chan *vmmProc, n)}
	b.Cleanup(p.close)
	for range n {
		cmd := exec.Command(sleep, "3600")
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		proc := &vmmProc{cmd: cmd, done: make(chan struct{})}
		go func() {
			_ = cmd.Wait()
			close(proc.done)
		}()
		p.all = append(p.all, proc)
		p.free <- proc
	}
	return p
}

func (p *vmmProc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// live lists the pids of taken processes still running: a stopped VM's
// stand-in must be gone. Call it with no Start in flight.
func (p *vmmPool) live() []int {
	free := map[*vmmProc]bool{}
	for range len(p.free) {
		proc := <-p.free
		free[proc] = true
		p.free <- proc
	}
	var pids []int
	for _, proc := range p.all {
		select {
		case <-proc.done:
		default:
			if !free[proc] {
				pids = append(pids, proc.cmd.Process.Pid)
			}
		}
	}
	return pids
}

func (p *vmmPool) close() {
	for _, proc := range p.all {
		proc.kill()
	}
}
