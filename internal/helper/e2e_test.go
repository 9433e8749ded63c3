package helper_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/hypervm/hyper/internal/helper"
	"github.com/hypervm/hyper/internal/suid"
)

func TestVersionAndSysTest(t *testing.T) {
	e := need(t)
	ctx := context.Background()
	v, err := e.client.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.ConfigPath != e.config || v.Version != "e2e" || len(v.BuildID) != 64 {
		t.Errorf("version = %+v", v)
	}
	st, err := e.client.SysTest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.ConfigPresent || st.WorkDir != e.work || st.CgroupParent != e.cfg.Cgroup || st.CgroupVersion != map[int]int{1: 2, 4: 1}[len(e.hier)] {
		t.Errorf("sys-test = %+v", st)
	}
	for _, name := range []string{"firecracker", "jailer"} {
		if tool := st.Tools[name]; !tool.OK {
			t.Errorf("tool %s: %+v", name, tool)
		}
	}
}

// TestReleaseBuild builds the helper exactly as `make helper` does and
// checks that its config path is /etc/hyper/config.toml and that neither
// an environment variable nor a flag can change it.
func TestReleaseBuild(t *testing.T) {
	e := need(t)
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	bin := filepath.Join(e.dir, "release", "hyper-suidhelper")
	defer os.RemoveAll(filepath.Dir(bin))
	cmd := exec.Command("make", "--no-print-directory", "-C", "../..", "helper", "HELPER_BIN="+bin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make helper: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	cmd = exec.Command(bin, "version")
	cmd.Env = []string{"HYPER_CONFIG=" + e.config, "HYPER_CONFIG_PATH=" + e.config, "HYPER_SETUIDHELPER_CONFIG_PATH=" + e.config,
		"HYPER_SETUIDHELPER_IS_INSECURE_MODE=1", "HYPER_SUIDHELPER_CONFIG=" + e.config}
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	var v suid.Version
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatal(err)
	}
	if v.ConfigPath != "/etc/hyper/config.toml" || v.BuildID != hex.EncodeToString(sum[:]) {
		t.Fatalf("release build reports %+v", v)
	}
	for _, argv := range [][]string{{"version", "--config", e.config}, {"--config", e.config, "version"}, {"sys-test", "--config", e.config}} {
		code, _, stderr := e.runAs(t, bin, argv...)
		if code != 2 || !strings.Contains(stderr, "hyper-suidhelper:") {
			t.Errorf("%q: exit %d, %q; want a refusal", argv, code, stderr)
		}
	}
	if strings.Contains(string(data), e.config) {
		t.Error("the release binary contains the test config path")
	}
}

