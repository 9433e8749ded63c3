// Package qemu is the VMM driver for QEMU's microvm machine: virtio-mmio
// devices announced by ACPI, no PCI, no firmware. It runs real guests on
// hosts without Firecracker, with KVM where a test boot proves KVM works and
// with TCG (emulation) elsewhere.
//
// QEMU runs daemonized (-daemonize: its own session, reparented away from
// the daemon), so it outlives the daemon; its launcher exits only once QEMU
// has set up every device and socket, which is Start's readiness signal and
// surfaces QEMU's own error message for a bad disk or option. The VM's
// directory holds everything needed to re-attach: the pidfile, the QMP
// socket, the agent socket and the console log.
package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/guestcfg"
	"github.com/hypervm/hyper/internal/instance"
	"github.com/hypervm/hyper/internal/units"
	"github.com/hypervm/hyper/internal/vmm"
	"github.com/hypervm/hyper/internal/vmm/vmmproc"
)

// Files in the VM's directory.
const (
	PidFile     = "qemu.pid"
	QMPSocket   = "qmp.sock"
	AgentSocket = "agent.sock"
	ConsoleLog  = "console.log"
)

// Accelerators.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// DefaultCmdline is the guest kernel command line. panic=-1 with QEMU's
// -no-reboot turns a guest panic (or init dying) into a QEMU exit the
// supervisor sees, rather than a hung or rebooting VM.
const DefaultCmdline = "console=ttyS0 reboot=t panic=-1 quiet"

// Options configure the driver.
type Options struct {
	// QEMU is the qemu-system-x86_64 binary (config tools.qemu).
	QEMU string
	// Accel is AccelAuto (default), AccelKVM or AccelTCG.
	Accel string
	// ProbeTimeout bounds the KVM test boot; default 5 s. A working KVM
	// boots the kernel to its root-mount panic in well under a second.
	ProbeTimeout time.Duration
	// StopTimeout is how long Stop waits for QEMU to quit before killing
	// it; default 5 s.
	StopTimeout time.Duration
}

// launcherGrace bounds the wait for QEMU's launcher after Start's context
// ends.
const launcherGrace = 10 * time.Second

// Driver starts QEMU microVMs. It is safe for concurrent use.
type Driver struct {
	opts Options

	mu   sync.Mutex
	boot *Boot // how guests boot here, once decided
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver.
func New(opts Options) (*Driver, error) {
	if !filepath.IsAbs(opts.QEMU) {
		return nil, fmt.Errorf("qemu driver: tools.qemu must be an absolute path (got %q)", opts.QEMU)
	}
	switch opts.Accel {
	case "":
		opts.Accel = AccelAuto
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		return nil, fmt.Errorf("qemu driver: accel must be auto, kvm or tcg (got %q)", opts.Accel)
	}
	if opts.ProbeTimeout == 0 {
		opts.ProbeTimeout = 5 * time.Second
	}
	if opts.StopTimeout == 0 {
		opts.StopTimeout = 5 * time.Second
	}
	return &Driver{opts: opts}, nil
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "qemu" }

// Start implements vmm.Driver.
func (d *Driver) Start(ctx context.Context, c vmm.Config) (vmm.VM, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Kernel.Vmlinuz == "" {
		return nil, fmt.Errorf("start vm %s: qemu boots a bzImage and the kernel has no vmlinuz", c.ID)
	}
	for name, p := range map[string]string{"kernel": KernelImage(c.Kernel), "initrd": c.Initrd, "base disk": c.BaseDisk, "writable disk": c.WritableDisk, "config disk": c.ConfigDisk} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("start vm %s: %s: %w", c.ID, name, err)
		}
	}
	boot, err := d.Boot(ctx, c.Kernel.Vmlinuz)
	if err != nil {
		return nil, fmt.Errorf("start vm %s: %w", c.ID, err)
	}
	v := d.newVM(c.ID, c.Dir)
	if pid, err := vmmproc.ReadPidfile(v.pidfile); err == nil {
		if p, err := openProcess(pid, v.pidfile); err == nil {
			p.Close()
			return nil, fmt.Errorf("start vm %s: a QEMU (pid %d) already runs for %s", c.ID, pid, c.Dir)
		}
	}
	v.removeFiles()

	args := Args(d.opts.QEMU, boot, c)
	cmd := exec.Command(args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Dir = c.Dir
	// The launcher exits as soon as QEMU is set up (or has failed to), which
	// takes a moment. Killing it early could orphan a daemonized QEMU that
	// has no pidfile yet, so a cancelled ctx waits for it (boundedly) and
	// then cleans up.
	runErr := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start vm %s: %w", c.ID, err)
	}
	go func() { runErr <- cmd.Wait() }()
	select {
	case err = <-runErr:
	case <-ctx.Done():
		select {
		case <-runErr:
		case <-time.After(launcherGrace):
			cmd.Process.Kill()
			<-runErr
		}
		err = ctx.Err()
	}
	if err != nil {
		v.cleanupFailedStart()
		return nil, fmt.Errorf("start vm %s: qemu: %w: %s", c.ID, err, strings.TrimSpace(out.String()))
	}
	pid, err := vmmproc.ReadPidfile(v.pidfile)
	if err != nil {
		v.cleanupFailedStart()
		return nil, fmt.Errorf("start vm %s: %w", c.ID, err)
	}
	if v.proc, err = openProcess(pid, v.pidfile); err != nil {
		v.cleanupFailedStart()
		return nil, fmt.Errorf("start vm %s: qemu exited right after starting (see %s): %w", c.ID, v.ConsolePath(), err)
	}
	if _, err := v.Status(ctx); err != nil {
		v.Stop(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("start vm %s: %w", c.ID, err)
	}
	return v, nil
}

