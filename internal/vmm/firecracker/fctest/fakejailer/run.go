package fakejailer

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// RecordFile is the name, in the jail directory, of what a run did.
const RecordFile = "fctest-jailer.json"

// Record is what a run did and what it simulated.
type Record struct {
	Argv      []string `json:"argv"`
	EUID      int      `json:"euid"`
	UID       uint32   `json:"uid"`
	GID       uint32   `json:"gid"`
	Root      string   `json:"root"`
	Exec      []string `json:"exec"`
	Cgroups   []string `json:"cgroups,omitempty"`
	Simulated []string `json:"simulated"`
}

// defaultNoFile is the jailer's default open-file limit.
const defaultNoFile = 2048

// Run builds the jail for a and execs the Firecracker stand-in in it; it
// returns only on failure. argv is the jailer's whole command line, for
// the record.
func Run(a *Args, argv []string) error {
	// Namespace and credential changes must all happen on the thread that
	// finally calls execve.
	runtime.LockOSThread()
	start := time.Now()
	exeName := filepath.Base(a.ExecFile)
	jailDir := filepath.Join(a.ChrootBase, exeName, a.ID)
	root := filepath.Join(jailDir, "root")
	isRoot := os.Geteuid() == 0
	rec := &Record{Argv: argv, EUID: os.Geteuid(), UID: a.UID, GID: a.GID, Root: root,
		Simulated: []string{"chroot: the working directory is the jail root; paths resolve beneath it"}}

	if !isRoot && (a.UID != uint32(os.Getuid()) || a.GID != uint32(os.Getgid())) {
		return fmt.Errorf("not running as root: cannot switch to uid %d gid %d (running as %d:%d)", a.UID, a.GID, os.Getuid(), os.Getgid())
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("create chroot dir: %w", err)
	}
	target := filepath.Join(root, exeName)
	if err := copyFile(a.ExecFile, target); err != nil {
		return fmt.Errorf("copy exec file into the jail: %w", err)
	}
	limits := map[string]uint64{"no-file": defaultNoFile}
	for k, v := range a.ResourceLimits {
		limits[k] = v
	}
	for k, v := range limits {
		res := unix.RLIMIT_NOFILE
		if k == "fsize" {
			res = unix.RLIMIT_FSIZE
		}
		if err := unix.Setrlimit(res, &unix.Rlimit{Cur: v, Max: v}); err != nil {
			return fmt.Errorf("set resource limit %s=%d: %w", k, v, err)
		}
	}
	if isRoot {
		paths, err := applyCgroups(a)
		if err != nil {
			return err
		}
		rec.Cgroups = paths
		if err := makeDevices(root, a.UID, a.GID); err != nil {
			return err
		}
		if err := os.Chown(root, int(a.UID), int(a.GID)); err != nil {
			return fmt.Errorf("chown chroot dir: %w", err)
		}
		if a.Netns != "" {
			if err := joinNetns(a.Netns); err != nil {
				return err
			}
		}
	} else {
		rec.Simulated = append(rec.Simulated, "not root: no cgroups, no /dev/kvm or /dev/net/tun nodes, no chown, no network namespace, no privilege drop")
		if len(a.Cgroups) > 0 || a.Netns != "" {
			return errors.New("not running as root: cannot apply --cgroup or --netns")
		}
	}
	if a.Daemonize {
		if err := daemonize(); err != nil {
			return err
		}
	}
	elapsed := time.Since(start).Microseconds()
	rec.Exec = append([]string{exeName, "--id=" + a.ID,
		"--start-time-us=" + strconv.FormatInt(start.UnixMicro(), 10),
		"--start-time-cpu-us=" + strconv.FormatInt(elapsed, 10)}, a.Forward...)
	if err := writeRecord(filepath.Join(jailDir, RecordFile), rec); err != nil {
		return err
	}
	// Enter the jail before dropping privileges, as the real jailer's
	// chroot does: the jail's ancestors need not be searchable by the VM's
	// uid (hyperd's work_dir is not).
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("enter the jail: %w", err)
	}
	if isRoot {
		if err := unix.Setgroups(nil); err != nil {
			return fmt.Errorf("drop supplementary groups: %w", err)
		}
		if err := unix.Setresgid(int(a.GID), int(a.GID), int(a.GID)); err != nil {
			return fmt.Errorf("setgid %d: %w", a.GID, err)
		}
		if err := unix.Setresuid(int(a.UID), int(a.UID), int(a.UID)); err != nil {
			return fmt.Errorf("setuid %d: %w", a.UID, err)
		}
	}
	// Relative to the jail, as the real jailer execs /<exec-file> in its
	// chroot.
	err := syscall.Exec("./"+exeName, rec.Exec, []string{})
	return fmt.Errorf("exec %s: %w", target, err)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	os.Remove(dst)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// makeDevices creates the jail's /dev/kvm and /dev/net/tun as the real