func TestJailLifecycle(t *testing.T) {
	e := need(t)
	ctx := context.Background()
	v := e.newVM(t)
	if granted, err := e.client.GrantAPI(ctx, v.id); granted || err != nil {
		t.Fatalf("grant before jail prepare = %v, %v; want pending", granted, err)
	}
	files, err := e.client.PrepareJail(ctx, v.jail())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{suid.JailKernel, suid.JailInitrd, suid.JailBaseDisk, suid.JailConfig, suid.JailDisk} {
		if files[name] != "link" {
			t.Errorf("%s placed by %q, want link (same filesystem)", name, files[name])
		}
	}
	root := e.jailRoot(v.id)
	for _, c := range []struct {
		path     string
		uid, gid uint32
		mode     uint32
		sameAs   string
	}{
		{filepath.Join(e.work, "jails"), 0, 0, syscall.S_IFDIR | 0o755, ""},
		{filepath.Join(e.work, "jails", "firecracker"), 0, 0, syscall.S_IFDIR | 0o755, ""},
		{e.jailDir(v.id), 0, 0, syscall.S_IFDIR | 0o755, ""},
		{root, v.uid, v.uid, syscall.S_IFDIR | 0o700, ""},
		// Shared files keep their owner and mode: never the VM's.
		{filepath.Join(root, "vmlinux"), 0, 0, syscall.S_IFREG | 0o644, filepath.Join(e.kernel, "vmlinux")},
		{filepath.Join(root, "initrd.img"), e.uid, e.gid, syscall.S_IFREG | 0o644, v.initrd},
		{filepath.Join(root, "base.ext4"), e.uid, e.gid, syscall.S_IFREG | 0o644, v.imagePath},
		{filepath.Join(root, "config.img"), e.uid, e.gid, syscall.S_IFREG | 0o644, v.config},
		// The writable disk is the VM's, with the caller's group.
		{filepath.Join(root, "disk.ext4"), v.uid, e.gid, syscall.S_IFREG | 0o660, v.disk},
	} {
		st := statOf(t, c.path)
		if st.Uid != c.uid || st.Gid != c.gid || st.Mode != c.mode {
			t.Errorf("%s: uid %d gid %d mode %o; want %d %d %o", c.path, st.Uid, st.Gid, st.Mode, c.uid, c.gid, c.mode)
		}
		if c.sameAs != "" && statOf(t, c.sameAs).Ino != st.Ino {
			t.Errorf("%s is not a link of %s", c.path, c.sameAs)
		}
	}
	if _, err := e.client.PrepareJail(ctx, v.jail()); !helper.IsRefused(err) || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second prepare: %v", err)
	}

	for _, g := range []struct {
		name  string
		grant func(context.Context, string) (bool, error)
	}{{suid.JailAPISocket, e.client.GrantAPI}, {suid.JailVsockSocket, e.client.GrantVsock}} {
		if granted, err := g.grant(ctx, v.id); granted || err != nil {
			t.Fatalf("grant before the socket exists = %v, %v; want pending", granted, err)
		}
		sock := filepath.Join(root, g.name)
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if err := os.Chown(sock, int(v.uid), int(v.uid)); err != nil {
			t.Fatal(err)
		}
		if code, _, stderr := e.runAs(t, e.probe, "connect", sock); code == 0 {
			t.Fatalf("caller could connect before the grant (%s)", stderr)
		}
		if granted, err := g.grant(ctx, v.id); !granted || err != nil {
			t.Fatalf("grant = %v, %v", granted, err)
		}
		if st := statOf(t, sock); st.Uid != e.uid || st.Gid != e.gid || st.Mode&0o7777 != 0o660 {
			t.Errorf("granted socket: uid %d gid %d mode %o", st.Uid, st.Gid, st.Mode)
		}
		if st := statOf(t, root); st.Uid != v.uid || st.Gid != e.gid || st.Mode&0o7777 != 0o710 {
			t.Errorf("jail root after grant: uid %d gid %d mode %o", st.Uid, st.Gid, st.Mode)
		}
		if code, _, stderr := e.runAs(t, e.probe, "connect", sock); code != 0 {
			t.Errorf("caller cannot connect to the granted socket: %s", stderr)
		}
	}

	if err := e.client.RemoveJail(ctx, v.id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(e.jailDir(v.id)); !os.IsNotExist(err) {
		t.Fatalf("jail survived removal: %v", err)
	}
	if st := statOf(t, v.disk); st.Nlink != 1 {
		t.Errorf("disk has %d links after removal", st.Nlink)
	}
	for _, p := range []string{filepath.Join(e.kernel, "vmlinux"), v.imagePath, v.initrd, v.config} {
		if st := statOf(t, p); st.Nlink != 1 {
			t.Errorf("%s has %d links after removal", p, st.Nlink)
		}
	}
	if err := e.client.RemoveJail(ctx, v.id); err != nil {
		t.Fatalf("removing a missing jail: %v", err)
	}
}