// Attach implements vmm.Driver.
func (d *Driver) Attach(ctx context.Context, id, dir string) (vmm.VM, error) {
	v := d.newVM(id, dir)
	pid, err := vmmproc.ReadPidfile(v.pidfile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("attach vm %s: no %s: %w", id, v.pidfile, vmm.ErrNotRunning)
	}
	if err != nil {
		return nil, fmt.Errorf("attach vm %s: %w", id, err)
	}
	if v.proc, err = openProcess(pid, v.pidfile); err != nil {
		if errors.Is(err, vmmproc.ErrGone) {
			return nil, fmt.Errorf("attach vm %s: pid %d: %w: %w", id, pid, vmm.ErrNotRunning, err)
		}
		return nil, fmt.Errorf("attach vm %s: %w", id, err)
	}
	if _, err := v.Status(ctx); err != nil {
		v.proc.Close()
		return nil, fmt.Errorf("attach vm %s: %w", id, err)
	}
	return v, nil
}

// Boot is how guests boot on this host.
type Boot struct {
	// Accel is AccelKVM or AccelTCG.
	Accel string
	// TSCkHz is the host's TSC frequency, handed to TCG guests; 0 when
	// unknown.
	TSCkHz int64
}

// Cmdline is the guest kernel command line: DefaultCmdline, what this host
// needs, then extra.
func (b Boot) Cmdline(extra string) string {
	s := DefaultCmdline
	if b.Accel == AccelTCG && b.TSCkHz > 0 {
		s += " tsc_early_khz=" + strconv.FormatInt(b.TSCkHz, 10)
	}
	if extra != "" {
		s += " " + extra
	}
	return s
}

// KernelImage is the kernel file QEMU boots for k: the ELF vmlinux when it
// has a PVH entry point, which QEMU jumps straight into, else the bzImage,
// which first decompresses itself (0.2-0.4 s of a boot under TCG). The
// answer for a file is remembered: kernels are cached under versioned
// names and never rewritten in place.
func KernelImage(k guest.Kernel) string {
	if k.Vmlinux == "" {
		return k.Vmlinuz
	}
	if pvh, ok := pvhKernels.Load(k.Vmlinux); ok {
		if pvh.(bool) {
			return k.Vmlinux
		}
		return k.Vmlinuz
	}
	// A vmlinux QEMU cannot tell how to enter, or cannot read, is no
	// reason not to boot: the bzImage always works.
	pvh, _ := guest.HasPVHEntry(k.Vmlinux)
	pvhKernels.Store(k.Vmlinux, pvh)
	if pvh {
		return k.Vmlinux
	}
	return k.Vmlinuz
}

