package node

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/config"
	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/guestcfg"
	"github.com/hypervm/hyper/internal/ids"
	"github.com/hypervm/hyper/internal/instance"
	"github.com/hypervm/hyper/internal/store"
	"github.com/hypervm/hyper/internal/suid"
	"github.com/hypervm/hyper/internal/units"
	"github.com/hypervm/hyper/internal/vmm"
)

// VM states as the store records them.
const (
	StateCreating = "creating"
	StateBooting  = "booting"
	StateRunning  = "running"
	StateStopping = "stopping"
	StateStopped  = "stopped"
	StateCrashed  = "crashed"
	StateFailed   = "failed"
	StateLost     = "lost"
)

// liveStates are the states of a VM that holds resources on its node.
var liveStates = []string{StateCreating, StateBooting, StateRunning, StateCrashed, StateStopping}

// Store is what the manager keeps in the metadata store.
type Store interface {
	GetImage(ctx context.Context, id string) (store.Image, error)
	GetLayer(ctx context.Context, id string) (store.Layer, error)
	PutLayer(ctx context.Context, l store.Layer) (store.Layer, error)
	DeleteLayer(ctx context.Context, id string) error
	GetNode(ctx context.Context, name string) (store.Node, error)

	CreateVM(ctx context.Context, vm store.VM) (store.VM, error)
	GetVM(ctx context.Context, id string) (store.VM, error)
	ListVMs(ctx context.Context, f store.VMFilter) ([]store.VM, string, error)
	UpdateVMState(ctx context.Context, id string, from []string, to, lastError string) (store.VM, error)
	IncrementRestarts(ctx context.Context, id string) (int, error)
	SetVMUID(ctx context.Context, id string, uid uint32) error

	ClaimUID(ctx context.Context, node, vmID string, lo, hi uint32) (uint32, error)
	ClaimUIDExact(ctx context.Context, node, vmID string, uid uint32) (bool, error)
	ReleaseUID(ctx context.Context, node string, uid uint32) error
	ListUIDClaims(ctx context.Context, node string) (map[uint32]string, error)
}

// Privileged is the part of the setuid helper the manager uses.
type Privileged interface {
	RemoveCgroup(ctx context.Context, vm string) (bool, error)
	ListCgroups(ctx context.Context) ([]string, error)
	RemoveJail(ctx context.Context, vm string) error
}

// Cgroups makes VM cgroups in the node's parent cgroup, which the helper
// delegated to hyperd: no helper process runs on the create path. Killing
// and removing them stay with the helper (Privileged).
type Cgroups interface {
	// Create makes VM id's cgroup with milliCPU thousandths of a CPU and
	// mem bytes of memory, undoing what it made on failure.
	Create(id string, milliCPU, mem uint64) error
	// Attach moves pid, a process of hyperd's, into VM id's cgroup.
	Attach(id string, pid int) error
}

// Disks makes writable disks.
type Disks interface {
	Create(ctx context.Context, path string, size units.Size) error
}

// Options configure a Manager.
type Options struct {
	Config    *config.Config
	Node      string
	Store     Store
	Driver    vmm.Driver
	Helper    Privileged
	Cgroups   Cgroups
	Disks     Disks
	Cloner    Cloner
	Initramfs string // the shared initramfs every VM boots
	Kernel    guest.Kernel
	Budget    *Budget
	Logger    *slog.Logger
	// VMMOverhead is the memory the driver's VMM needs beside its
	// guest's, added to the guest's memory for the VM's cgroup limit and
	// budget share; 0 means instance.VMMOverhead.
	VMMOverhead units.Size

	// More than MaxCrashes crashes within CrashWindow make a VM Failed
	// instead of restarted; 0 means the first crash does.
	MaxCrashes  int
	CrashWindow time.Duration
	// RestartBackoff is the first restart delay; it doubles per crash.
	RestartBackoff time.Duration
	// ExpiryInterval is how often VMs created with a TTL are checked for
	// expiry; default 5 s.
	ExpiryInterval time.Duration
}

// File names in a VM's directory.
const (
	diskFile   = "disk.ext4"
	configFile = suid.JailConfig
)

