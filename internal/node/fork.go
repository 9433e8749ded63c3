package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/disk"
	"github.com/hypervm/hyper/internal/ids"
	"github.com/hypervm/hyper/internal/instance"
	"github.com/hypervm/hyper/internal/store"
	"github.com/hypervm/hyper/internal/vmm"
)

// Cloner clones disks: a reflink where the filesystem allows it, a sparse
// copy otherwise (disk.Cloner). dst must not exist. Clone's dst appears
// complete and synced or not at all (for layers); CloneScratch's is
// unsynced, for a VM's own writable disk, which a host crash ends anyway.
type Cloner interface {
	Clone(ctx context.Context, src, dst string) (disk.Method, error)
	CloneScratch(ctx context.Context, src, dst string) (disk.Method, error)
}

// ParentLabel is the label a forked VM carries with its parent's id: the
// store has no column for it.
const ParentLabel = "hyper.parent"

// MaxForkCount is the most children one fork makes; their boots run
// concurrently.
const MaxForkCount = 64

const (
	// agentTimeout bounds the guest agent's Sync and Freeze; a parent whose
	// agent takes longer has its VMM paused instead.
	agentTimeout = 10 * time.Second
	// resumeTimeout bounds the thaw or resume after the clone.
	resumeTimeout = 10 * time.Second
)

// freezeLease is how long a guest stays frozen without hearing from the
// host; the host renews it every renewEvery while the clone runs, so a
// host that vanishes mid-fork leaves its parent frozen for at most this
// long. Variables for the tests.
var (
	freezeLease = 15 * time.Second
	renewEvery  = freezeLease / 3
)

