// Package firecracker is the production VMM driver: each VM runs in its
// own Firecracker, confined by Firecracker's jailer, and is configured
// through Firecracker's REST API with the package's own small client.
//
// The node runs unprivileged, so every step that needs root goes through
// the setuid helper (Jail): the driver removes any stale jail, has the
// helper prepare the chroot with the VM's kernel, initramfs and disks,
// starts the helper's jailer op (which execs the jailer, which execs
// Firecracker: one pid throughout, the driver's child in its own session),
// has the API socket handed over, configures and starts the VM, and has
// the vsock socket handed over so the node can reach the guest agent.
//
// The VM's directory holds the pidfile and the console log (Firecracker's
// stdout and stderr, which carry the guest's serial console), which is all
// Attach needs after the daemon restarts.
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hypervm/hyper/internal/helper"
	"github.com/hypervm/hyper/internal/suid"
	"github.com/hypervm/hyper/internal/units"
	"github.com/hypervm/hyper/internal/vmm"
	"github.com/hypervm/hyper/internal/vmm/vmmproc"
)

// Jail is what the driver needs from the setuid helper; *helper.Client
// implements it. Every method names the VM by id only: the helper derives
// each path from its trusted config.
type Jail interface {
	// RemoveJail deletes the VM's jail; a missing jail is not an error.
	RemoveJail(ctx context.Context, vm string) error
	// PrepareJail builds the VM's chroot holding vmlinux, initrd.img,
	// base.ext4 and disk.ext4.
	PrepareJail(ctx context.Context, j helper.Jail) (map[string]string, error)
	// JailerCommand is the command that becomes the VM's jailer (and then
	// its Firecracker) in place, same pid.
	JailerCommand(ctx context.Context, vm string, uid, gid uint32, netns string) (*exec.Cmd, error)
	// GrantAPI and GrantVsock hand the jail's API and vsock sockets to
	// the caller; false while the socket does not exist yet.
	GrantAPI(ctx context.Context, vm string) (granted bool, err error)
	GrantVsock(ctx context.Context, vm string) (granted bool, err error)
	// KillCgroup kills every process in the VM's cgroup: the only way an
	// unprivileged node can kill a Firecracker running as the jail user.
	KillCgroup(ctx context.Context, vm string) (int, error)
}

var _ Jail = (*helper.Client)(nil)

// Files in the VM's directory.
const (
	PidFile    = "firecracker.pid"
	ConsoleLog = "console.log"
)

// In-jail paths the driver configures Firecracker with; the helper places
// the files under these names (suid.Jail*).
const (
	jailKernel = "/" + suid.JailKernel
	jailInitrd = "/" + suid.JailInitrd
	jailBase   = "/" + suid.JailBaseDisk
	jailConfig = "/" + suid.JailConfig
	jailDisk   = "/" + suid.JailDisk
	jailVsock  = "/" + suid.JailVsockSocket
	jailAPI    = "/" + suid.JailAPISocket
)

// Drive ids, in the order the guest sees the disks (guestcfg.BaseDevice,
// WritableDevice, ConfigDevice): Firecracker attaches non-root drives in
// the order they were configured.
const (
	DriveBase   = "base"
	DriveDisk   = "disk"
	DriveConfig = "config"
)

// GuestCID is the guest's vsock context id; every VM has its own vsock
// device, so all can use the lowest guest CID.
const GuestCID = 3

// DefaultCmdline starts the guest kernel command line. reboot=k and
// panic=1 turn a guest panic or reboot into a Firecracker exit the node
// sees; pci=off because Firecracker has no PCI bus.
const DefaultCmdline = "console=ttyS0 reboot=k panic=1 pci=off quiet"

