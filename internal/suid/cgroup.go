package suid

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cgroupRoot is where cgroups are mounted: cgroup2 itself on a unified
// host, or a tmpfs holding one cgroup v1 hierarchy per controller.
const cgroupRoot = "/sys/fs/cgroup"

// v1Controllers are the hierarchies a VM cgroup spans under cgroup v1:
// limits (cpu, memory), the kill (freezer) and a fork-bomb fence (pids).
var v1Controllers = []string{"cpu", "memory", "freezer", "pids"}

// cfsPeriod is the CPU bandwidth period in microseconds.
const cfsPeriod = 100000

// Timeouts of the kill and the removal.
var (
	freezeTimeout = time.Second
	drainTimeout  = 5 * time.Second
	pollInterval  = 10 * time.Millisecond
)

// cgroups is the set of hierarchies a VM cgroup lives in: one for v2, one
// per controller for v1. A VM cgroup is <hierarchy>/<jails.cgroup>/<vm-id>.
type cgroups struct {
	version int
	hier    []hierarchy
}

type hierarchy struct {
	ctrl string // v1 controller; "" for v2
	path string
	fd   int
}

// openCgroups detects the cgroup version from the file system type of root.
func openCgroups(root string) (*cgroups, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(root, &fs); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", root, err)
	}
	switch fs.Type {
	case unix.CGROUP2_SUPER_MAGIC:
		return openHierarchies(2, root, unix.CGROUP2_SUPER_MAGIC, "")
	case unix.TMPFS_MAGIC:
		return openHierarchies(1, root, unix.CGROUP_SUPER_MAGIC, v1Controllers...)
	}
	return nil, fmt.Errorf("%s is neither cgroup2 nor a tmpfs of cgroup v1 hierarchies", root)
}

func openHierarchies(version int, root string, magic int64, ctrls ...string) (*cgroups, error) {
	c := &cgroups{version: version}
	for _, ctrl := range ctrls {
		// Following links is fine here: /sys/fs/cgroup is root's, and some
		// distributions link cpu to a co-mounted cpu,cpuacct.
		path := filepath.Join(root, ctrl)
		fd, err := openDir(path)
		if err != nil {
			return nil, fmt.Errorf("cgroup v%d hierarchy: %w", version, err)
		}
		c.hier = append(c.hier, hierarchy{ctrl, path, fd})
		var fs unix.Statfs_t
		if err := unix.Fstatfs(fd, &fs); err != nil || fs.Type != magic {
			return nil, fmt.Errorf("%s is not a cgroup v%d hierarchy", path, version)
		}
	}
	return c, nil
}

