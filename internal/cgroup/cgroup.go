// Package cgroup makes VM cgroups in the parent cgroup that the setuid
// helper delegated to hyperd (its op cgroup delegate), as hyperd's own
// user and with plain file operations: create a VM's cgroup with its CPU
// and memory limits, and move a VMM process of hyperd's into it. No helper
// process runs on this path. The kernel bounds what hyperd can do here:
// the parent's own limits and files stay root's, and a process can only
// be moved by someone the kernel lets move it (under v1 a process of the
// same user, under v2 one inside the delegated subtree). Killing and
// removing VM cgroups stay with the helper, which can signal VMMs running
// as other users.
package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/ids"
	"github.com/hypervm/hyper/internal/suid"
)

// Parent is the node's delegated parent cgroup in one hierarchy.
type Parent struct {
	Controller string // the v1 hierarchy's controller; empty under v2
	Path       string // absolute
}

// v1Controllers are the hierarchies a VM cgroup spans under cgroup v1, as
// the helper delegates them: limits (cpu, memory), the kill (freezer) and
// a fork-bomb fence (pids).
var v1Controllers = []string{"cpu", "memory", "freezer", "pids"}

// CFSPeriod is the CPU bandwidth period in microseconds; a VM's quota is
// its share of CPUs times this.
const CFSPeriod = 100000

// Limits on what Create accepts. The CPU floor keeps the CFS quota at or
// above the kernel's 1 ms minimum with CFSPeriod.
const (
	MinMilliCPU = 10
	MaxMilliCPU = 1024 * 1000
	MinMemory   = 1 << 20
	MaxMemory   = 1 << 50
)

// Tree is the node's delegated parent cgroup in every hierarchy.
type Tree struct {
	version int
	parents []Parent
}

// Delegated is New for what the setuid helper's cgroup delegate op
// reported.
func Delegated(d suid.Delegation) (*Tree, error) {
	parents := make([]Parent, 0, len(d.Parents))
	for _, p := range d.Parents {
		parents = append(parents, Parent{Controller: p.Controller, Path: p.Path})
	}
	return New(d.CgroupVersion, parents)
}

// New checks the parents the helper's delegation reported (cgroup version
// and one parent per hierarchy) and returns the tree they make: each must
// be a directory on a cgroup file system of that version that this
// process may create cgroups in.
func New(version int, parents []Parent) (*Tree, error) {
	t, err := newTree(version, parents)
	if err != nil {
		return nil, err
	}
	magic := int64(unix.CGROUP_SUPER_MAGIC)
	if version == 2 {
		magic = unix.CGROUP2_SUPER_MAGIC
	}
	for _, p := range t.parents {
		var fs unix.Statfs_t
		if err := unix.Statfs(p.Path, &fs); err != nil {
			return nil, fmt.Errorf("delegated cgroup %s: %w", p.Path, err)
		}
		if fs.Type != magic {
			return nil, fmt.Errorf("delegated cgroup %s is not on a cgroup v%d file system", p.Path, version)
		}
		if err := unix.Access(p.Path, unix.W_OK|unix.X_OK); err != nil {
			return nil, fmt.Errorf("delegated cgroup %s: uid %d may not create cgroups in it (%w): the helper's cgroup delegate has not handed it over", p.Path, os.Geteuid(), err)
		}
	}
	return t, nil
}

// newTree checks the shape of a delegation: the version, and the
// hierarchies it names.
func newTree(version int, parents []Parent) (*Tree, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("cgroup delegation: "+format, args...)
	}
	switch version {
	case 1:
		for _, want := range []string{"cpu", "memory"} {
			if !slices.ContainsFunc(parents, func(p Parent) bool { return p.Controller == want }) {
				return nil, bad("no %s hierarchy under cgroup v1", want)
			}
		}
	case 2:
		if len(parents) != 1 || parents[0].Controller != "" {
			return nil, bad("cgroup v2 has one hierarchy without a controller name, got %+v", parents)
		}
	default:
		return nil, bad("cgroup version %d: want 1 or 2", version)
	}
	seen := map[string]bool{}
	for _, p := range parents {
		if version == 1 && !slices.Contains(v1Controllers, p.Controller) {
			return nil, bad("unknown v1 controller %q", p.Controller)
		}
		if seen[p.Controller] {
			return nil, bad("controller %q given twice", p.Controller)
		}
		seen[p.Controller] = true
		if !filepath.IsAbs(p.Path) || filepath.Clean(p.Path) != p.Path || p.Path == "/" {
			return nil, bad("parent %q must be an absolute, clean path", p.Path)
		}
	}
	return &Tree{version: version, parents: slices.Clone(parents)}, nil
}