// Options configure the driver.
type Options struct {
	// Jail is the helper client.
	Jail Jail
	// JailsDir is the jailer's chroot base (config.JailsDir()); the VM's
	// chroot is <JailsDir>/firecracker/<id>/root.
	JailsDir string
	// Owner returns the uid and gid the node claimed for VM id; the VM's
	// Firecracker runs as them.
	Owner func(id string) (uid, gid uint32, err error)
	// Kernel is the optional kernel file name under kernel.dir the helper
	// places in the jail; empty for the config's default.
	Kernel string
	// InitramfsDir is <kernel.dir>/initramfs, the only place the helper
	// takes a VM's initramfs from.
	InitramfsDir string
	// APITimeout bounds the wait for the API socket; default 10 s.
	APITimeout time.Duration
	// VsockTimeout bounds the wait for the vsock socket after
	// InstanceStart; default 5 s.
	VsockTimeout time.Duration
	// StopTimeout bounds the wait for a killed Firecracker; default 5 s.
	StopTimeout time.Duration
}

// Driver starts Firecracker microVMs. It is safe for concurrent use.
type Driver struct {
	opts Options
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver.
func New(opts Options) (*Driver, error) {
	switch {
	case opts.Jail == nil:
		return nil, errors.New("firecracker driver: no helper (Options.Jail)")
	case !filepath.IsAbs(opts.JailsDir):
		return nil, fmt.Errorf("firecracker driver: jails dir must be an absolute path (got %q)", opts.JailsDir)
	case opts.Owner == nil:
		return nil, errors.New("firecracker driver: no uid source (Options.Owner)")
	case !filepath.IsAbs(opts.InitramfsDir):
		return nil, fmt.Errorf("firecracker driver: initramfs dir must be an absolute path (got %q)", opts.InitramfsDir)
	}
	if opts.APITimeout == 0 {
		opts.APITimeout = 10 * time.Second
	}
	if opts.VsockTimeout == 0 {
		opts.VsockTimeout = 5 * time.Second
	}
	if opts.StopTimeout == 0 {
		opts.StopTimeout = 5 * time.Second
	}
	return &Driver{opts: opts}, nil
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "firecracker" }

// JailRoot is the chroot of VM id.
func (d *Driver) JailRoot(id string) string {
	return filepath.Join(d.opts.JailsDir, "firecracker", id, "root")
}

// maxSocketPath is the size of sockaddr_un's path: the node connects to
// the jail's sockets by their host paths.
const maxSocketPath = 108

// probeInterval is how often Start polls for a socket.
const probeInterval = 20 * time.Millisecond

// Start implements vmm.Driver. The VM's cgroup must exist: the node
// creates it with the instance type's limits in the cgroup the helper
// delegated to it (internal/cgroup), and
// the helper's jailer op starts the jailer inside it, so Firecracker and
// everything it starts are confined and killable as one.
func (d *Driver) Start(ctx context.Context, c vmm.Config) (vmm.VM, error) {
	image, err := d.check(c)
	if err != nil {
		return nil, err
	}
	uid, gid, err := d.opts.Owner(c.ID)
	if err != nil {
		return nil, fmt.Errorf("start vm %s: jail user: %w", c.ID, err)
	}
	v := d.newVM(c.ID, c.Dir)
	if pid, err := vmmproc.ReadPidfile(v.pidfile); err == nil {
		if p, err := attachProcess(pid, c.ID); err == nil {
			p.Close()
			return nil, fmt.Errorf("start vm %s: a firecracker (pid %d) already runs for %s", c.ID, pid, c.Dir)
		}
	}
	os.Remove(v.pidfile)

	// The jailer refuses nothing about an old chroot but would reuse it;
	// a fresh jail guarantees no file of a previous incarnation remains.
	if err := d.opts.Jail.RemoveJail(ctx, c.ID); err != nil {
		return nil, fmt.Errorf("start vm %s: remove stale jail: %w", c.ID, err)
	}
	if _, err := d.opts.Jail.PrepareJail(ctx, helper.Jail{VM: c.ID, UID: uid, GID: gid, Image: image, Kernel: d.opts.Kernel, Initrd: filepath.Base(c.Initrd)}); err != nil {
		return nil, fmt.Errorf("start vm %s: prepare jail: %w", c.ID, err)
	}
	if err := v.launch(ctx, d.opts.Jail, uid, gid); err != nil {
		d.cleanup(ctx, v)
		return nil, fmt.Errorf("start vm %s: launch jailer: %w", c.ID, err)
	}
	if err := d.boot(ctx, v, c); err != nil {
		d.cleanup(ctx, v)
		return nil, fmt.Errorf("start vm %s: %w", c.ID, err)
	}
	return v, nil
}

// check validates c for this driver and returns the image id of its base
// disk. The helper places the VM's files from fixed places (the image
// store and the VM's directory), so c must name exactly those.
func (d *Driver) check(c vmm.Config) (image string, err error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("vm config: %s: %s", field, fmt.Sprintf(format, args...))
	}
	if !suid.ValidVMID(c.ID) {
		return "", bad("ID", "the helper takes only ids of v and 16 of [a-z2-7] (got %q)", c.ID)
	}
	if p := filepath.Join(d.JailRoot(c.ID), jailVsock); len(p) >= maxSocketPath {
		return "", bad("ID", "the jail's socket path %s is too long for a unix socket: shorten work_dir", p)
	}
	if c.Kernel.Vmlinux == "" {
		return "", bad("Kernel", "firecracker boots the ELF vmlinux and the kernel has none")
	}
	if filepath.Dir(filepath.Clean(c.Initrd)) != filepath.Clean(d.opts.InitramfsDir) {
		return "", bad("Initrd", "must be in %s, where the helper takes it from (got %q)", d.opts.InitramfsDir, c.Initrd)
	}
	if want := filepath.Join(c.Dir, suid.JailConfig); filepath.Clean(c.ConfigDisk) != want {
		return "", bad("ConfigDisk", "must be %s, where the helper takes it from (got %q)", want, c.ConfigDisk)
	}
	if want := filepath.Join(c.Dir, suid.JailDisk); filepath.Clean(c.WritableDisk) != want {
		return "", bad("WritableDisk", "must be %s, where the helper takes it from (got %q)", want, c.WritableDisk)
	}
	image, ok := strings.CutSuffix(filepath.Base(c.BaseDisk), ".ext4")
	if !ok || len(image) != 64 || strings.Trim(image, "0123456789abcdef") != "" {
		return "", bad("BaseDisk", "must be an image store file <images>/<64 hex>.ext4 (got %q)", c.BaseDisk)
	}
	return image, nil
}

