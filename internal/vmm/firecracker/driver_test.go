package firecracker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/guest/guesttest"
	"github.com/hypervm/hyper/internal/guestcfg"
	"github.com/hypervm/hyper/internal/helper"
	"github.com/hypervm/hyper/internal/instance"
	"github.com/hypervm/hyper/internal/suid"
	"github.com/hypervm/hyper/internal/units"
	"github.com/hypervm/hyper/internal/vmm"
	"github.com/hypervm/hyper/internal/vmm/firecracker"
	"github.com/hypervm/hyper/internal/vmm/firecracker/fctest"
	"github.com/hypervm/hyper/internal/vmm/firecracker/fctest/fakejailer"
)

// bootTimeout bounds one TCG boot to a serving agent on a loaded 2-core
// machine.
const bootTimeout = 120 * time.Second

var (
	buildOnce sync.Once
	buildDir  string
	bins      fctest.Binaries
	agentBin  string
	buildErr  error
)

// standIns builds the stand-ins and the test agent once per test binary.
func standIns(t testing.TB) fctest.Binaries {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "hyper-fctest-"); buildErr != nil {
			return
		}
		// A jail user must be able to reach the binaries.
		if buildErr = os.Chmod(buildDir, 0o755); buildErr != nil {
			return
		}
		qemu, _ := exec.LookPath("qemu-system-x86_64")
		if bins, buildErr = fctest.Build(buildDir, qemu); buildErr != nil {
			return
		}
		agentBin = filepath.Join(buildDir, "testagent")
		cmd := exec.Command("go", "build", "-o", agentBin, "github.com/hypervm/hyper/internal/vmm/firecracker/fctest/cmd/testagent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build testagent: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return bins
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// jailUID is the user the jailed stand-in runs as: a user of its own when
// the test runs as root (as in CI), the caller otherwise.
func jailUID() uint32 {
	if os.Geteuid() == 0 {
		return 990123
	}
	return uint32(os.Getuid())
}

// fakeJail does what the setuid helper's jail ops do, without the helper:
// it places the files itself and runs the jailer stand-in directly with
// the argv the helper's jailer op builds.
type fakeJail struct {
	t       testing.TB
	work    string // work_dir: jails/, vms/, images/
	kernel  string
	bins    fctest.Binaries
	cgroups []string // extra --cgroup values
	// cgroupVersion and parentCgroup are the jailer's --cgroup-version
	// and --parent-cgroup; 2 and hyper-test when unset.
	cgroupVersion int
	parentCgroup  string
	mu            sync.Mutex
	calls         []string
	launched      []*exec.Cmd
}

func (f *fakeJail) call(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
}

func (f *fakeJail) jailDir(vm string) string {
	return filepath.Join(f.work, "jails", "firecracker", vm)
}
func (f *fakeJail) root(vm string) string { return filepath.Join(f.jailDir(vm), "root") }

// initramfsDir is <kernel.dir>/initramfs, where the helper takes a VM's
// initramfs from.
func (f *fakeJail) initramfsDir() string { return filepath.Join(f.work, "kernel", "initramfs") }

func (f *fakeJail) RemoveJail(_ context.Context, vm string) error {
	f.call("remove " + vm)
	return os.RemoveAll(f.jailDir(vm))
}

func (f *fakeJail) PrepareJail(_ context.Context, j helper.Jail) (map[string]string, error) {
	f.call("prepare " + j.VM)
	root := f.root(j.VM)
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return nil, err
	}
	if err := os.Mkdir(root, 0o700); err != nil {
		return nil, err
	}
	vmDir := filepath.Join(f.work, "vms", j.VM)
	for name, src := range map[string]string{
		"vmlinux":    f.kernel,
		"initrd.img": filepath.Join(f.initramfsDir(), j.Initrd),
		"base.ext4":  filepath.Join(f.work, "images", j.Image+".ext4"),
		"config.img": filepath.Join(vmDir, "config.img"),
	} {
		// The helper's rule for shared files: the jail user reads them
		// as "other", and may not write them.
		st, err := os.Stat(src)
		if err != nil {
			return nil, err
		}
		if st.Mode()&0o004 == 0 || st.Mode()&0o022 != 0 {
			return nil, fmt.Errorf("%s must be readable and not writable by others (mode %04o)", src, st.Mode().Perm())
		}
		if err := place(src, filepath.Join(root, name)); err != nil {
			return nil, err
		}
	}
	disk := filepath.Join(root, "disk.ext4")
	if err := os.Link(filepath.Join(vmDir, "disk.ext4"), disk); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		for _, p := range []string{root, disk} {
			if err := os.Chown(p, int(j.UID), int(j.GID)); err != nil {
				return nil, err
			}
		}
	}
	return nil, nil
}