// Manager runs the VMs of one node: one supervisor goroutine per VM owns
// its VMM and agent connection and records every transition in the store.
type Manager struct {
	o   Options
	cfg *config.Config
	log *slog.Logger
	// usesJail: the driver runs VMMs in a jail the helper must remove.
	usesJail bool
	// joinsCgroup: the driver's VMM does not enter its cgroup by itself
	// (the Firecracker jailer does), so the manager moves it in.
	joinsCgroup bool

	uids *uidPool

	mu   sync.Mutex
	vms  map[string]*machine
	life context.Context // supervisors' lifetime; set by Run
	wg   sync.WaitGroup
}

// machine is one VM the manager supervises.
type machine struct {
	id   string
	spec vmm.Config
	uid  uint32

	mu       sync.Mutex
	vm       vmm.VM
	agent    *agent.Client
	state    string
	stopping bool
	crashes  []time.Time
	stopped  chan struct{} // closed when the supervisor returns
	cancel   context.CancelFunc
	// quiesce is held while the VM is frozen for a clone, so two forks
	// of one VM never thaw each other's freeze.
	quiesce sync.Mutex
}

// NewManager returns a manager; Run starts it.
func NewManager(o Options) *Manager {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.CrashWindow == 0 {
		o.CrashWindow = time.Minute
	}
	if o.RestartBackoff == 0 {
		o.RestartBackoff = 500 * time.Millisecond
	}
	if o.ExpiryInterval == 0 {
		o.ExpiryInterval = 5 * time.Second
	}
	return &Manager{
		o:           o,
		cfg:         o.Config,
		log:         o.Logger,
		usesJail:    o.Driver.Name() == "firecracker",
		joinsCgroup: o.Driver.Name() != "firecracker",
		uids:        newUIDPool(o.Store, o.Node, o.Config.Jails.UIDMin(), o.Config.Jails.UIDMax()),
		vms:         map[string]*machine{},
		life:        context.Background(),
	}
}

// Create boots a VM and returns it Running. Every resource is taken in
// order and, on failure, given back in reverse; the error names the step.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (store.VM, error) {
	typ, image, err := m.validate(ctx, req)
	if err != nil {
		return store.VM{}, err
	}
	makeDisk := func(ctx context.Context, path string) error { return m.o.Disks.Create(ctx, path, typ.Disk) }
	if req.LayerID != "" {
		if makeDisk, err = m.fromLayer(req.LayerID, typ); err != nil {
			return store.VM{}, err
		}
	}
	id := ids.NewVM()
	if err := m.o.Budget.Reserve(id, m.reservation(typ)); err != nil {
		return store.VM{}, fmt.Errorf("create vm: %w", err)
	}
	return m.create(ctx, id, req, typ, image, makeDisk)
}

// create boots the VM id, whose budget is reserved, with the writable disk
// makeDisk makes at the path it is given.
func (m *Manager) create(ctx context.Context, id string, req CreateRequest, typ instance.Type, image store.Image,
	makeDisk func(ctx context.Context, path string) error) (store.VM, error) {
	log := m.log.With("vm_id", id, "op", "create")
	row := store.VM{
		ID: id, Node: m.o.Node, ImageID: image.ID, LayerID: req.LayerID,
		InstanceType: typ.Name, Arch: req.Arch, BootArgs: req.BootArgs,
		Labels: withParent(req.Labels, req.ParentID), State: StateCreating,
	}
	if req.TTL > 0 {
		exp := time.Now().Add(req.TTL).UTC()
		row.ExpiresAt = &exp
	}
	if _, err := m.o.Store.CreateVM(ctx, row); err != nil {
		m.o.Budget.Release(id)
		return store.VM{}, fmt.Errorf("create vm: record: %w", err)
	}
	mc := &machine{id: id, state: StateCreating, stopped: make(chan struct{})}
	fail := func(step string, err error) (store.VM, error) {
		err = fmt.Errorf("create vm %s: %s: %w", id, step, err)
		log.Error("create failed", "step", step, "error", err)
		// Undo with a context of our own: the caller's may be what failed.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if mc.vm != nil {
			if serr := mc.vm.Stop(cctx); serr != nil {
				log.Warn("stop vmm after failed create", "error", serr)
			}
		}
		m.release(cctx, id, mc.uid)
		if _, uerr := m.o.Store.UpdateVMState(cctx, id, nil, StateFailed, err.Error()); uerr != nil {
			log.Warn("record failed create", "error", uerr)
		}
		return store.VM{}, err
	}

	uid, err := m.uids.claim(ctx, id)
	if err != nil {
		return fail("claim uid", err)
	}
	mc.uid = uid
	if err := m.o.Store.SetVMUID(ctx, id, uid); err != nil {
		return fail("record uid", err)
	}
	dir := m.cfg.VMDir(id)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fail("make vm dir", err)
	}
	disk := filepath.Join(dir, diskFile)
	if err := makeDisk(ctx, disk); err != nil {
		return fail("make writable disk", err)
	}
	gcfg := &guestcfg.VM{ID: id, Image: imageConfig(image)}
	if err := guestcfg.WriteDisk(filepath.Join(dir, configFile), gcfg); err != nil {
		return fail("write config disk", err)
	}
	if err := m.o.Cgroups.Create(id, typ.MilliCPU(), uint64(m.vmMemory(typ))); err != nil {
		return fail("create cgroup", err)
	}
	mc.spec = m.spec(row, typ)
	if _, err := m.o.Store.UpdateVMState(ctx, id, []string{StateCreating}, StateBooting, ""); err != nil {
		return fail("record booting", err)
	}
	if err := m.boot(ctx, mc); err != nil {
		return fail("boot", err)
	}
	vm, err := m.o.Store.UpdateVMState(ctx, id, []string{StateBooting}, StateRunning, "")
	if err != nil {
		return fail("record running", err)
	}
	m.adopt(mc, StateRunning)
	log.Info("vm running", "uid", uid, "pid", mc.vm.Pid(), "type", typ.Name)
	return vm, nil
}

