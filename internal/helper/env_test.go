package helper_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/helper"
	"github.com/hypervm/hyper/internal/suid"
)

// The end-to-end tests build the helper, install it setuid root in a
// root-owned directory, and run every op as an unprivileged user against
// a real config, real files and real cgroups. They need root to set up.

const testUser = "hyper-helper-test"

var (
	env        *testEnv
	skipReason string
)

// testEnv is the installed helper and the tree it works on.
type testEnv struct {
	dir      string // root-owned, 0755
	helper   string // the test build, setuid root
	plain    string // the same build without the setuid bit
	probe    string // recorder build used to connect to sockets
	config   string // compiled into the test build
	record   string // where the stand-in jailer writes
	work     string
	vms      string
	images   string
	kernel   string
	uid, gid uint32 // the unprivileged test user
	cfg      cfgFields
	hier     []string // cgroup hierarchies, as the helper detects them
	client   *helper.Client
}

// cfgFields is the test config; text renders it.
type cfgFields struct {
	WorkDir, Firecracker, Jailer, KernelDir, Vmlinux, LayerDir, Cgroup, Extra string
	Lo, Hi                                                                    int64
}

func (c cfgFields) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "work_dir = %q\n%s\n[tools]\n", c.WorkDir, c.Extra)
	if c.Firecracker != "" {
		fmt.Fprintf(&b, "firecracker = %q\n", c.Firecracker)
	}
	if c.Jailer != "" {
		fmt.Fprintf(&b, "jailer = %q\n", c.Jailer)
	}
	fmt.Fprintf(&b, "[jails]\nuid_gid_range = [%d, %d]\ncgroup = %q\n[kernel]\ndir = %q\n", c.Lo, c.Hi, c.Cgroup, c.KernelDir)
	if c.Vmlinux != "" {
		fmt.Fprintf(&b, "vmlinux = %q\n", c.Vmlinux)
	}
	fmt.Fprintf(&b, "[disk]\nlayer_dir = %q\n", c.LayerDir)
	return b.String()
}

func TestMain(m *testing.M) {
	os.Exit(func() int {
		if os.Geteuid() != 0 {
			skipReason = "end-to-end helper tests need root (to install a setuid binary and create a user)"
			return m.Run()
		}
		e, err := setup()
		if e != nil {
			defer e.teardown()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper e2e setup:", err)
			return 1
		}
		env = e
		return m.Run()
	}())
}