// place links src to dst, or copies it across file systems.
func place(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (f *fakeJail) JailerCommand(ctx context.Context, vm string, uid, gid uint32, netns string) (*exec.Cmd, error) {
	f.call("jailer " + vm)
	version, parent := f.cgroupVersion, f.parentCgroup
	if version == 0 {
		version = 2
	}
	if parent == "" {
		parent = "hyper-test"
	}
	args := []string{"--id", vm, "--exec-file", f.bins.Firecracker,
		"--uid", strconv.FormatUint(uint64(uid), 10), "--gid", strconv.FormatUint(uint64(gid), 10),
		"--chroot-base-dir", filepath.Join(f.work, "jails"), "--cgroup-version", strconv.Itoa(version), "--parent-cgroup", parent}
	for _, c := range f.cgroups {
		args = append(args, "--cgroup", c)
	}
	cmd := exec.CommandContext(ctx, f.bins.Jailer, append(args, "--", "--api-sock", "/api.socket")...)
	cmd.Env = []string{}
	f.mu.Lock()
	f.launched = append(f.launched, cmd)
	f.mu.Unlock()
	return cmd, nil
}

func (f *fakeJail) grant(vm, name string) (bool, error) {
	st, err := os.Lstat(filepath.Join(f.root(vm), name))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if st.Mode().Type() != os.ModeSocket {
		return false, fmt.Errorf("%s is not a socket", name)
	}
	return true, nil
}

func (f *fakeJail) GrantAPI(_ context.Context, vm string) (bool, error) {
	return f.grant(vm, "api.socket")
}

func (f *fakeJail) GrantVsock(_ context.Context, vm string) (bool, error) {
	return f.grant(vm, "vsock.socket")
}

func (f *fakeJail) KillCgroup(context.Context, string) (int, error) {
	return 0, errors.New("the fake jail has no cgroups")
}

// pids of the processes the fake launched.
func (f *fakeJail) pids() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var pids []int
	for _, c := range f.launched {
		if c.Process != nil {
			pids = append(pids, c.Process.Pid)
		}
	}
	return pids
}

const imageID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

type env struct {
	jail   *fakeJail
	driver *firecracker.Driver
	work   string
}