func (m *Manager) validate(ctx context.Context, req CreateRequest) (instance.Type, store.Image, error) {
	typ, err := instance.Lookup(req.InstanceType)
	if err != nil {
		return typ, store.Image{}, fmt.Errorf("%w: instance_type: %v", ErrInvalid, err)
	}
	if req.Arch != Arch() {
		return typ, store.Image{}, fmt.Errorf("%w: node %s is %s, the request wants %s", ErrArchMismatch, m.o.Node, Arch(), req.Arch)
	}
	imageID := req.ImageID
	if req.LayerID != "" {
		l, err := m.o.Store.GetLayer(ctx, req.LayerID)
		if err != nil {
			return typ, store.Image{}, fmt.Errorf("layer %s: %w", req.LayerID, err)
		}
		imageID = l.ImageID
	}
	image, err := m.o.Store.GetImage(ctx, imageID)
	if err != nil {
		return typ, store.Image{}, fmt.Errorf("image %s: %w", imageID, err)
	}
	if image.Arch != "" && image.Arch != req.Arch {
		return typ, image, fmt.Errorf("%w: image %s is %s, the request wants %s", ErrArchMismatch, image.ID, image.Arch, req.Arch)
	}
	if n, err := m.o.Store.GetNode(ctx, m.o.Node); err == nil && n.Cordoned {
		return typ, image, fmt.Errorf("%w: %s", ErrCordoned, m.o.Node)
	}
	return typ, image, nil
}

// spec is a VM's VMM configuration. It derives from the VM's row alone, so a
// VM re-adopted after a daemon restart is restarted exactly as it was
// created.
func (m *Manager) spec(vm store.VM, typ instance.Type) vmm.Config {
	dir := m.cfg.VMDir(vm.ID)
	return vmm.Config{
		ID: vm.ID, Dir: dir, Kernel: m.o.Kernel, Initrd: m.o.Initramfs,
		BaseDisk:     filepath.Join(m.cfg.ImagesDir(), vm.ImageID+".ext4"),
		WritableDisk: filepath.Join(dir, diskFile), ConfigDisk: filepath.Join(dir, configFile),
		VCPUs: typ.VCPUCount(), Memory: typ.Memory, DiskBandwidth: typ.DiskBW, BootArgs: vm.BootArgs,
	}
}

// vmMemory is the memory a VM of type typ holds: its guest's and its
// VMM's, the VM cgroup's limit.
func (m *Manager) vmMemory(typ instance.Type) units.Size {
	overhead := m.o.VMMOverhead
	if overhead == 0 {
		overhead = instance.VMMOverhead
	}
	return typ.Memory + overhead
}

// reservation is the budget share of a VM of type typ.
func (m *Manager) reservation(typ instance.Type) Reservation {
	return Reservation{Memory: m.vmMemory(typ), Disk: typ.Disk}
}