// jailer does, owned by the jail user.
func makeDevices(root string, uid, gid uint32) error {
	for _, d := range []struct {
		path         string
		major, minor uint32
	}{{"dev/kvm", 10, 232}, {"dev/net/tun", 10, 200}} {
		p := filepath.Join(root, d.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		os.Remove(p)
		if err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("mknod %s: %w", p, err)
		}
		if err := os.Chown(p, int(uid), int(gid)); err != nil {
			return fmt.Errorf("chown %s: %w", p, err)
		}
	}
	return nil
}

func joinNetns(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("join network namespace %s: %w", path, err)
	}
	return nil
}

func daemonize() error {
	if _, err := unix.Setsid(); err != nil {
		return fmt.Errorf("setsid: %w", err)
	}
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer null.Close()
	for fd := range 3 {
		if err := unix.Dup2(int(null.Fd()), fd); err != nil {
			return fmt.Errorf("redirect fd %d: %w", fd, err)
		}
	}
	return nil
}

func writeRecord(path string, rec *Record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// applyCgroups creates <hierarchy>/<parent>/<id> for each controller named
// by --cgroup, writes the values and moves the process in, as the jailer
// does.
func applyCgroups(a *Args) ([]string, error) {
	if len(a.Cgroups) == 0 {
		return nil, nil
	}
	mounts, err := cgroupMounts()
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, c := range a.Cgroups {
		base, ok := mounts.find(a.CgroupVersion, c.Controller())
		if !ok {
			return nil, fmt.Errorf("cgroup controller %s: no cgroup v%d hierarchy has it", c.Controller(), a.CgroupVersion)
		}
		dir := filepath.Join(base, a.ParentCgroup, a.ID)
		if a.CgroupVersion == 2 {
			if err := enableController(base, a.ParentCgroup, c.Controller()); err != nil {
				return nil, err
			}
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		if err := os.WriteFile(filepath.Join(dir, c.File), []byte(c.Value), 0); err != nil {
			return nil, fmt.Errorf("set cgroup %s=%s: %w", c.File, c.Value, err)
		}
		if !slices.Contains(dirs, dir) {
			dirs = append(dirs, dir)
		}
	}
	procs := "tasks"
	if a.CgroupVersion == 2 {
		procs = "cgroup.procs"
	}
	for _, dir := range dirs {
		if err := os.WriteFile(filepath.Join(dir, procs), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			return nil, fmt.Errorf("join cgroup %s: %w", dir, err)
		}
	}
	return dirs, nil
}

// enableController turns ctrl on in every cgroup.subtree_control from the
// hierarchy's root down to parent, so the VM's cgroup gets it.
func enableController(base, parent, ctrl string) error {
	dir := base
	for _, part := range append([]string{""}, strings.Split(parent, "/")...) {
		dir = filepath.Join(dir, part)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+ctrl), 0); err != nil {
			return fmt.Errorf("enable %s in %s: %w", ctrl, dir, err)
		}
	}
	return nil
}

type mountTable []struct{ dir, fstype, opts string }

func cgroupMounts() (mountTable, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var t mountTable
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 4 && (fields[2] == "cgroup" || fields[2] == "cgroup2") {
			t = append(t, struct{ dir, fstype, opts string }{fields[1], fields[2], fields[3]})
		}
	}
	return t, sc.Err()
}

func (t mountTable) find(version int, ctrl string) (string, bool) {
	for _, m := range t {
		switch {
		case version == 2 && m.fstype == "cgroup2":
			b, err := os.ReadFile(filepath.Join(m.dir, "cgroup.controllers"))
			if err == nil && slices.Contains(strings.Fields(string(b)), ctrl) {
				return m.dir, true
			}
		case version == 1 && m.fstype == "cgroup":
			if slices.Contains(strings.Split(m.opts, ","), ctrl) {
				return m.dir, true
			}
		}
	}
	return "", false
}
