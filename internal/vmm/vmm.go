// Package vmm is the interface the node's VM supervisor drives a virtual
// machine monitor through. Two drivers implement it: vmm/firecracker (the
// production path) and vmm/qemu (QEMU's microvm machine, for hosts without
// Firecracker, every development machine and CI). Both boot the same guest
// kernel, initramfs and disks; vmmtest has a fake for the supervisor's
// tests.
//
// A driver owns the VMM process: it starts it in its own session, records
// its pid in the VM's directory, and can re-attach to it from that
// directory after the daemon restarts, so VMs outlive the daemon.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"

	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/units"
)

// Config describes the VM to boot.
type Config struct {
	// ID is the VM id. The driver names its process after it.
	ID string
	// Dir is the VM's directory (config.VMDir): the driver keeps the VMM's
	// pidfile, sockets and console log there. It must exist.
	Dir string
	// Kernel is the guest kernel; a driver picks the image format it boots.
	Kernel guest.Kernel
	// Initrd is the shared initramfs every VM boots (guest.Initramfs).
	Initrd string
	// ConfigDisk is the VM's config disk (guestcfg.WriteDisk), attached
	// read-only as the third disk (guestcfg.ConfigDevice).
	ConfigDisk string
	// BaseDisk is the image's ext4 rootfs, attached read-only as the first
	// disk (/dev/vda); WritableDisk is the VM's own disk (/dev/vdb).
	BaseDisk     string
	WritableDisk string
	// VCPUs and Memory size the guest.
	VCPUs  int
	Memory units.Size
	// DiskBandwidth limits each disk's throughput; 0 means no limit.
	DiskBandwidth units.Bandwidth
	// BootArgs are appended to the driver's kernel command line.
	BootArgs string
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// Validate checks c, naming the first bad field.
func (c *Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("vm config: %s: %s", field, fmt.Sprintf(format, args...))
	}
	switch {
	case !idPattern.MatchString(c.ID):
		return bad("ID", "must be 1-64 of [A-Za-z0-9_-], starting with a letter or digit (got %q)", c.ID)
	case !filepath.IsAbs(c.Dir):
		return bad("Dir", "must be an absolute path (got %q)", c.Dir)
	case c.Kernel.Vmlinuz == "" && c.Kernel.Vmlinux == "":
		return bad("Kernel", "no kernel image")
	case !filepath.IsAbs(c.Initrd):
		return bad("Initrd", "must be an absolute path (got %q)", c.Initrd)
	case !filepath.IsAbs(c.BaseDisk):
		return bad("BaseDisk", "must be an absolute path (got %q)", c.BaseDisk)
	case !filepath.IsAbs(c.WritableDisk):
		return bad("WritableDisk", "must be an absolute path (got %q)", c.WritableDisk)
	case !filepath.IsAbs(c.ConfigDisk):
		return bad("ConfigDisk", "must be an absolute path (got %q)", c.ConfigDisk)
	case c.VCPUs < 1 || c.VCPUs > 32:
		return bad("VCPUs", "must be 1-32 (got %d)", c.VCPUs)
	case c.Memory < 64*units.MiB || c.Memory%units.MiB != 0:
		return bad("Memory", "must be a whole number of MiB, at least 64 MiB (got %d bytes)", int64(c.Memory))
	case c.DiskBandwidth < 0:
		return bad("DiskBandwidth", "must not be negative")
	}
	return nil
}

// State is what the VMM reports about its guest.
type State string

const (
	// Running: the guest's vCPUs run.
	Running State = "running"
	// Paused: the guest is stopped by Pause and resumes with Resume.
	Paused State = "paused"
	// Exited: the VMM process is gone.
	Exited State = "exited"
)

// Driver starts VMMs and re-attaches to running ones.
type Driver interface {
	// Name is "qemu" or "firecracker".
	Name() string
	// Start boots a VM and returns once its VMM runs and answers its
	// control socket (not once the guest has booted: the caller waits for
	// the agent over VM.DialAgent). On error nothing is left running.
	Start(ctx context.Context, c Config) (VM, error)
	// Attach re-attaches to the VMM a previous daemon started for the VM
	// in dir. ErrNotRunning means it is gone; the caller cleans up.
	Attach(ctx context.Context, id, dir string) (VM, error)
}

// ErrNotRunning is returned by Attach when the VM's VMM is not running.
var ErrNotRunning = errors.New("vmm not running")

// VM is one running VMM. Methods are safe for concurrent use.
type VM interface {
	ID() string
	// Pid is the VMM's process id.
	Pid() int
	// DialAgent opens a byte stream to the guest agent's channel (a
	// virtio-serial port under QEMU, vsock port guestcfg.AgentVsockPort
	// under Firecracker, handshake included). It has the signature of
	// agent.DialFunc; before the agent listens it fails with an error the
	// agent client retries.
	DialAgent(ctx context.Context) (net.Conn, error)
	// Status asks the VMM for the guest's state; Exited once it is gone.
	Status(ctx context.Context) (State, error)
	// Pause stops the guest's vCPUs; Resume restarts them.
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// Stop ends the VMM: it asks it to quit, kills it if it has not within
	// a few seconds, and removes its sockets and pidfile. The guest gets no
	// warning: ask the agent to shut down first for a clean stop. Stopping
	// a VM that has exited is a no-op.
	Stop(ctx context.Context) error
	// Wait blocks until the VMM exits or ctx is done.
	Wait(ctx context.Context) error
	// ConsolePath is the guest's serial console log.
	ConsolePath() string
}