// newEnv lays out a work_dir a jail user can traverse and a driver on the
// fake jail.
func newEnv(t *testing.T, kernel string) *env {
	t.Helper()
	b := standIns(t)
	work, err := os.MkdirTemp("", "hyper-fc-work-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	for _, d := range []string{"jails", "vms", "images", "kernel/initramfs"} {
		if err := os.MkdirAll(filepath.Join(work, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(work, 0o755); err != nil {
		t.Fatal(err)
	}
	j := &fakeJail{t: t, work: work, kernel: kernel, bins: b}
	d, err := firecracker.New(firecracker.Options{
		Jail: j, JailsDir: filepath.Join(work, "jails"), InitramfsDir: j.initramfsDir(),
		Owner:      func(string) (uint32, uint32, error) { return jailUID(), jailUID(), nil },
		APITimeout: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever a failed test left running dies here, by pid.
		for _, pid := range j.pids() {
			killTree(pid)
		}
	})
	return &env{jail: j, driver: d, work: work}
}

// vmConfig makes the VM's directory with placeholder files and returns
// its config.
func (e *env) vmConfig(t *testing.T, id string) vmm.Config {
	t.Helper()
	dir := filepath.Join(e.work, "vms", id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(e.jail.initramfsDir(), "test.cpio")
	for _, p := range []string{initrd, filepath.Join(dir, "config.img"), filepath.Join(dir, "disk.ext4"), filepath.Join(e.work, "images", imageID+".ext4")} {
		if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
			if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return vmm.Config{
		ID: id, Dir: dir, Kernel: guest.Kernel{Vmlinux: e.jail.kernel},
		Initrd: initrd, BaseDisk: filepath.Join(e.work, "images", imageID+".ext4"),
		WritableDisk: filepath.Join(dir, "disk.ext4"), ConfigDisk: filepath.Join(dir, "config.img"), VCPUs: 1, Memory: 256 * units.MiB,
		DiskBandwidth: units.Bandwidth(200 << 20),
	}
}

// children returns the pids whose parent is pid.
func children(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		// The command name may hold spaces; the fields after it do not.
		fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}

func killTree(pid int) {
	for _, c := range children(pid) {
		killTree(c)
	}
	if p, err := os.FindProcess(pid); err == nil {
		p.Kill()
	}
}

// alive reports whether pid runs (a zombie does not count).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

func assertGone(t *testing.T, what string, pids ...int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(pid) {
			t.Errorf("%s pid %d still runs", what, pid)
		}
	}
}

func assertNoJail(t *testing.T, e *env, c vmm.Config) {
	t.Helper()
	if _, err := os.Stat(e.jail.jailDir(c.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail %s left behind (%v)", e.jail.jailDir(c.ID), err)
	}
	if _, err := os.Stat(filepath.Join(c.Dir, firecracker.PidFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pidfile left behind (%v)", err)
	}
}

func TestConfigRefusedBeforeAnyJailOp(t *testing.T) {
	e := newEnv(t, "/nonexistent/vmlinux")
	good := e.vmConfig(t, "vbadconfigaaaaaaa")
	cases := map[string]func(c *vmm.Config){
		"Kernel":       func(c *vmm.Config) { c.Kernel = guest.Kernel{Vmlinuz: "/boot/vmlinuz"} },
		"Initrd":       func(c *vmm.Config) { c.Initrd = "/elsewhere/initrd.img" },
		"WritableDisk": func(c *vmm.Config) { c.WritableDisk = filepath.Join(c.Dir, "other.ext4") },
		"ConfigDisk":   func(c *vmm.Config) { c.ConfigDisk = filepath.Join(c.Dir, "other.img") },
		"BaseDisk":     func(c *vmm.Config) { c.BaseDisk = "/images/busybox.ext4" },
		"VCPUs":        func(c *vmm.Config) { c.VCPUs = 0 },
		"ID":           func(c *vmm.Config) { c.ID = "vm-0" },
	}
	for field, mutate := range cases {
		c := good
		mutate(&c)
		_, err := e.driver.Start(context.Background(), c)
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: got %v, want an error naming the field", field, err)
		}
	}
	if len(e.jail.calls) != 0 {
		t.Errorf("a refused config reached the helper: %q", e.jail.calls)
	}
}

// TestFirecrackerRefusalCarriesFault boots a kernel Firecracker cannot
// load (a bzImage-like file): the stand-in refuses InstanceStart, the
// error carries its fault message, and nothing is left behind.
func TestFirecrackerRefusalCarriesFault(t *testing.T) {
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(kernel, append([]byte("MZ"), make([]byte, 1024)...), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, kernel)
	c := e.vmConfig(t, "vbadkernelaaaaaaa")
	_, err := e.driver.Start(context.Background(), c)
	if err == nil || !strings.Contains(err.Error(), "configure instance start") || !strings.Contains(err.Error(), "400 Bad Request: Cannot load kernel") ||
		!strings.Contains(err.Error(), "Invalid Elf magic number") {
		t.Fatalf("got %v, want InstanceStart refused with Firecracker's fault message", err)
	}
	t.Logf("start refused: %v", err)
	if _, ok := firecracker.IsAPIError(err); !ok {
		t.Errorf("%v does not carry the API error", err)
	}
	if want := []string{"remove " + c.ID, "prepare " + c.ID, "jailer " + c.ID, "remove " + c.ID}; !slices.Equal(e.jail.calls, want) {
		t.Errorf("helper calls %q, want %q", e.jail.calls, want)
	}
	assertGone(t, "firecracker", e.jail.pids()...)
	assertNoJail(t, e, c)
}

// TestJailerRefusalSurfaces makes the jailer refuse its arguments: Start
// fails early with the jailer's own message from the console log.
func TestJailerRefusalSurfaces(t *testing.T) {
	e := newEnv(t, "/nonexistent/vmlinux")
	e.jail.kernel = filepath.Join(e.work, "images", imageID+".ext4")
	e.jail.cgroups = []string{"memory.limit_in_bytes=1"} // a v1 file under cgroup v2
	c := e.vmConfig(t, "vjailerrefusesaaa")
	start := time.Now()
	_, err := e.driver.Start(context.Background(), c)
	if err == nil || !strings.Contains(err.Error(), "firecracker exited") || !strings.Contains(err.Error(), "not a cgroup v2 file") {
		t.Fatalf("got %v, want the jailer's refusal", err)
	}
	t.Logf("start refused: %v", err)
	if time.Since(start) > 10*time.Second {
		t.Errorf("the jailer's exit took %v to notice", time.Since(start))
	}
	assertGone(t, "jailer", e.jail.pids()...)
	assertNoJail(t, e, c)
}

// TestJailerWithoutRoot runs the jailer stand-in unprivileged: like the
// real jailer, it cannot become another user, and says so.
func TestJailerWithoutRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the jailer as another user")
	}
	b := standIns(t)
	cmd := exec.Command(b.Jailer, "--id", "vnoroot", "--exec-file", b.Firecracker, "--uid", "0", "--gid", "0",
		"--chroot-base-dir", t.TempDir(), "--", "--api-sock", "/api.socket")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not running as root: cannot switch to uid 0 gid 0") {
		t.Errorf("got %v: %s", err, out)
	}
}

// memoryHierarchy finds where the memory controller is: the cgroup v2
// mount when it offers memory, else the v1 memory hierarchy.
func memoryHierarchy() (version int, base, file, value string, ok bool) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return 0, "", "", "", false
	}
	var v1 string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		if f[2] == "cgroup2" {
			if c, err := os.ReadFile(filepath.Join(f[1], "cgroup.controllers")); err == nil && slices.Contains(strings.Fields(string(c)), "memory") {
				return 2, f[1], "memory.max", "268435456", true
			}
		}
		if f[2] == "cgroup" && slices.Contains(strings.Split(f[3], ","), "memory") {
			v1 = f[1]
		}
	}
	if v1 != "" {
		return 1, v1, "memory.limit_in_bytes", "268435456", true
	}
	return 0, "", "", "", false
}