// imageConfig turns a stored OCI config subset into the guest's.
func imageConfig(im store.Image) guestcfg.Image {
	var c guestcfg.Image
	if len(im.Config) > 0 {
		_ = json.Unmarshal(im.Config, &c)
	}
	return c
}

// boot starts the VMM for mc.spec, puts it in its cgroup and waits for the
// guest agent to answer Health.
func (m *Manager) boot(ctx context.Context, mc *machine) error {
	vm, err := m.o.Driver.Start(ctx, mc.spec)
	if err != nil {
		return fmt.Errorf("start vmm: %w", err)
	}
	mc.mu.Lock()
	mc.vm = vm
	mc.mu.Unlock()
	if m.joinsCgroup {
		if err := m.o.Cgroups.Attach(mc.id, vm.Pid()); err != nil {
			return fmt.Errorf("move vmm into cgroup: %w", err)
		}
	}
	return m.connect(ctx, mc, m.cfg.VMM.BootTimeout.Duration)
}

// connect dials the guest agent and checks its health within timeout.
func (m *Manager) connect(ctx context.Context, mc *machine, timeout time.Duration) error {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	mc.mu.Lock()
	vm := mc.vm
	mc.mu.Unlock()
	// A VMM that dies while we wait ends the wait at once.
	go func() {
		if vm.Wait(dctx) == nil {
			cancel()
		}
	}()
	c, err := agent.Dial(dctx, vm.DialAgent)
	if err != nil {
		if st, serr := vm.Status(context.WithoutCancel(ctx)); serr == nil && st == vmm.Exited {
			return fmt.Errorf("the vmm exited during boot; console: %s", m.consoleTail(vm.ConsolePath()))
		}
		return fmt.Errorf("guest agent did not answer within %s: %w", timeout, err)
	}
	h, err := c.Health(dctx)
	if err != nil || !h.GetOk() {
		c.Close()
		return fmt.Errorf("guest agent unhealthy: %v", err)
	}
	mc.mu.Lock()
	if mc.agent != nil {
		mc.agent.Close()
	}
	mc.agent = c
	mc.mu.Unlock()
	return nil
}

// adopt registers mc and starts its supervisor.
func (m *Manager) adopt(mc *machine, state string) {
	mc.mu.Lock()
	mc.state = state
	mc.mu.Unlock()
	m.mu.Lock()
	ctx, cancel := context.WithCancel(m.life)
	mc.cancel = cancel
	m.vms[mc.id] = mc
	m.mu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(mc.stopped)
		m.supervise(ctx, mc)
	}()
}

// supervise waits for the VMM to exit. An exit the manager did not ask for
// is a crash: the VMM is restarted with exponential backoff until it has
// crashed MaxCrashes times within CrashWindow, then the VM is Failed with
// the reason and its resources are freed. When ctx ends (the daemon stops)
// the VM keeps running: VMs outlive the daemon.
func (m *Manager) supervise(ctx context.Context, mc *machine) {
	log := m.log.With("vm_id", mc.id, "op", "supervise")
	for {
		mc.mu.Lock()
		vm := mc.vm
		mc.mu.Unlock()
		err := vm.Wait(ctx)
		if ctx.Err() != nil {
			return
		}
		mc.mu.Lock()
		stopping := mc.stopping
		mc.mu.Unlock()
		if stopping {
			return
		}
		reason := fmt.Sprintf("vmm exited (%v); console: %s", errOrClean(err), m.consoleTail(vm.ConsolePath()))
		log.Warn("vm crashed", "reason", reason)
		if !m.recordCrash(ctx, mc, reason) {
			return
		}
		if !m.restart(ctx, mc, log) {
			return
		}
	}
}

// recordCrash notes a crash and reports whether to restart.
func (m *Manager) recordCrash(ctx context.Context, mc *machine, reason string) bool {
	now := time.Now()
	mc.mu.Lock()
	recent := mc.crashes[:0]
	for _, t := range mc.crashes {
		if now.Sub(t) < m.o.CrashWindow {
			recent = append(recent, t)
		}
	}
	mc.crashes = append(recent, now)
	n := len(mc.crashes)
	if mc.agent != nil {
		mc.agent.Close()
		mc.agent = nil
	}
	mc.state = StateCrashed
	mc.mu.Unlock()
	if _, err := m.o.Store.UpdateVMState(ctx, mc.id, nil, StateCrashed, reason); err != nil {
		m.log.Warn("record crash", "vm_id", mc.id, "error", err)
	}
	if n > m.o.MaxCrashes {
		m.fail(ctx, mc, fmt.Sprintf("crashed %d times within %s; last: %s", n, m.o.CrashWindow, reason))
		return false
	}
	return true
}