// Version is the cgroup version of the tree: 1 or 2.
func (t *Tree) Version() int { return t.version }

// Parents returns the delegated parent in every hierarchy.
func (t *Tree) Parents() []Parent { return slices.Clone(t.parents) }

// Create makes VM id's cgroup in every hierarchy with a CPU limit of
// milliCPU thousandths of a CPU and a memory limit of mem bytes. A cgroup
// left by an earlier attempt is reused. On failure it removes the
// cgroups it made, and the error says which file the kernel refused.
func (t *Tree) Create(id string, milliCPU, mem uint64) error {
	if err := checkLimits(id, milliCPU, mem); err != nil {
		return err
	}
	var made []string
	undo := func(err error) error {
		for _, dir := range slices.Backward(made) {
			if rerr := os.Remove(dir); rerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", rerr))
			}
		}
		return fmt.Errorf("create cgroup %s: %w", id, err)
	}
	for _, p := range t.parents {
		dir := filepath.Join(p.Path, id)
		switch err := os.Mkdir(dir, 0o755); {
		case err == nil:
			made = append(made, dir)
		case !errors.Is(err, os.ErrExist):
			return undo(err)
		}
	}
	quota := strconv.FormatUint(milliCPU*CFSPeriod/1000, 10)
	memory := strconv.FormatUint(mem, 10)
	for _, p := range t.parents {
		var limits [][2]string
		switch p.Controller {
		case "":
			limits = [][2]string{{"cpu.max", quota + " " + strconv.Itoa(CFSPeriod)}, {"memory.max", memory}}
		case "cpu":
			limits = [][2]string{{"cpu.cfs_period_us", strconv.Itoa(CFSPeriod)}, {"cpu.cfs_quota_us", quota}}
		case "memory":
			limits = [][2]string{{"memory.limit_in_bytes", memory}}
		}
		for _, l := range limits {
			if err := write(filepath.Join(p.Path, id, l[0]), l[1]); err != nil {
				return undo(err)
			}
		}
	}
	return nil
}

func checkLimits(id string, milliCPU, mem uint64) error {
	switch {
	case !ids.IsVM(id):
		return fmt.Errorf("create cgroup: invalid vm id %q: want v followed by 16 characters of [a-z2-7]", id)
	case milliCPU < MinMilliCPU || milliCPU > MaxMilliCPU:
		return fmt.Errorf("create cgroup %s: cpu limit %d thousandths: want %d to %d", id, milliCPU, MinMilliCPU, MaxMilliCPU)
	case mem < MinMemory || mem > MaxMemory:
		return fmt.Errorf("create cgroup %s: memory limit %d bytes: want %d to %d", id, mem, MinMemory, uint64(MaxMemory))
	}
	return nil
}

// Attach moves process pid into VM id's cgroup in every hierarchy. The
// kernel decides whether this process may move it: under v1 only
// processes of the same user, under v2 only processes already inside the
// delegated subtree.
func (t *Tree) Attach(id string, pid int) error {
	if !ids.IsVM(id) {
		return fmt.Errorf("attach to cgroup: invalid vm id %q: want v followed by 16 characters of [a-z2-7]", id)
	}
	// Writing 0 would move the writer itself; 1 is init.
	if pid < 2 {
		return fmt.Errorf("attach to cgroup %s: invalid pid %d", id, pid)
	}
	for _, p := range t.parents {
		if err := write(filepath.Join(p.Path, id, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("attach pid %d to cgroup %s: %w", pid, id, err)
		}
	}
	return nil
}

// write writes one value to an existing cgroup file: a missing file is an
// error (a controller that is not enabled), never a file created.
func write(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		return nil
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("write %q to %s: %w", value, path, err)
}