// TestJailerAppliesCgroups: as root, the jailer stand-in creates
// <hierarchy>/<parent>/<id>, writes the --cgroup value and moves itself
// (so Firecracker) in, as the real jailer does.
func TestJailerAppliesCgroups(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	version, base, file, value, ok := memoryHierarchy()
	if !ok {
		t.Skip("no cgroup hierarchy with the memory controller")
	}
	b := standIns(t)
	parent := fmt.Sprintf("hyper-fctest-%d", os.Getpid())
	id := "vcgroupaaaaaaaaaa"
	dir := filepath.Join(base, parent, id)
	chroot := t.TempDir()
	cmd := exec.Command(b.Jailer, "--id", id, "--exec-file", b.Firecracker, "--uid", "0", "--gid", "0",
		"--chroot-base-dir", chroot, "--cgroup-version", strconv.Itoa(version), "--parent-cgroup", parent,
		"--cgroup", file+"="+value, "--", "--api-sock", "/api.socket")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		os.Remove(dir)
		os.Remove(filepath.Join(base, parent))
	})
	sock := filepath.Join(chroot, "firecracker", id, "root", "api.socket")
	for deadline := time.Now().Add(10 * time.Second); !fileExists(sock); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the firecracker stand-in never served its API")
		}
	}
	got, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil || strings.TrimSpace(string(got)) != value {
		t.Errorf("%s = %q %v, want %s", file, got, err, value)
	}
	procs := "tasks"
	if version == 2 {
		procs = "cgroup.procs"
	}
	members, _ := os.ReadFile(filepath.Join(dir, procs))
	if !slices.Contains(strings.Fields(string(members)), strconv.Itoa(cmd.Process.Pid)) {
		t.Errorf("firecracker %d not in %s (%q)", cmd.Process.Pid, dir, members)
	}
}

