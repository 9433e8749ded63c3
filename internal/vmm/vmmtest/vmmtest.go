// Package vmmtest is an in-memory vmm.Driver for the node supervisor's
// tests and benchmarks: its VMs run the moment they start, cost nothing,
// and can be made to crash.
package vmmtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"sync"

	"github.com/hypervm/hyper/internal/vmm"
)

// Driver is a fake vmm.Driver. The zero value is ready to use.
type Driver struct {
	// Agent, when set, opens a VM's agent stream; nil makes DialAgent fail.
	Agent func(ctx context.Context, id string) (net.Conn, error)
	// StartErr, when set, fails every Start.
	StartErr error

	mu      sync.Mutex
	vms     map[string]*VM // running VMs by directory
	nextPid int
}

var _ vmm.Driver = (*Driver)(nil)

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "test" }

// Start implements vmm.Driver: the config is validated as a real driver
// would, then the VM runs.
func (d *Driver) Start(ctx context.Context, c vmm.Config) (vmm.VM, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if d.StartErr != nil {
		return nil, fmt.Errorf("start vm %s: %w", c.ID, d.StartErr)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.vms == nil {
		d.vms = map[string]*VM{}
	}
	if v, ok := d.vms[c.Dir]; ok {
		return nil, fmt.Errorf("start vm %s: vm %s already runs in %s", c.ID, v.id, c.Dir)
	}
	d.nextPid++
	v := &VM{d: d, id: c.ID, dir: c.Dir, pid: 100000 + d.nextPid, state: vmm.Running, done: make(chan struct{})}
	d.vms[c.Dir] = v
	return v, nil
}

// Attach implements vmm.Driver: it finds a VM still running in dir.
func (d *Driver) Attach(ctx context.Context, id, dir string) (vmm.VM, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vms[dir]
	if !ok || v.id != id {
		return nil, fmt.Errorf("attach vm %s: %w", id, vmm.ErrNotRunning)
	}
	return v, nil
}

// Crash makes the VM with id exit as if its VMM died. It reports whether
// such a VM was running.
func (d *Driver) Crash(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, v := range d.vms {
		if v.id == id {
			d.exitLocked(v)
			return true
		}
	}
	return false
}

// Running lists the ids of the running VMs, sorted.
func (d *Driver) Running() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ids []string
	for _, v := range d.vms {
		ids = append(ids, v.id)
	}
	sort.Strings(ids)
	return ids
}

func (d *Driver) exitLocked(v *VM) {
	if v.state == vmm.Exited {
		return
	}
	v.state = vmm.Exited
	close(v.done)
	delete(d.vms, v.dir)
}

// VM is a fake running VM.
type VM struct {
	d       *Driver
	id, dir string
	pid     int
	state   vmm.State // guarded by d.mu
	done    chan struct{}
}

var _ vmm.VM = (*VM)(nil)

// ID, Pid and ConsolePath implement vmm.VM; the pid is made up and the
// console log is never written.
func (v *VM) ID() string          { return v.id }
func (v *VM) Pid() int            { return v.pid }
func (v *VM) ConsolePath() string { return filepath.Join(v.dir, "console.log") }

// DialAgent calls the driver's Agent function.
func (v *VM) DialAgent(ctx context.Context) (net.Conn, error) {
	if v.d.Agent == nil {
		return nil, errors.New("vmmtest: no agent")
	}
	return v.d.Agent(ctx, v.id)
}

// Status implements vmm.VM.
func (v *VM) Status(ctx context.Context) (vmm.State, error) {
	v.d.mu.Lock()
	defer v.d.mu.Unlock()
	return v.state, nil
}

// Pause and Resume implement vmm.VM.
func (v *VM) Pause(ctx context.Context) error  { return v.set(vmm.Paused) }
func (v *VM) Resume(ctx context.Context) error { return v.set(vmm.Running) }

func (v *VM) set(s vmm.State) error {
	v.d.mu.Lock()
	defer v.d.mu.Unlock()
	if v.state == vmm.Exited {
		return fmt.Errorf("vm %s: %w", v.id, vmm.ErrNotRunning)
	}
	v.state = s
	return nil
}

// Stop implements vmm.VM.
func (v *VM) Stop(ctx context.Context) error {
	v.d.mu.Lock()
	defer v.d.mu.Unlock()
	v.d.exitLocked(v)
	return nil
}

// Wait implements vmm.VM.
func (v *VM) Wait(ctx context.Context) error {
	select {
	case <-v.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
