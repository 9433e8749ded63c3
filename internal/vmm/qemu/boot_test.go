package qemu_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/guest/guesttest"
	"github.com/hypervm/hyper/internal/guestcfg"
	"github.com/hypervm/hyper/internal/units"
	"github.com/hypervm/hyper/internal/vmm"
	"github.com/hypervm/hyper/internal/vmm/qemu"
)

// bootTimeout bounds one TCG boot to a serving agent; a boot takes about
// 3 s on an idle machine, much more on a loaded 2-core one.
const bootTimeout = 90 * time.Second

func qemuBinary(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skipf("needs qemu-system-x86_64 (Debian qemu-system-x86): %v", err)
	}
	return p
}

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

var (
	agentOnce sync.Once
	agentPath string
	agentErr  error
	agentDir  string
)

// testAgent builds the stand-in agent once per test binary.
func testAgent(t testing.TB) string {
	t.Helper()
	agentOnce.Do(func() {
		agentDir, agentErr = os.MkdirTemp("", "hyper-testagent-")
		if agentErr != nil {
			return
		}
		agentPath = filepath.Join(agentDir, "testagent")
		cmd := exec.Command("go", "build", "-o", agentPath, "./internal/testagent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			agentErr = fmt.Errorf("build testagent: %v: %s", err, out)
		}
	})
	if agentErr != nil {
		t.Fatal(agentErr)
	}
	return agentPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if agentDir != "" {
		os.RemoveAll(agentDir)
	}
	os.Exit(code)
}

// busyboxDisk makes an ext4 base image holding a static busybox with its
// applet links, and the given extra files.
func busyboxDisk(t testing.TB, path string, files map[string]string) {
	t.Helper()
	mke2fs := tool(t, "mke2fs", "e2fsprogs")
	bb := "/bin/busybox"
	if !fileExists(bb) {
		t.Skip("needs a static /bin/busybox (Debian busybox-static)")
	}
	root := t.TempDir()
	for _, d := range []string{"bin", "sbin", "etc", "tmp", "root", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		os.Symlink("busybox", filepath.Join(root, "bin", applet))
	}
	files["etc/passwd"] = "root:x:0:0:root:/root:/bin/sh\n"
	files["etc/group"] = "root:x:0:\n"
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(mke2fs, "-t", "ext4", "-q", "-F", "-d", root, path, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs base: %v: %s", err, out)
	}
}

func writableDisk(t testing.TB, path string) {
	t.Helper()
	mke2fs := tool(t, "mke2fs", "e2fsprogs")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(1 << 30)
	f.Close()
	if out, err := exec.Command(mke2fs, "-t", "ext4", "-q", "-F", path).CombinedOutput(); err != nil {
		t.Fatalf("mke2fs writable: %v: %s", err, out)
	}
}

// rig is what a boot test needs: a driver, the kernel and the shared
// initramfs.
type rig struct {
	driver *qemu.Driver
	kernel *guest.Kernel
	initfs *guest.Initramfs
}

func newRig(t testing.TB) *rig {
	t.Helper()
	qemuBinary(t)
	return newRigWithAgent(t, testAgent(t))
}

func newRigWithAgent(t testing.TB, agentBin string) *rig {
	t.Helper()
	bin := qemuBinary(t)
	k := guesttest.Kernel(t)
	initfs, err := guest.BuildInitramfs(t.TempDir(), k, agentBin, guest.InitramfsOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := qemu.New(qemu.Options{QEMU: bin, Accel: qemu.AccelTCG})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{driver: d, kernel: k, initfs: initfs}
}

// boot starts a VM on the given disks and stops it when the test ends.
func (r *rig) boot(t testing.TB, id, dir, base, writable string, img guestcfg.Image) vmm.VM {
	t.Helper()
	configDisk := filepath.Join(dir, "config.img")
	os.Remove(configDisk)
	if err := guestcfg.WriteDisk(configDisk, &guestcfg.VM{ID: id, Image: img}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := r.driver.Start(ctx, vmm.Config{
		ID: id, Dir: dir, Kernel: *r.kernel, Initrd: r.initfs.Path, ConfigDisk: configDisk,
		BaseDisk: base, WritableDisk: writable, VCPUs: 1, Memory: 256 * units.MiB,
		BootArgs: os.Getenv("HYPER_TEST_BOOT_ARGS"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopAndCheck(t, v)
		if t.Failed() {
			t.Logf("console of %s:\n%s", id, consoleOf(v))
		}
	})
	return v
}

// stopAndCheck stops v and fails the test if its QEMU survives.
func stopAndCheck(t testing.TB, v vmm.VM) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := v.Stop(ctx); err != nil {
		t.Errorf("stop: %v", err)
	}
	if err := processGone(v.Pid()); err != nil {
		t.Error(err)
	}
}

func processGone(pid int) error {
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(b), "qemu") {
			return fmt.Errorf("qemu pid %d still runs", pid)
		}
	}
	return nil
}