func TestAttachWithoutVM(t *testing.T) {
	e := newEnv(t, "/nonexistent/vmlinux")
	dir := t.TempDir()
	if _, err := e.driver.Attach(context.Background(), "vnothingaaaaaaaaa", dir); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("no pidfile: got %v, want ErrNotRunning", err)
	}
	// A pidfile naming a process that is not this VM's Firecracker.
	os.WriteFile(filepath.Join(dir, firecracker.PidFile), []byte(strconv.Itoa(os.Getpid())), 0o644)
	if _, err := e.driver.Attach(context.Background(), "vnothingaaaaaaaaa", dir); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("foreign pid: got %v, want ErrNotRunning", err)
	}
}

// --- a real guest -------------------------------------------------------

func tool(t testing.TB, name, pkg string) string {
	t.Helper()
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p
		}
	}
	t.Skipf("needs %s (Debian %s)", name, pkg)
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// busyboxImage writes an ext4 base image with a static busybox and a motd.
func busyboxImage(t testing.TB, path string) {
	t.Helper()
	mke2fs := tool(t, "mke2fs", "e2fsprogs")
	if !fileExists("/bin/busybox") {
		t.Skip("needs a static /bin/busybox (Debian busybox-static)")
	}
	root := t.TempDir()
	for _, d := range []string{"bin", "etc", "tmp", "root", "dev", "proc", "sys", "run"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	if err := place("/bin/busybox", filepath.Join(root, "bin/busybox")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(root, "bin/busybox"), 0o755)
	for _, a := range []string{"sh", "sleep", "cat"} {
		os.Symlink("busybox", filepath.Join(root, "bin", a))
	}
	for name, body := range map[string]string{"etc/motd": "hello from the base image\n", "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "etc/group": "root:x:0:\n"} {
		os.WriteFile(filepath.Join(root, name), []byte(body), 0o644)
	}
	if out, err := exec.Command(mke2fs, "-t", "ext4", "-q", "-F", "-d", root, path, "32M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
}

func writableDisk(t testing.TB, path string) {
	t.Helper()
	mke2fs := tool(t, "mke2fs", "e2fsprogs")
	os.Remove(path)
	if out, err := exec.Command(mke2fs, "-t", "ext4", "-q", "-F", path, "256M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
}

// realGuest boots VM id on a busybox image with the real kernel, the
// real guest init and the test agent, through the driver and the
// stand-ins, and returns it with its environment.
func realGuest(t *testing.T, id string) (*env, vmm.Config, vmm.VM) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a guest under TCG")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skipf("needs qemu-system-x86_64 (Debian qemu-system-x86): %v", err)
	}
	k := guesttest.Kernel(t)
	if k.Vmlinux == "" {
		t.Skip("the guest kernel provider gave no ELF vmlinux")
	}
	standIns(t)
	e := newEnv(t, k.Vmlinux)
	initfs, err := guest.BuildInitramfs(e.jail.initramfsDir(), k, agentBin, guest.InitramfsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := e.vmConfig(t, id)
	c.Initrd = initfs.Path
	// The smallest instance type, in the cgroup the node would give it.
	typ := instance.All()[0]
	c.Memory = typ.Memory
	capMemory(t, e, c.ID, typ)
	busyboxImage(t, c.BaseDisk)
	writableDisk(t, c.WritableDisk)
	os.Remove(c.ConfigDisk)
	cfg := &guestcfg.VM{ID: c.ID, Image: guestcfg.Image{Cmd: []string{"/bin/sleep", "3600"}, Env: []string{"PATH=/bin"}}}
	if err := guestcfg.WriteDisk(c.ConfigDisk, cfg); err != nil {
		t.Fatal(err)
	}
	c.BootArgs = os.Getenv("HYPER_TEST_BOOT_ARGS")
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	v, err := e.driver.Start(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(v.ConsolePath())
			t.Logf("console of %s:\n%s", id, b)
		}
	})
	return e, c, v
}