func need(t *testing.T) *testEnv {
	t.Helper()
	if env == nil {
		t.Skip(skipReason)
	}
	return env
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

func setup() (*testEnv, error) {
	u, err := user.Lookup(testUser)
	if err != nil {
		if _, err := exec.LookPath("useradd"); err != nil {
			return nil, fmt.Errorf("useradd not found (Debian package passwd): %w", err)
		}
		if err := run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", testUser); err != nil {
			return nil, err
		}
		if u, err = user.Lookup(testUser); err != nil {
			return nil, err
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp("", "hyper-helper-e2e-")
	if err != nil {
		return nil, err
	}
	e := &testEnv{dir: dir, uid: uint32(uid), gid: uint32(gid)}
	e.helper = filepath.Join(dir, "bin", "hyper-suidhelper")
	e.plain = filepath.Join(dir, "plain", "hyper-suidhelper")
	e.probe = filepath.Join(dir, "bin", "probe")
	e.config = filepath.Join(dir, "etc", "config.toml")
	e.record = filepath.Join(dir, "record.json")
	e.work = filepath.Join(dir, "work")
	e.vms = filepath.Join(e.work, "vms")
	e.images = filepath.Join(e.work, "layers", "images")
	e.kernel = filepath.Join(e.work, "kernel")
	if err := os.Chmod(dir, 0o755); err != nil {
		return e, err
	}
	// work_dir is root's (the jailer resolves its chroot by name below it);
	// the caller owns the VM files and the layer medium, as hyperd would.
	for _, d := range []struct {
		path string
		mine bool
	}{{"bin", false}, {"plain", false}, {"tools", false}, {"etc", false}, {"work", false},
		{"work/vms", true}, {"work/layers", true}, {"work/layers/images", true}, {"work/kernel", false}} {
		p := filepath.Join(dir, d.path)
		if err := os.Mkdir(p, 0o755); err != nil {
			return e, err
		}
		if d.mine {
			if err := os.Chown(p, uid, gid); err != nil {
				return e, err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(e.kernel, "vmlinux"), []byte("kernel"), 0o644); err != nil {
		return e, err
	}
	lo, err := freeBand()
	if err != nil {
		return e, err
	}
	e.cfg = cfgFields{WorkDir: e.work, Firecracker: filepath.Join(dir, "tools", "firecracker"),
		Jailer: filepath.Join(dir, "tools", "jailer"), KernelDir: e.kernel, LayerDir: filepath.Join(e.work, "layers"),
		Cgroup: "hyper-test-" + strconv.Itoa(os.Getpid()), Lo: lo, Hi: lo + 99}
	if err := os.WriteFile(e.config, []byte(e.cfg.text()), 0o644); err != nil {
		return e, err
	}
	if e.hier, err = hierarchies(); err != nil {
		return e, err
	}
	build := func(out, pkg, ldflags string) error {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ldflags, "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w: %s", pkg, err, b)
		}
		return nil
	}
	if err := build(e.helper, "github.com/hypervm/hyper/cmd/hyper-suidhelper", "-X main.configPath="+e.config+" -X main.version=e2e"); err != nil {
		return e, err
	}
	if err := build(e.cfg.Jailer, "./testdata/recorder", "-X main.out="+e.record); err != nil {
		return e, err
	}
	if err := run("cp", e.helper, e.plain); err != nil {
		return e, err
	}
	if err := run("cp", e.cfg.Jailer, e.probe); err != nil {
		return e, err
	}
	if err := os.WriteFile(e.cfg.Firecracker, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		return e, err
	}
	// chown clears the setuid bit, so chmod comes last.
	if err := os.Chown(e.helper, 0, 0); err != nil {
		return e, err
	}
	if err := syscall.Chmod(e.helper, 0o4755); err != nil {
		return e, err
	}
	e.client = &helper.Client{Path: e.helper, Credential: e.cred()}
	return e, nil
}

func (e *testEnv) cred() *syscall.Credential { return &syscall.Credential{Uid: e.uid, Gid: e.gid} }

// teardown removes the test's cgroups (by name) and its tree.
func (e *testEnv) teardown() {
	for _, h := range e.hier {
		parent := filepath.Join(h, e.cfg.Cgroup)
		entries, _ := os.ReadDir(parent)
		for _, ent := range entries {
			if ent.IsDir() {
				os.Remove(filepath.Join(parent, ent.Name()))
			}
		}
		os.Remove(parent)
	}
	os.RemoveAll(e.dir)
}

// hierarchies are the cgroup directories the helper uses on this machine.
func hierarchies() ([]string, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &fs); err != nil {
		return nil, err
	}
	if fs.Type == unix.CGROUP2_SUPER_MAGIC {
		return []string{"/sys/fs/cgroup"}, nil
	}
	var h []string
	for _, c := range []string{"cpu", "memory", "freezer", "pids"} {
		h = append(h, filepath.Join("/sys/fs/cgroup", c))
	}
	return h, nil
}

// freeBand finds 100 ids that no user or group in /etc/passwd, /etc/group,
// /etc/subuid or /etc/subgid uses.
func freeBand() (int64, error) {
	var used [][2]int64
	for _, f := range []string{"/etc/passwd", "/etc/group", "/etc/subuid", "/etc/subgid"} {
		data, err := os.ReadFile(f)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return 0, err
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			fields := strings.Split(sc.Text(), ":")
			if strings.HasPrefix(f, "/etc/sub") && len(fields) == 3 {
				start, _ := strconv.ParseInt(fields[1], 10, 64)
				n, _ := strconv.ParseInt(fields[2], 10, 64)
				used = append(used, [2]int64{start, start + n})
			} else if len(fields) >= 3 {
				id, _ := strconv.ParseInt(fields[2], 10, 64)
				used = append(used, [2]int64{id, id + 1})
			}
		}
	}
	for _, lo := range []int64{3_900_000_000, 3_800_000_000, 2_900_000_000, 1_900_000_000} {
		if !slices.ContainsFunc(used, func(r [2]int64) bool { return r[0] < lo+100 && r[1] > lo }) {
			return lo, nil
		}
	}
	return 0, errors.New("no free uid band")
}

// setConfig rewrites the test config and restores it after the test.
func (e *testEnv) setConfig(t *testing.T, mutate func(*cfgFields)) {
	t.Helper()
	c := e.cfg
	mutate(&c)
	e.writeRawConfig(t, c.text())
}

