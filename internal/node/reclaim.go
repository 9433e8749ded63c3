package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hypervm/hyper/internal/instance"
	"github.com/hypervm/hyper/internal/store"
	"github.com/hypervm/hyper/internal/vmm"
)

// ReapInterval is how often the reaper looks for leftovers. It is not
// configurable: only its two-pass rule makes it safe, not its period.
const ReapInterval = 60 * time.Second

// Run starts the manager: it re-adopts the VMs the store says run on this
// node, reclaims every resource no VM owns, then reaps leftovers every
// ReapInterval until ctx ends. VMs keep running when it returns. Call it
// before serving: Create and Stop rely on the reclaim having run.
func (m *Manager) Run(ctx context.Context, ready func()) error {
	m.mu.Lock()
	m.life = ctx
	m.mu.Unlock()
	if err := m.readopt(ctx); err != nil {
		return fmt.Errorf("re-adopt vms: %w", err)
	}
	if err := m.finishLayers(ctx); err != nil {
		m.log.Warn("layers left half made", "op", "reclaim", "error", err)
	}
	if _, err := m.sweep(ctx, nil, true); err != nil {
		m.log.Warn("reclaim incomplete", "op", "reclaim", "error", err)
	}
	if ready != nil {
		ready()
	}
	t := time.NewTicker(ReapInterval)
	defer t.Stop()
	expiry := time.NewTicker(m.o.ExpiryInterval)
	defer expiry.Stop()
	var previous map[string]bool
	for {
		select {
		case <-ctx.Done():
			m.wg.Wait()
			m.closeAgents()
			return nil
		case now := <-expiry.C:
			m.expire(ctx, now)
		case <-t.C:
			next, err := m.sweep(ctx, previous, false)
			if err != nil {
				m.log.Warn("reaper pass incomplete", "op", "reap", "error", err)
			}
			previous = next
		}
	}
}

// expire stops the VMs whose TTL has run out.
func (m *Manager) expire(ctx context.Context, now time.Time) {
	rows, err := m.nodeVMs(ctx)
	if err != nil {
		m.log.Warn("list vms for expiry", "op", "expire", "error", err)
		return
	}
	for _, row := range rows {
		if row.ExpiresAt == nil || now.Before(*row.ExpiresAt) || row.State != StateRunning {
			continue
		}
		m.log.Info("ttl expired; stopping vm", "vm_id", row.ID, "op", "expire", "expires_at", *row.ExpiresAt)
		if _, err := m.Stop(ctx, row.ID, 5*time.Second); err != nil {
			m.log.Warn("stop expired vm", "vm_id", row.ID, "op", "expire", "error", err)
		}
	}
}

func (m *Manager) closeAgents() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mc := range m.vms {
		mc.mu.Lock()
		if mc.agent != nil {
			mc.agent.Close()
			mc.agent = nil
		}
		mc.mu.Unlock()
	}
}

// readopt takes over the VMs a previous daemon on this node left: a VM
// whose VMM is alive is supervised again (and its agent reconnected); one
// whose VMM is gone is Lost and its resources freed; one caught mid-create
// by the daemon's death is Failed and freed, since its creator got an error.
func (m *Manager) readopt(ctx context.Context) error {
	rows, err := m.nodeVMs(ctx)
	if err != nil {
		return err
	}
	for _, row := range rows {
		log := m.log.With("vm_id", row.ID, "op", "readopt")
		typ, terr := instance.Lookup(row.InstanceType)
		if terr != nil {
			// A row this version cannot read: never guess its resources.
			log.Error("unknown instance type; leaving the vm alone", "type", row.InstanceType)
			continue
		}
		if err := m.o.Budget.Reserve(row.ID, m.reservation(typ)); err != nil {
			log.Warn("budget for re-adopted vm", "error", err)
		}
		vm, err := m.o.Driver.Attach(ctx, row.ID, m.cfg.VMDir(row.ID))
		switch {
		case err == nil && (row.State == StateRunning || row.State == StateCrashed):
			mc := &machine{id: row.ID, uid: row.UID, vm: vm, spec: m.spec(row, typ), stopped: make(chan struct{})}
			if cerr := m.connect(ctx, mc, 30*time.Second); cerr != nil {
				log.Warn("re-adopted vm's agent does not answer; the supervisor will restart it if its vmm dies", "error", cerr)
			}
			if _, uerr := m.o.Store.UpdateVMState(ctx, row.ID, nil, StateRunning, ""); uerr != nil {
				log.Warn("record running", "error", uerr)
			}
			m.adopt(mc, StateRunning)
			log.Info("re-adopted running vm", "pid", vm.Pid())
		case err == nil:
			_ = vm.Stop(ctx)
			m.release(ctx, row.ID, row.UID)
			m.record(ctx, row.ID, StateFailed, fmt.Sprintf("hyperd restarted while the vm was %s", row.State))
		case errors.Is(err, vmm.ErrNotRunning):
			m.release(ctx, row.ID, row.UID)
			if row.State == StateRunning || row.State == StateCrashed {
				m.record(ctx, row.ID, StateLost, "the vmm exited while hyperd was down")
			} else {
				m.record(ctx, row.ID, StateFailed, fmt.Sprintf("hyperd restarted while the vm was %s", row.State))
			}
		default:
			log.Error("attach to vmm", "error", err)
			m.release(ctx, row.ID, row.UID)
			m.record(ctx, row.ID, StateLost, "re-attach failed: "+err.Error())
		}
	}
	return nil
}