// capMemory has the jailer cap VM id's memory cgroup as the node caps a
// VM of type typ (the guest's memory plus instance.VMMOverhead), so that a
// stand-in needing more than real Firecracker fails here, with the reason,
// rather than as a guest that dies on its own under hyperd. It needs root
// and a cgroup hierarchy with the memory controller, and leaves the VM
// uncapped without them.
func capMemory(t *testing.T, e *env, id string, typ instance.Type) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Log("not root: the VM's memory is not capped")
		return
	}
	version, base, file, _, ok := memoryHierarchy()
	if !ok {
		t.Log("no cgroup hierarchy with the memory controller: the VM's memory is not capped")
		return
	}
	parent := fmt.Sprintf("hyper-fctest-%d", os.Getpid())
	e.jail.cgroupVersion, e.jail.parentCgroup = version, parent
	e.jail.cgroups = append(e.jail.cgroups, file+"="+strconv.FormatInt(int64(typ.Memory+instance.VMMOverhead), 10))
	dir := filepath.Join(base, parent, id)
	t.Cleanup(func() {
		if n := oomKills(version, dir); n > 0 {
			t.Errorf("the kernel OOM-killed %d process(es) in %s: the stand-ins need more than the guest's %v plus %v",
				n, dir, typ.Memory, instance.VMMOverhead)
		}
		for _, pid := range e.jail.pids() {
			killTree(pid)
		}
		// The cgroup can go once its last process is reaped.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			err := os.Remove(dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("remove cgroup: %v", err)
				return
			}
		}
		// Another VM of the test may still use the parent.
		os.Remove(filepath.Join(base, parent))
	})
}

// oomKills reads how many processes the kernel OOM-killed in the memory
// cgroup dir (cgroup v1 memory.oom_control, v2 memory.events).
func oomKills(version int, dir string) int {
	file := "memory.events"
	if version == 1 {
		file = "memory.oom_control"
	}
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if n, ok := strings.CutPrefix(line, "oom_kill "); ok {
			v, _ := strconv.Atoi(strings.TrimSpace(n))
			return v
		}
	}
	return 0
}