// Fork boots count children of the Running VM parentID, each on the
// parent's image plus a copy-on-write clone of the parent's writable disk
// as it was at the fork. Memory is not forked. The parent is frozen only
// while its disk is cloned, once: for one child straight into the child's
// disk, for more into a new layer (recorded in the store) that each child
// then clones. It is all or nothing: the budget of every child is reserved
// before anything is made (ErrNoBudget otherwise), and if one child fails
// to boot the others are stopped.
func (m *Manager) Fork(ctx context.Context, parentID string, count int, labels map[string]string) ([]store.VM, error) {
	if count < 1 || count > MaxForkCount {
		return nil, fmt.Errorf("%w: count: must be 1-%d (got %d)", ErrInvalid, MaxForkCount, count)
	}
	parent, mc, err := m.running(ctx, parentID)
	if err != nil {
		return nil, fmt.Errorf("fork vm %s: %w", parentID, err)
	}
	log := m.log.With("vm_id", parentID, "op", "fork")
	req := CreateRequest{
		ImageID: parent.ImageID, InstanceType: parent.InstanceType, Arch: parent.Arch,
		BootArgs: parent.BootArgs, Labels: labels, ParentID: parentID,
	}
	typ, image, err := m.validate(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("fork vm %s: %w", parentID, err)
	}
	kids := make([]string, count)
	for i := range kids {
		kids[i] = ids.NewVM()
		if err := m.o.Budget.Reserve(kids[i], m.reservation(typ)); err != nil {
			for _, id := range kids[:i] {
				m.o.Budget.Release(id)
			}
			return nil, fmt.Errorf("fork vm %s into %d: %w", parentID, count, err)
		}
	}

	if count == 1 {
		// The child's disk descends from the parent's layer, if any.
		req.LayerID = parent.LayerID
		vm, err := m.create(ctx, kids[0], req, typ, image, func(ctx context.Context, path string) error {
			return m.cloneQuiesced(ctx, mc, path, log)
		})
		if err != nil {
			return nil, fmt.Errorf("fork vm %s: %w", parentID, err)
		}
		return []store.VM{vm}, nil
	}

	layer, err := m.snapshot(ctx, parent, mc, "fork of "+parentID, log)
	if err != nil {
		for _, id := range kids {
			m.o.Budget.Release(id)
		}
		return nil, fmt.Errorf("fork vm %s: %w", parentID, err)
	}
	req.LayerID = layer.ID
	children := make([]store.VM, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i, id := range kids {
		wg.Go(func() {
			children[i], errs[i] = m.create(ctx, id, req, typ, image, m.cloneOf(m.layerPath(layer.ID)))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		m.unfork(context.WithoutCancel(ctx), children, layer.ID, log)
		return nil, fmt.Errorf("fork vm %s: %w", parentID, err)
	}
	return children, nil
}

// unfork undoes the children of a fork that failed and, when nothing uses
// it any more, the layer they were cloned from.
func (m *Manager) unfork(ctx context.Context, children []store.VM, layerID string, log *slog.Logger) {
	for _, vm := range children {
		if vm.ID == "" {
			continue // failed: create undid it
		}
		if _, err := m.Stop(ctx, vm.ID, 0); err != nil {
			log.Warn("stop the child of a failed fork", "child", vm.ID, "error", err)
		}
	}
	if err := m.DeleteLayer(ctx, layerID); err != nil {
		log.Warn("keep the layer of a failed fork", "layer", layerID, "error", err)
	}
}

// Snapshot freezes the disk state of the Running VM vmID into a new layer
// with label, which VMs can then be created from.
func (m *Manager) Snapshot(ctx context.Context, vmID, label string) (store.Layer, error) {
	vm, mc, err := m.running(ctx, vmID)
	if err != nil {
		return store.Layer{}, fmt.Errorf("snapshot vm %s: %w", vmID, err)
	}
	l, err := m.snapshot(ctx, vm, mc, label, m.log.With("vm_id", vmID, "op", "snapshot"))
	if err != nil {
		return store.Layer{}, fmt.Errorf("snapshot vm %s: %w", vmID, err)
	}
	return l, nil
}

// snapshot clones vm's writable disk, quiesced, into a new layer file and
// records the layer. The file is read-only: a layer never changes.
func (m *Manager) snapshot(ctx context.Context, vm store.VM, mc *machine, label string, log *slog.Logger) (store.Layer, error) {
	id := ids.NewLayer()
	dir := m.partialLayersDir()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return store.Layer{}, fmt.Errorf("layer %s: %w", id, err)
	}
	partial := filepath.Join(dir, id+layerExt)
	if err := m.cloneQuiesced(ctx, mc, partial, log.With("layer", id)); err != nil {
		return store.Layer{}, fmt.Errorf("layer %s: %w", id, err)
	}
	l, err := m.recordLayer(ctx, store.Layer{ID: id, ParentID: vm.LayerID, ImageID: vm.ImageID, Node: m.o.Node, Label: label}, partial)
	if err != nil {
		if rerr := disk.Remove(partial); rerr != nil {
			log.Warn("remove unrecorded layer", "layer", id, "error", rerr)
		}
		return store.Layer{}, fmt.Errorf("layer %s: %w", id, err)
	}
	if err := disk.Move(partial, m.layerPath(id)); err != nil {
		// A layer that stays recorded keeps its file, which the node's
		// next start moves into place.
		ctx := context.WithoutCancel(ctx)
		if derr := m.o.Store.DeleteLayer(ctx, id); derr != nil {
			log.Warn("forget the layer whose file could not be placed", "layer", id, "error", derr)
		} else if rerr := disk.Remove(partial); rerr != nil {
			log.Warn("remove unplaced layer", "layer", id, "error", rerr)
		}
		return store.Layer{}, fmt.Errorf("layer %s: %w", id, err)
	}
	log.Info("layer made", "layer", id, "parent_layer", vm.LayerID, "size", l.Size)
	return l, nil
}

// partialLayersDir holds the layer files this node is making. A layer's
// file is cloned there, recorded in the store, then moved into the layer
// directory, so a daemon that dies midway leaves nothing in the shared
// layer directory that no layer owns, and the node's next start finishes
// or removes what it left (finishLayers).
func (m *Manager) partialLayersDir() string {
	return filepath.Join(m.cfg.LayersDir(), ".partial", m.o.Node)
}

// finishLayers deals with the layer files a previous daemon on this node
// left half made: one whose layer was recorded is moved into place, any
// other file is removed. It runs at start, before anything can be making
// a layer.
func (m *Manager) finishLayers(ctx context.Context) error {
	dir := m.partialLayersDir()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		log := m.log.With("op", "reclaim", "file", path)
		id, ok := strings.CutSuffix(e.Name(), layerExt)
		if ok && ids.IsLayer(id) {
			_, err := m.o.Store.GetLayer(ctx, id)
			if err == nil {
				if err := disk.Move(path, m.layerPath(id)); err != nil {
					errs = append(errs, fmt.Errorf("layer %s: %w", id, err))
					continue
				}
				log.Info("finished a layer a previous daemon recorded", "layer", id)
				continue
			}
			if !errors.Is(err, store.ErrNotFound) {
				errs = append(errs, fmt.Errorf("layer %s: %w", id, err))
				continue
			}
		}
		if err := os.RemoveAll(path); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("removed a layer file no layer owns")
	}
	return errors.Join(errs...)
}

func (m *Manager) recordLayer(ctx context.Context, l store.Layer, path string) (store.Layer, error) {
	if err := os.Chmod(path, 0o400); err != nil {
		return store.Layer{}, err
	}
	size, err := disk.Allocated(path)
	if err != nil {
		return store.Layer{}, err
	}
	l.Size = size
	return m.o.Store.PutLayer(ctx, l)
}

// DeleteLayer removes a layer's record, then its file. The store refuses
// (store.ErrInUse, naming them) while child layers or VMs use it.
func (m *Manager) DeleteLayer(ctx context.Context, id string) error {
	if err := m.o.Store.DeleteLayer(ctx, id); err != nil {
		return err
	}
	if err := disk.Remove(m.layerPath(id)); err != nil {
		return fmt.Errorf("delete layer %s: %w", id, err)
	}
	m.log.Info("layer deleted", "layer", id, "op", "delete-layer")
	return nil
}

// layerExt ends the name of every layer's file.
const layerExt = ".ext4"

// layerPath is where a layer's disk lives on the layer medium.
func (m *Manager) layerPath(id string) string {
	return filepath.Join(m.cfg.LayersDir(), id+layerExt)
}

// fromLayer checks that a VM of type typ can boot on layer id and returns
// the step that makes its writable disk: a clone of the layer.
func (m *Manager) fromLayer(id string, typ instance.Type) (func(context.Context, string) error, error) {
	path := m.layerPath(id)
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("layer %s: its disk: %w", id, err)
	}
	if fi.Size() > int64(typ.Disk) {
		return nil, fmt.Errorf("%w: instance_type: %s has a %s disk, smaller than layer %s's %d bytes", ErrInvalid, typ.Name, typ.Disk, id, fi.Size())
	}
	return m.cloneOf(path), nil
}