// agentConn talks the stand-in agent's JSON-line protocol.
type agentConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialAgent(t testing.TB, v vmm.VM) *agentConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	c, err := v.DialAgent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := &agentConn{c: c, r: bufio.NewReader(c)}
	// The first request is answered once the guest has booted.
	c.SetDeadline(time.Now().Add(bootTimeout))
	if out, code := a.exec(t, "true"); code != 0 {
		t.Fatalf("agent not healthy: %d %q\nconsole:\n%s", code, out, consoleOf(v))
	}
	return a
}

func (a *agentConn) exec(t testing.TB, argv ...string) (string, int) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"argv": argv})
	if _, err := a.c.Write(append(b, '\n')); err != nil {
		t.Fatalf("exec %q: %v", argv, err)
	}
	line, err := a.r.ReadBytes('\n')
	if err != nil {
		t.Fatalf("exec %q: %v", argv, err)
	}
	var rep struct {
		Output string `json:"output"`
		Code   int    `json:"code"`
		Error  string `json:"error"`
	}
	if err := json.Unmarshal(line, &rep); err != nil {
		t.Fatalf("exec %q: reply %q: %v", argv, line, err)
	}
	if rep.Error != "" {
		t.Fatalf("exec %q: %s", argv, rep.Error)
	}
	return rep.Output, rep.Code
}

func consoleOf(v vmm.VM) string {
	b, _ := os.ReadFile(v.ConsolePath())
	return string(b)
}

func sha256File(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

func TestPauseResumeAttach(t *testing.T) {
	r := newRig(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.ext4")
	writable := filepath.Join(dir, "writable.ext4")
	busyboxDisk(t, base, map[string]string{})
	writableDisk(t, writable)
	v := r.boot(t, "vm2", dir, base, writable, guestcfg.Image{})
	a := dialAgent(t, v)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	assertState := func(v vmm.VM, want vmm.State) {
		t.Helper()
		if got, err := v.Status(ctx); err != nil || got != want {
			t.Fatalf("status = %q, %v; want %q", got, err, want)
		}
	}
	assertState(v, vmm.Running)
	if err := v.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	assertState(v, vmm.Paused)

	// A second driver (a restarted daemon) re-attaches from the directory.
	d2, err := qemu.New(qemu.Options{QEMU: qemuBinary(t), Accel: qemu.AccelTCG})
	if err != nil {
		t.Fatal(err)
	}
	v2, err := d2.Attach(ctx, "vm2", dir)
	if err != nil {
		t.Fatal(err)
	}
	if v2.Pid() != v.Pid() {
		t.Fatalf("attached to pid %d, started %d", v2.Pid(), v.Pid())
	}
	assertState(v2, vmm.Paused)
	if err := v2.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	assertState(v, vmm.Running)
	if out, code := a.exec(t, "echo", "resumed"); out != "resumed\n" || code != 0 {
		t.Fatalf("after resume: %q %d", out, code)
	}

	// Another VM's directory does not attach to this QEMU.
	if _, err := d2.Attach(ctx, "other", t.TempDir()); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("attach to an empty dir: %v, want ErrNotRunning", err)
	}
	if err := v2.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	assertState(v, vmm.Exited)
	if err := v.Stop(ctx); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	if _, err := d2.Attach(ctx, "vm2", dir); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("attach after stop: %v, want ErrNotRunning", err)
	}
	for _, f := range []string{qemu.PidFile, qemu.QMPSocket, qemu.AgentSocket} {
		if fileExists(filepath.Join(dir, f)) {
			t.Errorf("%s left behind after stop", f)
		}
	}
}