// dialAgent waits for the guest's agent through the VM's vsock socket.
func dialAgent(ctx context.Context, t *testing.T, v vmm.VM) *agent.Client {
	t.Helper()
	dctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	cl, err := agent.Dial(dctx, v.DialAgent)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// TestBootRealGuest drives the whole Firecracker path to a real guest:
// jail, jailer, API configuration, InstanceStart, vsock handshake to the
// agent, pause/resume, re-attach as a restarted daemon would, stop.
func TestBootRealGuest(t *testing.T) {
	e, c, v := realGuest(t, "vrealguestaaaaaaa")
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	pid := v.Pid()
	qemus := children(pid)
	if len(qemus) != 1 {
		t.Errorf("firecracker %d has children %v, want one QEMU", pid, qemus)
	}
	checkJailed(t, e, c.ID, pid)

	health := func(v vmm.VM) {
		t.Helper()
		cl := dialAgent(ctx, t, v)
		defer cl.Close()
		// The agent channel carries one connection: a second one is
		// refused at once (and retried by clients), never left hanging.
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		if c, err := v.DialAgent(sctx); !errors.Is(err, agent.ErrNotReady) {
			t.Errorf("second agent connection: %v, want ErrNotReady", err)
			if c != nil {
				c.Close()
			}
		}
		scancel()
		h, err := cl.Health(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if h.GetVmId() != c.ID {
			t.Errorf("agent of %q answered", h.GetVmId())
		}
		var motd bytes.Buffer
		if _, err := cl.ReadFile(ctx, "/etc/motd", &motd); err != nil {
			t.Fatal(err)
		}
		if motd.String() != "hello from the base image\n" {
			t.Errorf("motd %q", motd.String())
		}
	}
	health(v)

	for _, step := range []struct {
		do   func(context.Context) error
		want vmm.State
	}{{v.Pause, vmm.Paused}, {v.Resume, vmm.Running}} {
		if err := step.do(ctx); err != nil {
			t.Fatal(err)
		}
		if s, err := v.Status(ctx); err != nil || s != step.want {
			t.Fatalf("status %q %v, want %q", s, err, step.want)
		}
	}

	// A restarted daemon re-attaches from the VM's directory.
	d2, err := firecracker.New(firecracker.Options{Jail: e.jail, JailsDir: filepath.Join(e.work, "jails"), InitramfsDir: e.jail.initramfsDir(),
		Owner: func(string) (uint32, uint32, error) { return jailUID(), jailUID(), nil }})
	if err != nil {
		t.Fatal(err)
	}
	v2, err := d2.Attach(ctx, c.ID, c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if v2.Pid() != pid {
		t.Errorf("attached pid %d, want %d", v2.Pid(), pid)
	}
	health(v2)

	if err := v2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	assertGone(t, "firecracker", pid)
	assertGone(t, "qemu", qemus...)
	assertNoJail(t, e, c)
	if s, err := v2.Status(ctx); err != nil || s != vmm.Exited {
		t.Errorf("status after stop %q %v", s, err)
	}
	if err := v.Wait(ctx); err != nil {
		t.Errorf("wait on the first handle: %v", err)
	}
	if _, err := d2.Attach(ctx, c.ID, c.Dir); !errors.Is(err, vmm.ErrNotRunning) {
		t.Errorf("attach after stop: %v, want ErrNotRunning", err)
	}
	if err := v2.Stop(ctx); err != nil {
		t.Errorf("second stop: %v", err)
	}
}

// TestGuestRebootEndsFirecracker: as with Firecracker on x86, a guest
// reboot ends the VMM, while a guest power-off leaves it running with the
// guest halted.
func TestGuestRebootEndsFirecracker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*bootTimeout)
	defer cancel()
	for _, tc := range []struct {
		id      string
		reboot  bool
		console string // what the guest kernel says last
	}{
		{"vrebootaaaaaaaaaa", true, "reboot: Restarting system"},
		{"vpoweroffaaaaaaaa", false, "reboot: Power down"},
	} {
		reboot := tc.reboot
		_, c, v := realGuest(t, tc.id)
		cl := dialAgent(ctx, t, v)
		if err := cl.Shutdown(ctx, reboot, time.Second); err != nil {
			t.Fatal(err)
		}
		cl.Close()
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		err := v.Wait(wctx)
		wcancel()
		switch {
		case reboot && err != nil:
			t.Errorf("%s: firecracker still runs after a guest reboot: %v", c.ID, err)
		case !reboot && err == nil:
			t.Errorf("%s: firecracker exited on a guest power-off", c.ID)
		}
		if err := v.Stop(ctx); err != nil {
			t.Error(err)
		}
		// The guest really went down the way it was asked to.
		if b, _ := os.ReadFile(v.ConsolePath()); !strings.Contains(string(b), tc.console) {
			t.Errorf("%s: console lacks %q:\n%s", c.ID, tc.console, b)
		}
	}
}

// checkJailed checks what the jailer stand-in did: the Firecracker
// stand-in runs as the jail user, in the jail root, with the argv the
// real jailer passes.
func checkJailed(t *testing.T, e *env, id string, pid int) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.jail.jailDir(id), fakejailer.RecordFile))
	if err != nil {
		t.Fatal(err)
	}
	var rec fakejailer.Record
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	if len(rec.Exec) < 4 || rec.Exec[0] != "firecracker" || rec.Exec[1] != "--id="+id ||
		!slices.Equal(rec.Exec[len(rec.Exec)-2:], []string{"--api-sock", "/api.socket"}) {
		t.Errorf("exec argv %q", rec.Exec)
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	want := fmt.Sprintf("Uid:\t%d\t%d\t%d", jailUID(), jailUID(), jailUID())
	if !strings.Contains(string(status), want) {
		t.Errorf("firecracker does not run as the jail user (want %q)", want)
	}
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil || cwd != e.jail.root(id) {
		t.Errorf("firecracker cwd %q %v, want the jail root", cwd, err)
	}
}

// TestInitramfsDirMatchesHelper: the node builds initramfs archives where
// the helper takes a jail's initramfs from.
func TestInitramfsDirMatchesHelper(t *testing.T) {
	if suid.InitramfsDir != guest.InitramfsDir {
		t.Fatalf("suid.InitramfsDir = %q, guest.InitramfsDir = %q", suid.InitramfsDir, guest.InitramfsDir)
	}
}