func (e *testEnv) writeRawConfig(t *testing.T, text string) {
	t.Helper()
	if err := os.WriteFile(e.config, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(e.config, []byte(e.cfg.text()), 0o644); err != nil {
			t.Error(err)
		}
	})
}

// vm is one VM's files as hyperd would leave them before jail prepare.
type vm struct {
	id, image string
	dir       string // <work>/vms/<id>
	disk      string
	initrd    string // the shared initramfs, below kernel.dir
	config    string // the VM's config disk
	imagePath string
	uid       uint32
}

func randomID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	b := make([]byte, 16)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[b[i]%32]
	}
	return "v" + string(b)
}

func (e *testEnv) newVM(t *testing.T) *vm {
	t.Helper()
	img := make([]byte, 32)
	rand.Read(img)
	v := &vm{id: randomID(), image: fmt.Sprintf("%x", img), uid: uint32(e.cfg.Lo) + 1}
	v.dir = filepath.Join(e.vms, v.id)
	v.disk = filepath.Join(v.dir, "disk.ext4")
	v.initrd = filepath.Join(e.kernel, suid.InitramfsDir, v.id+".cpio")
	v.config = filepath.Join(v.dir, suid.JailConfig)
	v.imagePath = filepath.Join(e.images, v.image+".ext4")
	if err := os.Mkdir(v.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(v.initrd), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{v.dir, 0}, {v.disk, 0o640}, {v.initrd, 0o644}, {v.config, 0o644}, {v.imagePath, 0o644}} {
		if f.mode != 0 {
			if err := os.WriteFile(f.path, []byte(filepath.Base(f.path)), f.mode); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chown(f.path, int(e.uid), int(e.gid)); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if err := e.client.RemoveJail(ctx, v.id); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if _, err := e.client.RemoveCgroup(ctx, v.id); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		os.RemoveAll(v.dir)
		os.Remove(v.initrd)
		os.Remove(v.imagePath)
	})
	return v
}

func (v *vm) jail() helper.Jail {
	return helper.Jail{VM: v.id, UID: v.uid, GID: v.uid, Image: v.image, Initrd: filepath.Base(v.initrd)}
}

func (e *testEnv) jailDir(id string) string  { return filepath.Join(e.work, "jails", "firecracker", id) }
func (e *testEnv) jailRoot(id string) string { return filepath.Join(e.jailDir(id), "root") }

func (e *testEnv) prepare(t *testing.T, v *vm) {
	t.Helper()
	if _, err := e.client.PrepareJail(context.Background(), v.jail()); err != nil {
		t.Fatal(err)
	}
}

// runAs runs bin with argv as the test user and an empty environment.
func (e *testEnv) runAs(t *testing.T, bin string, argv ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, argv...)
	cmd.Env = []string{}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred()}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("run %s: %v", bin, err)
	}
	return code, out.String(), errb.String()
}

// fileState is what a refusal must leave unchanged.
type fileState struct {
	mode, uid, gid uint32
	size           int64
	ino, nlink     uint64
	mtime, ctime   unix.Timespec
	link           string
}

// snapshot records every file under the test tree and every cgroup under
// the test parent: owners, modes, inodes, link counts, change times.
func (e *testEnv) snapshot(t *testing.T) map[string]fileState {
	t.Helper()
	snap := map[string]fileState{}
	walk := func(root string, dirsOnly bool) {
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if dirsOnly {
				if d.IsDir() {
					snap[path] = fileState{}
				}
				return nil
			}
			var st unix.Stat_t
			if unix.Lstat(path, &st) != nil {
				return nil
			}
			link, _ := os.Readlink(path)
			snap[path] = fileState{st.Mode, st.Uid, st.Gid, st.Size, st.Ino, st.Nlink, st.Mtim, st.Ctim, link}
			return nil
		})
	}
	walk(e.dir, false)
	for _, h := range e.hier {
		walk(filepath.Join(h, e.cfg.Cgroup), true)
	}
	return snap
}

func diffSnapshots(before, after map[string]fileState) []string {
	var diffs []string
	for p, b := range before {
		if a, ok := after[p]; !ok {
			diffs = append(diffs, "removed "+p)
		} else if a != b {
			diffs = append(diffs, fmt.Sprintf("changed %s: %+v -> %+v", p, b, a))
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			diffs = append(diffs, "created "+p)
		}
	}
	slices.Sort(diffs)
	return diffs
}

func statOf(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}