// TestJailCopyAcrossFilesystems: a kernel on another file system is copied
// (root-owned, 0644), never linked or chowned.
func TestJailCopyAcrossFilesystems(t *testing.T) {
	e := need(t)
	var a, b syscall.Stat_t
	if syscall.Stat("/dev/shm", &a) != nil || syscall.Stat(e.work, &b) != nil || a.Dev == b.Dev {
		t.Skip("needs /dev/shm on another file system than the test tree")
	}
	dir, err := os.MkdirTemp("/dev/shm", "hyper-e2e-kernel-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	kernel := filepath.Join(dir, "vmlinux-test")
	if err := os.WriteFile(kernel, []byte("another kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.setConfig(t, func(c *cfgFields) { c.Vmlinux = kernel })
	v := e.newVM(t)
	files, err := e.client.PrepareJail(context.Background(), v.jail())
	if err != nil {
		t.Fatal(err)
	}
	if files["vmlinux"] != "copy" && files["vmlinux"] != "reflink" {
		t.Fatalf("kernel placed by %q", files["vmlinux"])
	}
	copied := filepath.Join(e.jailRoot(v.id), "vmlinux")
	if st := statOf(t, copied); st.Uid != 0 || st.Gid != 0 || st.Mode&0o7777 != 0o644 {
		t.Errorf("copy: uid %d gid %d mode %o", st.Uid, st.Gid, st.Mode)
	}
	if data, _ := os.ReadFile(copied); string(data) != "another kernel" {
		t.Errorf("copy holds %q", data)
	}
}

// startAs starts `sleep` as uid/gid and returns it with its exit channel.
func startAs(t *testing.T, cred *syscall.Credential) (*exec.Cmd, chan error) {
	cmd := exec.Command("sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		done <- <-done
	})
	return cmd, done
}

// TestJailer runs the jailer op with a stand-in jailer that records what it
// got: the exact argv from the config, no environment although the caller
// set one, no descriptor above 2 although the caller passed two, root ids,
// the helper's own pid, the VM cgroup, and its exit status passed through.
func TestJailer(t *testing.T) {
	e := need(t)
	ctx := context.Background()
	cgroups := e.delegated(t)
	for _, netns := range []string{"", "hyper-net1"} {
		v := e.newVM(t)
		e.prepare(t, v)
		if err := cgroups.Create(v.id, 1000, 128<<20); err != nil {
			t.Fatal(err)
		}
		os.Remove(e.record)
		cmd, err := e.client.JailerCommand(ctx, v.id, v.uid, v.uid, netns)
		if err != nil {
			t.Fatal(err)
		}
		cmd.Env = []string{"CANARY_HYPER=leak", "LD_PRELOAD=/nonexistent/evil.so", "GODEBUG=x=1", "PATH=/nonexistent"}
		extra1, _ := os.Open("/dev/null")
		extra2, _ := os.Open(e.config)
		cmd.ExtraFiles = []*os.File{extra1, extra2}
		err = cmd.Run()
		extra1.Close()
		extra2.Close()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 7 {
			t.Fatalf("jailer exit = %v, want status 7", err)
		}
		data, err := os.ReadFile(e.record)
		if err != nil {
			t.Fatal(err)
		}
		var rec struct {
			Argv           []string
			Environ        string
			Fds            map[int]string
			Pid, UID, EUID int
			GID, EGID      int
			Groups         []int
			Cgroup         string
		}
		if err := json.Unmarshal(data, &rec); err != nil {
			t.Fatal(err)
		}
		id := strconv.Itoa(int(v.uid))
		want := []string{e.cfg.Jailer, "--id", v.id, "--exec-file", e.cfg.Firecracker, "--uid", id, "--gid", id,
			"--chroot-base-dir", filepath.Join(e.work, "jails"), "--cgroup-version", map[int]string{1: "2", 4: "1"}[len(e.hier)],
			"--parent-cgroup", e.cfg.Cgroup}
		if netns != "" {
			want = append(want, "--netns", "/run/netns/"+netns)
		}
		want = append(want, "--", "--api-sock", "/api.socket")
		if !slices.Equal(rec.Argv, want) {
			t.Errorf("argv = %q\nwant   %q", rec.Argv, want)
		}
		if rec.Environ != "" {
			t.Errorf("the jailer got an environment: %q", rec.Environ)
		}
		if len(rec.Fds) != 0 {
			t.Errorf("the jailer got descriptors %v", rec.Fds)
		}
		if rec.Pid != cmd.Process.Pid {
			t.Errorf("jailer pid %d, helper pid %d: not exec'd in place", rec.Pid, cmd.Process.Pid)
		}
		if rec.UID != 0 || rec.EUID != 0 || rec.GID != 0 || rec.EGID != 0 || len(rec.Groups) != 0 {
			t.Errorf("jailer ids: %+v", rec)
		}
		if !strings.Contains(rec.Cgroup, "/"+e.cfg.Cgroup+"/"+v.id+"\n") {
			t.Errorf("jailer not in the VM cgroup:\n%s", rec.Cgroup)
		}
	}
}

// TestNotSetuid: the same build without the setuid bit refuses every
// privileged op, and still answers version.
func TestNotSetuid(t *testing.T) {
	e := need(t)
	code, _, stderr := e.runAs(t, e.plain, "sys-test")
	if code != 2 || !strings.Contains(stderr, "not installed setuid root") {
		t.Fatalf("sys-test without setuid: exit %d, %q", code, stderr)
	}
	if code, out, stderr := e.runAs(t, e.plain, "version"); code != 0 || !strings.Contains(out, e.config) {
		t.Fatalf("version without setuid: exit %d, %q, %q", code, out, stderr)
	}
}

// TestClientRefusesBadRequestsLocally: the client checks the helper's
// grammar before running it.
func TestClientRefusesBadRequestsLocally(t *testing.T) {
	c := helper.New("/nonexistent/hyper-suidhelper")
	err := c.RemoveJail(context.Background(), "not-an-id")
	var he *helper.Error
	if !errors.As(err, &he) || he.ExitCode != -1 || !strings.Contains(err.Error(), "invalid vm-id") {
		t.Fatalf("RemoveJail(bad id) = %v", err)
	}
	if _, err := c.JailerCommand(context.Background(), "vabcdefghijklmnop", 0, 1, ""); err == nil {
		t.Fatal("JailerCommand accepted uid 0")
	}
}