// pvhKernels remembers which vmlinux files have a PVH entry point.
var pvhKernels sync.Map

// tcgCacheMiB caps QEMU's TCG translation cache (-accel tcg,tb-size=).
// QEMU's default, up to 1 GiB, would outgrow any cgroup limit as the guest
// runs new code. A Hyper boot translates about 60 MiB of host code (a bare
// kernel boot about 38 MiB): with 24 MiB the cache filled three times per
// boot and everything was translated again each time, 0.14 s of a 2.3 s
// boot. 64 MiB holds a whole boot; MemoryOverhead counts it.
const tcgCacheMiB = 64

// MemoryOverhead is the memory a QEMU needs beside its guest's, which the
// node adds to the guest's memory for the VM's cgroup limit and its budget:
// instance.VMMOverhead for QEMU itself, plus the translation cache under
// TCG.
func (b Boot) MemoryOverhead() units.Size {
	if b.Accel == AccelTCG {
		return instance.VMMOverhead + tcgCacheMiB*units.MiB
	}
	return instance.VMMOverhead
}

// Args is QEMU's command line for c.
func Args(qemu string, b Boot, c vmm.Config) []string {
	dir := c.Dir
	drive := func(id, file string, readonly bool) string {
		s := "id=" + id + ",if=none,format=raw,file=" + escape(file)
		if readonly {
			s += ",readonly=on"
		}
		if bw := int64(c.DiskBandwidth); bw > 0 {
			s += ",throttling.bps-total=" + strconv.FormatInt(bw, 10)
		}
		return s
	}
	cpu, accel := "max", b.Accel
	if b.Accel == AccelKVM {
		cpu = "host"
	} else {
		accel += ",tb-size=" + strconv.Itoa(tcgCacheMiB)
	}
	return []string{
		qemu,
		"-name", c.ID + ",process=hyper-" + c.ID,
		"-M", "microvm",
		"-accel", accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(c.VCPUs),
		"-m", strconv.FormatInt(int64(c.Memory/units.MiB), 10) + "M",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-daemonize", "-pidfile", filepath.Join(dir, PidFile),
		"-kernel", KernelImage(c.Kernel),
		"-initrd", c.Initrd,
		"-append", b.Cmdline(c.BootArgs),
		// The guest names the disks in this order (guestcfg.BaseDevice,
		// WritableDevice, ConfigDevice).
		"-drive", drive("base", c.BaseDisk, true),
		"-device", "virtio-blk-device,drive=base",
		"-drive", drive("writable", c.WritableDisk, false),
		"-device", "virtio-blk-device,drive=writable",
		"-drive", drive("config", c.ConfigDisk, true),
		"-device", "virtio-blk-device,drive=config",
		// Two ports (port 0 is reserved for a console) instead of 31:
		// the guest driver sets up a queue pair per port, which costs
		// boot time under TCG.
		"-device", "virtio-serial-device,max_ports=2",
		"-chardev", "socket,id=agent,server=on,wait=off,path=" + escape(filepath.Join(dir, AgentSocket)),
		"-device", "virtserialport,chardev=agent,name=" + guestcfg.AgentPortName,
		"-chardev", "socket,id=qmp,server=on,wait=off,path=" + escape(filepath.Join(dir, QMPSocket)),
		"-mon", "chardev=qmp,mode=control",
		"-chardev", "file,id=console,append=on,path=" + escape(filepath.Join(dir, ConsoleLog)),
		"-serial", "chardev:console",
	}
}

// escape quotes a value for QEMU's option syntax, where "," separates keys.
func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// vm is one QEMU process.
type vm struct {
	id, dir  string
	pidfile  string
	qmpSock  string
	agentSck string

	stopTimeout time.Duration

	mu   sync.Mutex // serialises control operations
	proc *vmmproc.Process
}

var _ vmm.VM = (*vm)(nil)