// cloneOf returns the step that makes a writable disk as a clone of src.
func (m *Manager) cloneOf(src string) func(context.Context, string) error {
	return func(ctx context.Context, dst string) error {
		_, err := m.o.Cloner.CloneScratch(ctx, src, dst)
		return err
	}
}

// running returns the row and machine of a Running VM: store.ErrNotFound
// for an unknown VM, ErrNotRunning for one in another state.
func (m *Manager) running(ctx context.Context, id string) (store.VM, *machine, error) {
	row, err := m.o.Store.GetVM(ctx, id)
	if err != nil {
		return store.VM{}, nil, err
	}
	m.mu.Lock()
	mc := m.vms[id]
	m.mu.Unlock()
	if mc == nil || row.State != StateRunning {
		return store.VM{}, nil, fmt.Errorf("%w: vm %s is %s", ErrNotRunning, id, row.State)
	}
	return row, mc, nil
}

// cloneQuiesced clones mc's writable disk to dst while the guest is
// quiesced: its agent syncs and freezes the writable filesystem or, if the
// agent does not answer in time, its VMM is paused. The guest is thawed or
// resumed as soon as the clone is done, whether it worked or not.
func (m *Manager) cloneQuiesced(ctx context.Context, mc *machine, dst string, log *slog.Logger) error {
	mc.quiesce.Lock()
	defer mc.quiesce.Unlock()
	c, err := m.Agent(ctx, mc.id)
	if err != nil {
		return err
	}
	mc.mu.Lock()
	vm := mc.vm
	mc.mu.Unlock()

	start := time.Now()
	q, err := quiesceGuest(ctx, c, vm, log)
	if err != nil {
		return err
	}
	frozen := time.Now()
	method, cerr := m.o.Cloner.Clone(ctx, filepath.Join(m.cfg.VMDir(mc.id), diskFile), dst)
	if cerr != nil {
		cerr = fmt.Errorf("clone writable disk: %w", cerr)
	}
	rerr := q.resume(context.WithoutCancel(ctx))
	log.Info("parent disk cloned", "method", method.String(), "quiesce", q.how(),
		"frozen_for", time.Since(frozen), "took", time.Since(start), "error", errors.Join(cerr, rerr))
	if err := errors.Join(cerr, rerr); err != nil {
		if cerr == nil {
			// The clone may be torn: the guest was not frozen throughout.
			if derr := disk.Remove(dst); derr != nil {
				log.Warn("remove torn clone", "error", derr)
			}
		}
		return err
	}
	return nil
}

