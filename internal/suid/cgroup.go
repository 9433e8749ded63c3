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

// DaemonCgroup is the leaf of the delegated v2 parent that the caller
// (hyperd) is moved into. Under cgroup v2 a process may move another only
// between cgroups whose common ancestor's cgroup.procs it can write, so
// hyperd has to live inside the subtree it manages; and a v2 cgroup that
// enables controllers for its children cannot hold processes itself.
// The name is not a VM id, so list, kill and remove never see it.
const DaemonCgroup = "hyperd"

// v2DelegateFiles are the files of a delegated v2 cgroup that its
// delegatee owns besides the directory (the kernel's cgroup-v2 document,
// "Model of Delegation"). The limits of the parent itself stay root's.
var v2DelegateFiles = []string{"cgroup.procs", "cgroup.subtree_control", "cgroup.threads"}

// delegate makes the parent cgroup in every hierarchy (under v2 with the
// cpu, memory and pids controllers enabled for its children, at the root
// too) and hands it to uid:gid, who may then create VM cgroups below it,
// set their limits and move its own processes into them, bounded by the
// parent's limits, which stay root's. Run it as root. A parent owned by
// anyone but root or uid, or writable by group or others, is refused
// before anything changes. Doing it again changes nothing.
func (c *cgroups) delegate(parent string, uid, gid int) ([]DelegatedCgroup, error) {
	if err := c.checkParent(parent, uid); err != nil {
		return nil, err
	}
	var out []DelegatedCgroup
	for i, h := range c.hier {
		if c.version == 2 {
			if err := enableControllers(h.fd, h.path); err != nil {
				return nil, err
			}
		}
		if err := c.handOver(h.fd, parent, c.display(i, parent), uid, gid); err != nil {
			return nil, err
		}
		out = append(out, DelegatedCgroup{Controller: h.ctrl, Path: c.display(i, parent)})
	}
	return out, nil
}

// checkParent refuses, before anything changes, a parent that exists in
// some hierarchy and may not be handed to uid (see checkDelegable).
func (c *cgroups) checkParent(parent string, uid int) error {
	for i, h := range c.hier {
		fd, err := openBeneath(h.fd, parent, c.display(i, parent), unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if notExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		err = checkDelegable(fd, c.display(i, parent), uid)
		if err == nil {
			err = checkOnlyOurs(fd, c.display(i, parent))
		}
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
	return nil
}

// checkOnlyOurs refuses an existing parent that holds processes or a
// cgroup that is neither a VM's nor hyperd's: a jails.cgroup naming some
// other service's cgroup by mistake must not hand that service to hyperd.
func checkOnlyOurs(fd int, display string) error {
	dup, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return pathErr("open", display, err)
	}
	d := os.NewFile(uintptr(dup), display)
	entries, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return pathErr("read", display, err)
	}
	for _, e := range entries {
		if e.IsDir() && !ValidVMID(e.Name()) && e.Name() != DaemonCgroup {
			return refused("%s holds the cgroup %s, which is not Hyper's; refusing to delegate it (is jails.cgroup right?)", display, e.Name())
		}
	}
	procs, err := readFile(fd, "cgroup.procs", display+"/cgroup.procs")
	if err != nil {
		return err
	}
	if strings.TrimSpace(procs) != "" {
		return refused("%s holds processes (%s); refusing to delegate it (is jails.cgroup right?)", display, strings.Join(strings.Fields(procs), " "))
	}
	return nil
}

// daemonLeaf makes <parent>/hyperd in a v2 tree, hands it to uid:gid and
// returns it open.
func (c *cgroups) daemonLeaf(parent string, uid, gid int) (int, error) {
	p, err := openBeneath(c.hier[0].fd, parent, c.display(0, parent), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(p)
	display := c.display(0, parent, DaemonCgroup)
	if err := c.handOver(p, DaemonCgroup, display, uid, gid); err != nil {
		return -1, err
	}
	return openBeneath(p, DaemonCgroup, display, unix.O_RDONLY|unix.O_DIRECTORY, 0)
}

// handOver makes the cgroup name below dir unless it exists, checks it
// may be handed to uid and chowns it (under v2 with its delegation files)
// to uid:gid. Under v2 the controllers are enabled for its children first,
// while root still owns it (not in the hyperd leaf: it holds processes).
func (c *cgroups) handOver(dir int, name, display string, uid, gid int) error {
	fd, err := mkCgroup(dir, name, display)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := checkDelegable(fd, display, uid); err != nil {
		return err
	}
	if c.version == 2 && name != DaemonCgroup {
		if err := enableControllers(fd, display); err != nil {
			return err
		}
	}
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return pathErr("chown", display, err)
	}
	if c.version != 2 {
		return nil
	}
	for _, f := range v2DelegateFiles {
		ffd, err := openBeneath(fd, f, display+"/"+f, unix.O_RDONLY, 0)
		if err != nil {
			return err
		}
		err = unix.Fchown(ffd, uid, gid)
		unix.Close(ffd)
		if err != nil {
			return pathErr("chown", display+"/"+f, err)
		}
	}
	return nil
}

// checkDelegable requires a directory that root or uid owns and that no
// one else may write: anything else was made by someone else, and handing
// it over would give uid what is theirs.
func checkDelegable(fd int, display string, uid int) error {
	st, err := fstat(fd, display)
	if err != nil {
		return err
	}
	switch {
	case !isType(st, unix.S_IFDIR):
		return refused("%s is not a directory", display)
	case st.Uid != 0 && int64(st.Uid) != int64(uid):
		return refused("%s is owned by uid %d, neither root nor the caller (uid %d); refusing to take it over", display, st.Uid, uid)
	case st.Mode&0o022 != 0:
		return refused("%s is group/other-writable (mode %04o); refusing to delegate it", display, st.Mode&0o7777)
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