func (d *Driver) newVM(id, dir string) *vm {
	return &vm{
		id: id, dir: dir, stopTimeout: d.opts.StopTimeout,
		pidfile:  filepath.Join(dir, PidFile),
		qmpSock:  filepath.Join(dir, QMPSocket),
		agentSck: filepath.Join(dir, AgentSocket),
	}
}

// ID, Pid and ConsolePath implement vmm.VM.
func (v *vm) ID() string          { return v.id }
func (v *vm) Pid() int            { return v.proc.Pid() }
func (v *vm) ConsolePath() string { return filepath.Join(v.dir, ConsoleLog) }

// DialAgent connects to the unix socket QEMU binds to the guest's
// virtio-serial port. QEMU accepts one connection at a time on it.
func (v *vm) DialAgent(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", v.agentSck)
}

// Status implements vmm.VM: QMP query-status, or Exited once the process
// is gone.
func (v *vm) Status(ctx context.Context) (vmm.State, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.status(ctx)
}

func (v *vm) status(ctx context.Context) (vmm.State, error) {
	if v.proc.Exited() {
		return vmm.Exited, nil
	}
	ret, err := qmp(ctx, v.qmpSock, "query-status", nil)
	if err != nil {
		if v.proc.Exited() {
			return vmm.Exited, nil
		}
		return "", fmt.Errorf("vm %s: %w", v.id, err)
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(ret, &st); err != nil {
		return "", fmt.Errorf("vm %s: query-status: %w", v.id, err)
	}
	switch st.Status {
	case "running":
		return vmm.Running, nil
	case "paused":
		return vmm.Paused, nil
	}
	return vmm.State(st.Status), nil
}

// Pause and Resume implement vmm.VM with QMP stop and cont.
func (v *vm) Pause(ctx context.Context) error  { return v.control(ctx, "stop") }
func (v *vm) Resume(ctx context.Context) error { return v.control(ctx, "cont") }

func (v *vm) control(ctx context.Context, command string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc.Exited() {
		return fmt.Errorf("vm %s: %s: %w", v.id, command, vmm.ErrNotRunning)
	}
	if _, err := qmp(ctx, v.qmpSock, command, nil); err != nil {
		return fmt.Errorf("vm %s: %w", v.id, err)
	}
	return nil
}

// Stop implements vmm.VM: QMP quit, then SIGKILL through the pidfd if QEMU
// has not exited within the stop timeout.
func (v *vm) Stop(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.proc.Exited() {
		qctx, cancel := context.WithTimeout(ctx, v.stopTimeout)
		_, qerr := qmp(qctx, v.qmpSock, "quit", nil)
		if qerr == nil || v.proc.Exited() {
			qerr = v.proc.Wait(qctx)
		}
		cancel()
		if qerr != nil {
			if err := v.proc.Kill(); err != nil {
				return fmt.Errorf("stop vm %s: kill qemu %d: %w", v.id, v.proc.Pid(), err)
			}
			kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.stopTimeout)
			defer cancel()
			if err := v.proc.Wait(kctx); err != nil {
				return fmt.Errorf("stop vm %s: qemu %d survived SIGKILL: %w", v.id, v.proc.Pid(), err)
			}
		}
	}
	v.removeFiles()
	return nil
}

// Wait implements vmm.VM by waiting on the pidfd, which works for a QEMU
// that is not our child.
func (v *vm) Wait(ctx context.Context) error { return v.proc.Wait(ctx) }

// removeFiles deletes what a QEMU leaves in the VM directory; the console
// log stays for the record.
func (v *vm) removeFiles() {
	for _, p := range []string{v.pidfile, v.qmpSock, v.agentSck} {
		os.Remove(p)
	}
}

// cleanupFailedStart kills a QEMU a failed start may have left running and
// removes its files.
func (v *vm) cleanupFailedStart() {
	if pid, err := vmmproc.ReadPidfile(v.pidfile); err == nil {
		if p, err := openProcess(pid, v.pidfile); err == nil {
			p.Kill()
			ctx, cancel := context.WithTimeout(context.Background(), v.stopTimeout)
			p.Wait(ctx)
			cancel()
			p.Close()
		}
	}
	v.removeFiles()
}