// open opens rel in every hierarchy; a missing one is -1. It reports how
// many exist.
func (c *cgroups) open(rel string) (fds []int, found int, err error) {
	for _, h := range c.hier {
		fd, err := openBeneath(h.fd, rel, filepath.Join(h.path, rel), unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil && !notExist(err) {
			closeAll(fds)
			return nil, 0, err
		}
		if err == nil {
			found++
		}
		fds = append(fds, fd)
	}
	return fds, found, nil
}

// openLeaves opens the VM cgroup in every hierarchy; all must exist.
func (c *cgroups) openLeaves(parent, id string) ([]int, error) {
	fds, found, err := c.open(filepath.Join(parent, id))
	if err == nil && found < len(fds) {
		closeAll(fds)
		return nil, fmt.Errorf("cgroup %s/%s: %w", parent, id, os.ErrNotExist)
	}
	return fds, err
}

func closeAll(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

func (c *cgroups) display(i int, rel ...string) string {
	return filepath.Join(append([]string{c.hier[i].path}, rel...)...)
}

// create makes the parent (with controllers enabled) and the VM cgroup in
// every hierarchy, then sets the limits. An existing cgroup is reused.
func (c *cgroups) create(parent, id string, milliCPU, mem uint64) error {
	quota := strconv.FormatUint(milliCPU*cfsPeriod/1000, 10)
	for i, h := range c.hier {
		if c.version == 2 {
			if err := enableControllers(h.fd, h.path); err != nil {
				return err
			}
		}
		p, err := mkCgroup(h.fd, parent, c.display(i, parent))
		if err != nil {
			return err
		}
		if c.version == 2 {
			if err := enableControllers(p, c.display(i, parent)); err != nil {
				unix.Close(p)
				return err
			}
		}
		leaf, err := mkCgroup(p, id, c.display(i, parent, id))
		unix.Close(p)
		if err != nil {
			return err
		}
		var limits [][2]string
		switch h.ctrl {
		case "":
			limits = [][2]string{{"cpu.max", quota + " " + strconv.Itoa(cfsPeriod)}, {"memory.max", strconv.FormatUint(mem, 10)}}
		case "cpu":
			limits = [][2]string{{"cpu.cfs_period_us", strconv.Itoa(cfsPeriod)}, {"cpu.cfs_quota_us", quota}}
		case "memory":
			limits = [][2]string{{"memory.limit_in_bytes", strconv.FormatUint(mem, 10)}}
		}
		for _, l := range limits {
			if err := writeFile(leaf, l[0], c.display(i, parent, id, l[0]), l[1]); err != nil {
				unix.Close(leaf)
				return err
			}
		}
		unix.Close(leaf)
	}
	return nil
}

func mkCgroup(parent int, name, display string) (int, error) {
	if err := unix.Mkdirat(parent, name, 0o755); err != nil && err != unix.EEXIST {
		return -1, pathErr("mkdir", display, err)
	}
	return openBeneath(parent, name, display, unix.O_RDONLY|unix.O_DIRECTORY, 0)
}

// enableControllers turns on cpu and memory (and pids where available) for
// the children of a v2 cgroup, writing only what is missing.
func enableControllers(dir int, path string) error {
	avail, err := readFile(dir, "cgroup.controllers", path+"/cgroup.controllers")
	if err != nil {
		return err
	}
	enabled, err := readFile(dir, "cgroup.subtree_control", path+"/cgroup.subtree_control")
	if err != nil {
		return err
	}
	var add []string
	for _, ctrl := range []string{"cpu", "memory", "pids"} {
		switch {
		case slices.Contains(strings.Fields(enabled), ctrl):
		case slices.Contains(strings.Fields(avail), ctrl):
			add = append(add, "+"+ctrl)
		case ctrl != "pids":
			return fmt.Errorf("cgroup v2 controller %s is not available in %s", ctrl, path)
		}
	}
	if len(add) == 0 {
		return nil
	}
	return writeFile(dir, "cgroup.subtree_control", path+"/cgroup.subtree_control", strings.Join(add, " "))
}

func writeFile(dir int, name, display, data string) error {
	fd, err := openBeneath(dir, name, display, unix.O_WRONLY|unix.O_TRUNC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.Write(fd, []byte(data))
	return pathErr("write", display, err)
}

func readFile(dir int, name, display string) (string, error) {
	fd, err := openBeneath(dir, name, display, unix.O_RDONLY, 0)
	if err != nil {
		return "", err
	}
	f := os.NewFile(uintptr(fd), display)
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	return string(b), pathErr("read", display, err)
}

// procs lists the processes in the VM cgroup across hierarchies.
func (c *cgroups) procs(leaves []int) ([]int, error) {
	var pids []int
	for i, fd := range leaves {
		if fd < 0 {
			continue
		}
		s, err := readFile(fd, "cgroup.procs", c.display(i, "cgroup.procs"))
		if err != nil {
			return nil, err
		}
		for _, f := range strings.Fields(s) {
			if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids, nil
}

// attach moves pid into the VM cgroup in every hierarchy.
func (c *cgroups) attach(leaves []int, pid int) error {
	for i, fd := range leaves {
		if err := writeFile(fd, "cgroup.procs", c.display(i, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// kill kills every process in the VM cgroup, whatever session or process
// group it moved to, and waits until the cgroup is empty. v2 writes
// cgroup.kill; v1 (and a v2 kernel without cgroup.kill) freezes the cgroup
// so nothing can fork or escape, SIGKILLs every pid, and thaws it.
func (c *cgroups) kill(leaves []int) (int, error) {
	if c.version == 2 && leaves[0] >= 0 {
		pids, err := c.procs(leaves)
		if err != nil {
			return 0, err
		}
		err = writeFile(leaves[0], "cgroup.kill", c.display(0, "cgroup.kill"), "1")
		if err == nil {
			return len(pids), c.waitEmpty(leaves)
		}
		if !notExist(err) {
			return 0, err
		}
	}
	freezeFile, frozen, thawed := "freezer.state", "FROZEN", "THAWED"
	freezer := slices.IndexFunc(c.hier, func(h hierarchy) bool { return h.ctrl == "freezer" })
	if c.version == 2 {
		freezeFile, frozen, thawed, freezer = "cgroup.freeze", "1", "0", 0
	}
	killed := 0
	deadline := time.Now().Add(drainTimeout)
	for {
		pids, err := c.procs(leaves)
		if err != nil || len(pids) == 0 {
			return killed, err
		}
		if time.Now().After(deadline) {
			return killed, busyError(pids)
		}
		if freezer >= 0 && leaves[freezer] >= 0 {
			if err := c.freeze(leaves[freezer], freezeFile, frozen); err != nil {
				return killed, err
			}
			if pids, err = c.procs(leaves); err != nil {
				return killed, err
			}
		}
		for _, pid := range pids {
			if unix.Kill(pid, unix.SIGKILL) == nil {
				killed++
			}
		}
		if freezer >= 0 && leaves[freezer] >= 0 {
			if err := writeFile(leaves[freezer], freezeFile, c.display(freezer, freezeFile), thawed); err != nil {
				return killed, err
			}
		}
		if err := c.waitEmpty(leaves); err == nil {
			return killed, nil
		}
	}
}

// freeze freezes the cgroup and waits briefly for it to settle; a cgroup
// stuck freezing is killed anyway (SIGKILL reaches a freezing task).
func (c *cgroups) freeze(fd int, file, frozen string) error {
	if err := writeFile(fd, file, file, frozen); err != nil {
		return err
	}
	for end := time.Now().Add(freezeTimeout); time.Now().Before(end); time.Sleep(pollInterval) {
		var state string
		var err error
		if file == "cgroup.freeze" {
			state, err = readFile(fd, "cgroup.events", "cgroup.events")
			state = map[bool]string{true: frozen}[strings.Contains(state, "frozen 1")]
		} else {
			state, err = readFile(fd, file, file)
		}
		if err != nil || strings.TrimSpace(state) == frozen {
			return err
		}
	}
	return nil
}

// waitEmpty polls until no process is left in the VM cgroup.
func (c *cgroups) waitEmpty(leaves []int) error {
	for end := time.Now().Add(drainTimeout); ; time.Sleep(pollInterval) {
		pids, err := c.procs(leaves)
		if err != nil || len(pids) == 0 {
			return err
		}
		if time.Now().After(end) {
			return busyError(pids)
		}
	}
}

func busyError(pids []int) error {
	return fmt.Errorf("cgroup still busy after %s: %d processes left (%v)", drainTimeout, len(pids), pids)
}

// remove kills the VM cgroup and removes it from every hierarchy, retrying
// while the killed cgroup drains. It never reports a busy cgroup as gone.
func (c *cgroups) remove(parent, id string) (bool, error) {
	leaves, found, err := c.open(filepath.Join(parent, id))
	if err != nil || found == 0 {
		closeAll(leaves)
		return false, err
	}
	_, err = c.kill(leaves)
	closeAll(leaves)
	if err != nil {
		return false, err
	}
	parents, _, err := c.open(parent)
	defer closeAll(parents)
	if err != nil {
		return false, err
	}
	for i, p := range parents {
		if p < 0 {
			continue
		}
		for end := time.Now().Add(drainTimeout); ; time.Sleep(pollInterval) {
			err := unix.Unlinkat(p, id, unix.AT_REMOVEDIR)
			if err == nil || err == unix.ENOENT {
				break
			}
			if (err != unix.EBUSY && err != unix.ENOTEMPTY) || time.Now().After(end) {
				return false, pathErr("rmdir", c.display(i, parent, id), err)
			}
		}
	}
	return true, nil
}

// list returns the VM ids that have a cgroup under parent in any
// hierarchy. Names that are not VM ids are never reported (or touched).
func (c *cgroups) list(parent string) ([]string, error) {
	parents, _, err := c.open(parent)
	defer closeAll(parents)
	if err != nil {
		return nil, err
	}
	ids := []string{}
	for i, p := range parents {
		if p < 0 {
			continue
		}
		fd, err := unix.Openat(p, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, pathErr("open", c.display(i, parent), err)
		}
		d := os.NewFile(uintptr(fd), c.display(i, parent))
		names, err := d.Readdirnames(-1)
		d.Close()
		if err != nil {
			return nil, pathErr("read", c.display(i, parent), err)
		}
		for _, n := range names {
			if ValidVMID(n) && !slices.Contains(ids, n) {
				ids = append(ids, n)
			}
		}
	}
	slices.Sort(ids)
	return ids, nil
}

func (c *cgroups) close() {
	for _, h := range c.hier {
		unix.Close(h.fd)
	}
}