// restart boots the VM again after a backoff; it reports whether the
// supervisor should go on watching it.
func (m *Manager) restart(ctx context.Context, mc *machine, log *slog.Logger) bool {
	for {
		mc.mu.Lock()
		n := len(mc.crashes)
		mc.mu.Unlock()
		delay := m.o.RestartBackoff << min(n-1, 6)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
		if _, err := m.o.Store.IncrementRestarts(ctx, mc.id); err != nil {
			log.Warn("record restart", "error", err)
		}
		err := m.boot(ctx, mc)
		if err == nil {
			mc.mu.Lock()
			mc.state = StateRunning
			mc.mu.Unlock()
			if _, err := m.o.Store.UpdateVMState(ctx, mc.id, nil, StateRunning, ""); err != nil {
				log.Warn("record running", "error", err)
			}
			log.Info("vm restarted")
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		mc.mu.Lock()
		if mc.vm != nil {
			_ = mc.vm.Stop(ctx)
		}
		mc.mu.Unlock()
		if !m.recordCrash(ctx, mc, "restart failed: "+err.Error()) {
			return false
		}
	}
}

// fail frees a VM's resources and records it Failed with reason.
func (m *Manager) fail(ctx context.Context, mc *machine, reason string) {
	m.log.Error("vm failed", "vm_id", mc.id, "reason", reason)
	m.teardown(ctx, mc, StateFailed, reason)
}

// Stop stops a VM: the guest is asked to shut down and given grace to do
// so, then the VMM and everything in its cgroup are killed and the VM's
// resources freed. Stopping a VM that is not running returns its row.
func (m *Manager) Stop(ctx context.Context, id string, grace time.Duration) (store.VM, error) {
	row, err := m.o.Store.GetVM(ctx, id)
	if err != nil {
		return store.VM{}, fmt.Errorf("stop vm %s: %w", id, err)
	}
	m.mu.Lock()
	mc := m.vms[id]
	m.mu.Unlock()
	if mc == nil {
		if !isLive(row.State) {
			return row, nil
		}
		// A live row without a supervisor: a create in flight on this
		// node, or a VM whose resources outlived a failure. Either way
		// it ends here.
		m.release(ctx, id, row.UID)
		return m.o.Store.UpdateVMState(ctx, id, nil, StateStopped, row.LastError)
	}
	mc.mu.Lock()
	already := mc.stopping
	mc.stopping = true
	c, vm := mc.agent, mc.vm
	mc.mu.Unlock()
	if already {
		// Another Stop is tearing it down; wait for it.
		select {
		case <-mc.stopped:
		case <-ctx.Done():
			return store.VM{}, ctx.Err()
		}
		return m.o.Store.GetVM(ctx, id)
	}
	log := m.log.With("vm_id", id, "op", "stop")
	if _, err := m.o.Store.UpdateVMState(ctx, id, nil, StateStopping, ""); err != nil {
		log.Warn("record stopping", "error", err)
	}
	if c != nil && vm != nil && grace > 0 {
		gctx, cancel := context.WithTimeout(ctx, grace)
		if err := c.Shutdown(gctx, false, 0); err == nil {
			_ = vm.Wait(gctx)
		}
		cancel()
	}
	mc.cancel()
	<-mc.stopped
	m.teardown(context.WithoutCancel(ctx), mc, StateStopped, "")
	log.Info("vm stopped")
	return m.o.Store.GetVM(ctx, id)
}

// teardown stops the VMM, frees everything and records the final state.
func (m *Manager) teardown(ctx context.Context, mc *machine, state, reason string) {
	mc.mu.Lock()
	mc.stopping = true
	vm, c := mc.vm, mc.agent
	mc.agent = nil
	mc.state = state
	mc.mu.Unlock()
	if c != nil {
		c.Close()
	}
	if vm != nil {
		if err := vm.Stop(ctx); err != nil {
			m.log.Warn("stop vmm", "vm_id", mc.id, "error", err)
		}
	}
	m.release(ctx, mc.id, mc.uid)
	m.mu.Lock()
	delete(m.vms, mc.id)
	m.mu.Unlock()
	if _, err := m.o.Store.UpdateVMState(ctx, mc.id, nil, state, reason); err != nil {
		m.log.Warn("record final state", "vm_id", mc.id, "state", state, "error", err)
	}
}

// release frees a VM's resources in reverse order of creation: its cgroup
// (killing whatever is in it, even a VMM that left its session), its jail,
// its directory (disks, sockets; the console log is kept), its uid
// and its budget. Each step is idempotent and best effort: a failure is
// logged and the next step still runs, and the reaper retries leftovers.
func (m *Manager) release(ctx context.Context, id string, uid uint32) {
	log := m.log.With("vm_id", id, "op", "release")
	if _, err := m.o.Helper.RemoveCgroup(ctx, id); err != nil {
		log.Warn("remove cgroup", "error", err)
	}
	if m.usesJail {
		if err := m.o.Helper.RemoveJail(ctx, id); err != nil {
			log.Warn("remove jail", "error", err)
		}
	}
	m.keepConsole(id)
	if err := os.RemoveAll(m.cfg.VMDir(id)); err != nil {
		log.Warn("remove vm dir", "error", err)
	}
	if uid != 0 {
		if err := m.uids.release(ctx, uid); err != nil {
			log.Warn("release uid", "uid", uid, "error", err)
		}
	}
	m.o.Budget.Release(id)
}

// consoleLog is where a VM's console log lives once the VM is gone.
func (m *Manager) consoleLog(id string) string {
	return filepath.Join(m.cfg.WorkDir, "logs", id+".log")
}

// keepConsole moves the console log out of the VM's directory so it
// outlives the VM.
func (m *Manager) keepConsole(id string) {
	src := filepath.Join(m.cfg.VMDir(id), "console.log")
	if _, err := os.Stat(src); err != nil {
		return
	}
	if err := os.MkdirAll(filepath.Dir(m.consoleLog(id)), 0o750); err == nil {
		_ = os.Rename(src, m.consoleLog(id))
	}
}

// consoleTail returns the last lines of a console log, for error messages.
func (m *Manager) consoleTail(path string) string {
	const tail = 2048
	f, err := os.Open(path)
	if err != nil {
		return "(no console log)"
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "(no console log)"
	}
	off := max(fi.Size()-tail, 0)
	buf := make([]byte, fi.Size()-off)
	n, _ := f.ReadAt(buf, off)
	if n == 0 {
		return "(empty console)"
	}
	return string(buf[:n])
}

// Agent returns the guest agent client of a Running VM.
func (m *Manager) Agent(ctx context.Context, id string) (*agent.Client, error) {
	m.mu.Lock()
	mc := m.vms[id]
	m.mu.Unlock()
	if mc == nil {
		row, err := m.o.Store.GetVM(ctx, id)
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: vm %s is %s", ErrNotRunning, id, row.State)
	}
	mc.mu.Lock()
	state, c := mc.state, mc.agent
	mc.mu.Unlock()
	if state != StateRunning || c == nil {
		return nil, fmt.Errorf("%w: vm %s is %s", ErrNotRunning, id, state)
	}
	select {
	case <-c.Done():
		// The connection broke (the guest's agent restarted, say): dial
		// again once.
		if err := m.connect(ctx, mc, 10*time.Second); err != nil {
			return nil, fmt.Errorf("%w: vm %s: reconnect to agent: %v", ErrNotRunning, id, err)
		}
		mc.mu.Lock()
		c = mc.agent
		mc.mu.Unlock()
	default:
	}
	return c, nil
}

// ConsoleLog returns the path of a VM's console log.
func (m *Manager) ConsoleLog(ctx context.Context, id string) (string, error) {
	if _, err := m.o.Store.GetVM(ctx, id); err != nil {
		return "", err
	}
	m.mu.Lock()
	mc := m.vms[id]
	m.mu.Unlock()
	if mc != nil {
		mc.mu.Lock()
		vm := mc.vm
		mc.mu.Unlock()
		if vm != nil {
			return vm.ConsolePath(), nil
		}
	}
	return m.consoleLog(id), nil
}

// Usage reports the node's budget and VM count.
func (m *Manager) Usage() Usage { return m.o.Budget.Usage() }

func isLive(state string) bool {
	for _, s := range liveStates {
		if s == state {
			return true
		}
	}
	return false
}

func errOrClean(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}