func TestBaseDiskNotExt4(t *testing.T) {
	r := newRig(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	writable := filepath.Join(dir, "writable.ext4")
	if err := os.WriteFile(base, make([]byte, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	writableDisk(t, writable)
	v := r.boot(t, "vm3", dir, base, writable, guestcfg.Image{})
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	// Init reports the error on the console and powers the VM off.
	if err := v.Wait(ctx); err != nil {
		t.Fatalf("VM with a bad base disk did not power off: %v\nconsole:\n%s", err, consoleOf(v))
	}
	console := consoleOf(v)
	if !strings.Contains(console, "hyper-init: fatal: mount /dev/vda (ext4) on /run/hyper/base") ||
		!strings.Contains(console, "does not hold an ext4 filesystem") {
		t.Fatalf("console lacks a clear error:\n%s", console)
	}
	if st, err := v.Status(ctx); err != nil || st != vmm.Exited {
		t.Fatalf("status = %q, %v; want exited", st, err)
	}
}

func TestStartErrorsLeaveNothingRunning(t *testing.T) {
	r := newRig(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.ext4")
	writable := filepath.Join(dir, "writable.ext4")
	busyboxDisk(t, base, map[string]string{})
	writableDisk(t, writable)
	configDisk := filepath.Join(dir, "config.img")
	if err := guestcfg.WriteDisk(configDisk, &guestcfg.VM{ID: "x"}); err != nil {
		t.Fatal(err)
	}
	cfg := vmm.Config{ID: "vm4", Dir: dir, Kernel: *r.kernel, Initrd: r.initfs.Path, ConfigDisk: configDisk, BaseDisk: base,
		WritableDisk: writable, VCPUs: 1, Memory: 256 * units.MiB}
	ctx := context.Background()

	missing := cfg
	missing.WritableDisk = filepath.Join(dir, "nope.ext4")
	if _, err := r.driver.Start(ctx, missing); err == nil || !strings.Contains(err.Error(), "nope.ext4") {
		t.Fatalf("missing disk: %v", err)
	}
	// QEMU itself refuses a writable disk it cannot lock or open for
	// writing: a directory.
	bad := cfg
	bad.WritableDisk = t.TempDir()
	_, err := r.driver.Start(ctx, bad)
	if err == nil || !strings.Contains(err.Error(), "qemu") {
		t.Fatalf("directory as disk: %v", err)
	}
	t.Logf("QEMU's refusal: %v", err)
	invalid := cfg
	invalid.Memory = 1
	if _, err := r.driver.Start(ctx, invalid); err == nil || !strings.Contains(err.Error(), "Memory") {
		t.Fatalf("1-byte memory: %v", err)
	}
	for _, f := range []string{qemu.PidFile, qemu.QMPSocket, qemu.AgentSocket} {
		if fileExists(filepath.Join(dir, f)) {
			t.Errorf("%s left behind by a failed start", f)
		}
	}
	if pids := childQEMUs(t); len(pids) != 0 {
		t.Fatalf("qemu processes left: %v", pids)
	}
}

// childQEMUs lists QEMU processes whose command line names a test
// directory of this process (daemonized QEMUs are not our children).
func childQEMUs(t testing.TB) []int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	var pids []int
	marker := filepath.Join(os.TempDir(), t.Name())
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), marker) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestProbeKVM(t *testing.T) {
	bin := qemuBinary(t)
	k := guesttest.Kernel(t)
	const timeout = 4 * time.Second
	start := time.Now()
	ok, err := qemu.ProbeKVM(context.Background(), bin, k.Vmlinuz, timeout)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > timeout+3*time.Second {
		t.Fatalf("probe took %s, bound is %s", took, timeout)
	}
	t.Logf("KVM works: %v (took %s)", ok, time.Since(start))
	if _, err := os.Stat("/dev/kvm"); err != nil && ok {
		t.Fatal("probe says KVM works without /dev/kvm")
	}
	// The probe's QEMU is reaped: no child of ours is left.
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
			t.Errorf("child process %s left running", e.Name())
		}
	}
}