// quiesced is a guest held still for a clone.
type quiesced struct {
	c      *agent.Client
	vm     vmm.VM
	log    *slog.Logger
	paused bool
	// unsure: a Freeze timed out before the VMM was paused; it may have
	// frozen the guest all the same.
	unsure bool
	stop   chan struct{} // ends the lease renewal
	renew  sync.WaitGroup
}

func (q *quiesced) how() string {
	if q.paused {
		return "pause"
	}
	return "freeze"
}

// quiesceGuest syncs and freezes the guest's writable filesystem through its
// agent, or pauses its VMM when the agent does not answer in time.
func quiesceGuest(ctx context.Context, c *agent.Client, vm vmm.VM, log *slog.Logger) (*quiesced, error) {
	q := &quiesced{c: c, vm: vm, log: log}
	actx, cancel := context.WithTimeout(ctx, agentTimeout)
	err := c.Sync(actx)
	if err == nil {
		err = c.Freeze(actx, freezeLease)
		q.unsure = err != nil && actx.Err() != nil
	}
	cancel()
	if err == nil {
		q.stop = make(chan struct{})
		q.renew.Go(q.renewLease)
		return q, nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return nil, cerr
	}
	log.Warn("the guest agent did not freeze its disk: pausing the vmm instead", "error", err)
	if perr := vm.Pause(ctx); perr != nil {
		return nil, fmt.Errorf("quiesce: agent: %v; pause vmm: %w", err, perr)
	}
	q.paused = true
	return q, nil
}

// renewLease freezes the guest again every renewEvery, which pushes back
// its automatic thaw, until stop is closed.
func (q *quiesced) renewLease() {
	t := time.NewTicker(renewEvery)
	defer t.Stop()
	for {
		select {
		case <-q.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), renewEvery)
		if err := q.c.Freeze(ctx, freezeLease); err != nil {
			q.log.Warn("renew the freeze", "error", err)
		}
		cancel()
	}
}

// resume thaws or resumes the guest. A thaw that finds the guest no
// longer frozen is an error: it thawed by itself during the clone.
func (q *quiesced) resume(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, resumeTimeout)
	defer cancel()
	if q.paused {
		if err := q.vm.Resume(ctx); err != nil {
			q.log.Error("the parent stays paused: resume failed", "error", err)
			return fmt.Errorf("resume vmm: %w", err)
		}
		if q.unsure {
			if _, err := q.c.Thaw(ctx); err != nil {
				q.log.Warn("thaw after a timed-out freeze", "error", err)
			}
		}
		return nil
	}
	// A renewal still in flight would freeze the guest again after the
	// thaw: let it finish first.
	close(q.stop)
	q.renew.Wait()
	was, err := q.c.Thaw(ctx)
	if err != nil {
		return fmt.Errorf("thaw: %w", err)
	}
	if !was {
		return fmt.Errorf("thaw: the guest thawed by itself during the clone (freeze lease %s)", freezeLease)
	}
	return nil
}

// withParent returns labels with the parent label set when parent is.
func withParent(labels map[string]string, parent string) map[string]string {
	if parent == "" {
		return labels
	}
	out := maps.Clone(labels)
	if out == nil {
		out = map[string]string{}
	}
	out[ParentLabel] = parent
	return out
}