func (m *Manager) record(ctx context.Context, id, state, reason string) {
	if _, err := m.o.Store.UpdateVMState(ctx, id, nil, state, reason); err != nil {
		m.log.Warn("record state", "vm_id", id, "state", state, "error", err)
	}
	m.log.Warn("vm "+state, "vm_id", id, "reason", reason)
}

// nodeVMs lists this node's VMs that hold resources.
func (m *Manager) nodeVMs(ctx context.Context) ([]store.VM, error) {
	var out []store.VM
	f := store.VMFilter{Node: m.o.Node, PageSize: store.MaxPageSize}
	for {
		page, next, err := m.o.Store.ListVMs(ctx, f)
		if err != nil {
			return nil, err
		}
		for _, vm := range page {
			if isLive(vm.State) {
				out = append(out, vm)
			}
		}
		if next == "" {
			return out, nil
		}
		f.PageToken = next
	}
}

// sweep finds VM resources no live VM owns (cgroups, VM directories,
// jails, uid claims) and frees them. At start (immediate) everything found
// is freed: nothing can be mid-create before the node serves. Later passes
// free only what was also orphaned on the previous pass (see reapPlan).
func (m *Manager) sweep(ctx context.Context, previous map[string]bool, immediate bool) (map[string]bool, error) {
	live := map[string]bool{}
	m.mu.Lock()
	for id := range m.vms {
		live[id] = true
	}
	m.mu.Unlock()
	rows, err := m.nodeVMs(ctx)
	if err != nil {
		return previous, err
	}
	for _, r := range rows {
		// A row still being created has resources before a supervisor.
		live[r.ID] = true
	}
	var errs []error
	var found []string
	cgroups, err := m.o.Helper.ListCgroups(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("list cgroups: %w", err))
	}
	found = append(found, cgroups...)
	found = append(found, dirNames(m.cfg.VMsDir())...)
	if m.usesJail {
		found = append(found, dirNames(filepath.Join(m.cfg.JailsDir(), "firecracker"))...)
	}
	claims, err := m.o.Store.ListUIDClaims(ctx, m.o.Node)
	if err != nil {
		errs = append(errs, fmt.Errorf("list uid claims: %w", err))
	}
	uidOf := map[string]uint32{}
	for uid, vm := range claims {
		uidOf[vm] = uid
		found = append(found, vm)
	}
	if immediate {
		previous = map[string]bool{}
		for _, id := range found {
			previous[id] = true
		}
	}
	reap, next := reapPlan(found, live, previous)
	for _, id := range reap {
		m.log.Warn("reaping orphan vm resources", "vm_id", id, "op", "reap")
		// A VMM a dead daemon started may still run from the directory.
		if vm, err := m.o.Driver.Attach(ctx, id, m.cfg.VMDir(id)); err == nil {
			_ = vm.Stop(ctx)
		}
		m.release(ctx, id, uidOf[id])
	}
	return next, errors.Join(errs...)
}

func dirNames(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}