// boot waits for the API, configures the VM, starts it and waits for the
// vsock socket.
func (d *Driver) boot(ctx context.Context, v *vm, c vmm.Config) error {
	if err := d.waitAPI(ctx, v); err != nil {
		return err
	}
	cmdline := DefaultCmdline
	if c.BootArgs != "" {
		cmdline += " " + c.BootArgs
	}
	limiter := bandwidthLimiter(int64(c.DiskBandwidth))
	steps := []struct {
		what string
		do   func() error
	}{
		{"machine config", func() error {
			return v.api.PutMachineConfig(ctx, MachineConfig{VCPUCount: c.VCPUs, MemSizeMiB: int64(c.Memory / units.MiB)})
		}},
		{"boot source", func() error {
			return v.api.PutBootSource(ctx, BootSource{KernelImagePath: jailKernel, InitrdPath: jailInitrd, BootArgs: cmdline})
		}},
		{"base drive", func() error {
			return v.api.PutDrive(ctx, Drive{DriveID: DriveBase, PathOnHost: jailBase, IsReadOnly: true, RateLimiter: limiter})
		}},
		{"writable drive", func() error {
			return v.api.PutDrive(ctx, Drive{DriveID: DriveDisk, PathOnHost: jailDisk, RateLimiter: limiter})
		}},
		{"config drive", func() error {
			return v.api.PutDrive(ctx, Drive{DriveID: DriveConfig, PathOnHost: jailConfig, IsReadOnly: true})
		}},
		{"vsock", func() error {
			return v.api.PutVsock(ctx, Vsock{GuestCID: GuestCID, UDSPath: jailVsock})
		}},
		{"instance start", func() error { return v.api.Action(ctx, ActionInstanceStart) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("configure %s: %w%s", s.what, err, v.exitNote())
		}
	}
	return d.waitGrant(ctx, v, "vsock socket", d.opts.VsockTimeout, d.opts.Jail.GrantVsock, nil)
}

// waitAPI waits until the helper has handed the API socket over and
// Firecracker answers on it.
func (d *Driver) waitAPI(ctx context.Context, v *vm) error {
	return d.waitGrant(ctx, v, "api socket", d.opts.APITimeout, d.opts.Jail.GrantAPI, func(ctx context.Context) error {
		_, err := v.api.Describe(ctx)
		return err
	})
}

// waitGrant retries grant while it is pending, then probe (if any) until
// it succeeds, within timeout. It gives up early when Firecracker exits,
// and always reports the last reason it kept waiting (L-24).
func (d *Driver) waitGrant(ctx context.Context, v *vm, what string, timeout time.Duration,
	grant func(context.Context, string) (bool, error), probe func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	granted := false
	last := errors.New("not tried")
	for {
		if !granted {
			ok, err := grant(ctx, v.id)
			switch {
			case err != nil:
				last = fmt.Errorf("grant: %w", err)
			case !ok:
				last = errors.New("socket not created yet")
			default:
				granted = true
			}
		}
		if granted {
			if probe == nil {
				return nil
			}
			if last = probe(ctx); last == nil {
				return nil
			}
		}
		if v.proc.Exited() {
			return fmt.Errorf("wait for %s: firecracker exited%s (last: %w)", what, v.exitNote(), last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w (last: %w)", what, ctx.Err(), last)
		case <-time.After(probeInterval):
		}
	}
}

// cleanup undoes a failed Start: Firecracker killed and reaped, its jail
// and pidfile removed.
func (d *Driver) cleanup(ctx context.Context, v *vm) {
	ctx = context.WithoutCancel(ctx)
	if v.proc != nil {
		v.kill(ctx)
	}
	d.opts.Jail.RemoveJail(ctx, v.id)
	os.Remove(v.pidfile)
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
	if v.proc, err = attachProcess(pid, id); err != nil {
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

// launch starts the helper's jailer op with Firecracker's output going to
// the console log, in its own session so that it outlives the daemon and
// no terminal signal reaches it, and records its pid.
func (v *vm) launch(ctx context.Context, jail Jail, uid, gid uint32) error {
	// The command must outlive Start's context: the VM runs until Stop.
	cmd, err := jail.JailerCommand(context.WithoutCancel(ctx), v.id, uid, gid, "")
	if err != nil {
		return err
	}
	console, err := os.OpenFile(v.ConsolePath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	defer console.Close()
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = console, console
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setsid = true
	if err := cmd.Start(); err != nil {
		return err
	}
	v.reaped = make(chan struct{})
	go func() {
		// The driver's child must be reaped; the exit status is the
		// jailer's or Firecracker's.
		v.exitErr = cmd.Wait()
		close(v.reaped)
	}()
	p, err := vmmproc.Open(cmd.Process.Pid)
	if err != nil {
		cmd.Process.Kill()
		<-v.reaped
		return err
	}
	v.proc = p
	if err := vmmproc.WritePidfile(v.pidfile, p.Pid()); err != nil {
		return fmt.Errorf("write pidfile: %w", err)
	}
	return nil
}

// exitNote describes how Firecracker ended, with the console's last
// lines, or "" while it runs.
func (v *vm) exitNote() string {
	if v.proc == nil || !v.proc.Exited() {
		return ""
	}
	status := "exited"
	if v.reaped != nil {
		select {
		case <-v.reaped:
			if v.exitErr != nil {
				status = v.exitErr.Error()
			} else {
				status = "exit status 0"
			}
		case <-time.After(time.Second):
		}
	}
	return fmt.Sprintf(" (firecracker %s; console: %s)", status, tail(v.ConsolePath(), 5))
}

// tail returns the last n lines of the file at path, joined with " | ".
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	const window = 4096
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	off := max(st.Size()-window, 0)
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimSpace(string(buf)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
