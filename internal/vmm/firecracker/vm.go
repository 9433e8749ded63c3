package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/guestcfg"
	"github.com/hypervm/hyper/internal/vmm"
	"github.com/hypervm/hyper/internal/vmm/vmmproc"
)

// vm is one Firecracker.
type vm struct {
	id, dir     string
	pidfile     string
	vsockPath   string // host path of the jail's vsock socket
	jail        Jail
	api         *Client
	stopTimeout time.Duration

	mu   sync.Mutex // serialises control operations
	proc *vmmproc.Process

	// reaped is closed once the driver's own child has been waited for
	// (nil after Attach: the process is not our child).
	reaped  chan struct{}
	exitErr error
}

var _ vmm.VM = (*vm)(nil)

func (d *Driver) newVM(id, dir string) *vm {
	root := d.JailRoot(id)
	return &vm{
		id: id, dir: dir, jail: d.opts.Jail, stopTimeout: d.opts.StopTimeout,
		pidfile:   filepath.Join(dir, PidFile),
		vsockPath: filepath.Join(root, jailVsock),
		api:       NewClient(filepath.Join(root, jailAPI)),
	}
}

func (v *vm) ID() string          { return v.id }
func (v *vm) Pid() int            { return v.proc.Pid() }
func (v *vm) ConsolePath() string { return filepath.Join(v.dir, ConsoleLog) }

// DialAgent connects to the jail's vsock socket and asks Firecracker for
// the agent's port. Until the agent listens, Firecracker closes the
// connection and the error wraps agent.ErrNotReady.
func (v *vm) DialAgent(ctx context.Context) (net.Conn, error) {
	return agent.DialFirecrackerVsock(v.vsockPath, guestcfg.AgentVsockPort)(ctx)
}

func (v *vm) Status(ctx context.Context) (vmm.State, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc.Exited() {
		return vmm.Exited, nil
	}
	info, err := v.api.Describe(ctx)
	if err != nil {
		if v.proc.Exited() {
			return vmm.Exited, nil
		}
		return "", fmt.Errorf("vm %s: %w", v.id, err)
	}
	switch info.State {
	case InstanceRunning:
		return vmm.Running, nil
	case InstancePaused:
		return vmm.Paused, nil
	}
	return vmm.State(info.State), nil
}

func (v *vm) Pause(ctx context.Context) error  { return v.patch(ctx, VMPaused) }
func (v *vm) Resume(ctx context.Context) error { return v.patch(ctx, VMResumed) }

func (v *vm) patch(ctx context.Context, state string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc.Exited() {
		return fmt.Errorf("vm %s: %s: %w", v.id, state, vmm.ErrNotRunning)
	}
	if err := v.api.PatchVM(ctx, state); err != nil {
		return fmt.Errorf("vm %s: %w", v.id, err)
	}
	return nil
}

// Stop kills Firecracker (the guest gets no warning, as the interface
// says; Firecracker has no state worth a graceful exit), waits for it,
// and removes its jail and pidfile.
func (v *vm) Stop(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.kill(ctx); err != nil {
		return fmt.Errorf("stop vm %s: %w", v.id, err)
	}
	if err := v.jail.RemoveJail(context.WithoutCancel(ctx), v.id); err != nil {
		return fmt.Errorf("stop vm %s: remove jail: %w", v.id, err)
	}
	os.Remove(v.pidfile)
	return nil
}

// kill ends the process and waits for it. Firecracker runs as the jail's
// user, which the unprivileged node may not signal: then the helper kills
// the VM's cgroup.
func (v *vm) kill(ctx context.Context) error {
	if !v.proc.Exited() {
		if err := v.proc.Kill(); err != nil {
			if !errors.Is(err, os.ErrPermission) {
				return fmt.Errorf("kill firecracker %d: %w", v.proc.Pid(), err)
			}
			if _, err := v.jail.KillCgroup(context.WithoutCancel(ctx), v.id); err != nil {
				return fmt.Errorf("kill firecracker %d through its cgroup: %w", v.proc.Pid(), err)
			}
		}
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.stopTimeout)
		defer cancel()
		if err := v.proc.Wait(wctx); err != nil {
			return fmt.Errorf("firecracker %d survived SIGKILL: %w", v.proc.Pid(), err)
		}
	}
	if v.reaped != nil {
		<-v.reaped
	}
	v.proc.Close()
	return nil
}

func (v *vm) Wait(ctx context.Context) error { return v.proc.Wait(ctx) }
