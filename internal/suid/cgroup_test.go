package suid

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeV2 lays out a fake cgroup2 tree (plain files) with a parent and a
// VM leaf, as the kernel would show them.
func fakeV2(t *testing.T, controllers string) (*cgroups, string) {
	root := t.TempDir()
	files := map[string]string{
		"cgroup.controllers": controllers, "cgroup.subtree_control": "cpu",
		"p/cgroup.controllers": controllers, "p/cgroup.subtree_control": "",
		"p/cgroup.procs": "", "p/cgroup.threads": "", "p/cpu.max": "max 100000",
		"p/" + DaemonCgroup + "/cgroup.procs": "", "p/" + DaemonCgroup + "/cgroup.threads": "", "p/" + DaemonCgroup + "/cgroup.subtree_control": "",
		"p/" + testVM + "/cpu.max": "max 100000", "p/" + testVM + "/memory.max": "max",
		"p/" + testVM + "/cgroup.procs": "", "p/" + testVM + "/cgroup.kill": "",
	}
	for name, data := range files {
		path := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := openDir(root)
	if err != nil {
		t.Fatal(err)
	}
	c := &cgroups{version: 2, hier: []hierarchy{{"", root, fd}}}
	t.Cleanup(c.close)
	return c, root
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCgroupV2KillAttachList(t *testing.T) {
	c, root := fakeV2(t, "cpuset cpu io memory pids")
	leaf := filepath.Join(root, "p", testVM)
	leaves, err := c.openLeaves("p", testVM)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(leaves)
	if n, err := c.kill(leaves); err != nil || n != 0 {
		t.Fatalf("kill = %d, %v", n, err)
	}
	if got := readString(t, filepath.Join(leaf, "cgroup.kill")); got != "1" {
		t.Errorf("cgroup.kill = %q, want 1", got)
	}
	if err := c.attach(leaves, 4242); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, filepath.Join(leaf, "cgroup.procs")); got != "4242" {
		t.Errorf("cgroup.procs = %q", got)
	}
	ids, err := c.list("p")
	if err != nil || len(ids) != 1 || ids[0] != testVM {
		t.Errorf("list = %v, %v", ids, err)
	}
}

// TestCgroupRemoveReportsBusy: a cgroup whose rmdir keeps failing (here:
// a plain directory that is not empty) is reported, not taken for gone.
func TestCgroupRemoveReportsBusy(t *testing.T) {
	c, _ := fakeV2(t, "cpu memory pids")
	defer func(d time.Duration) { drainTimeout = d }(drainTimeout)
	drainTimeout = 50 * time.Millisecond
	removed, err := c.remove("p", testVM)
	if removed || err == nil || !strings.Contains(err.Error(), "rmdir") {
		t.Fatalf("remove of a busy cgroup = %v, %v", removed, err)
	}
}

// realCgroups opens the VM cgroup machinery of this machine under a unique
// parent and removes everything it made afterwards.
func realCgroups(t *testing.T, c *cgroups) string {
	parent := "hyper-unit-" + strconv.Itoa(os.Getpid())
	t.Cleanup(func() {
		for _, h := range c.hier {
			os.Remove(filepath.Join(h.path, parent, testVM))
			os.Remove(filepath.Join(h.path, parent))
		}
		c.close()
	})
	return parent
}

// sleeper starts a process that ignores nothing and returns a channel
// closed with its exit error.
func sleeper(t *testing.T) (*exec.Cmd, chan error) {
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	return cmd, done
}

func checkKilled(t *testing.T, c *cgroups, leaves []int, done chan error) {
	n, err := c.kill(leaves)
	if err != nil || n != 1 {
		t.Fatalf("kill = %d, %v", n, err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("sleep ended with %v, want killed", err)
		}
		done <- err
	case <-time.After(5 * time.Second):
		t.Fatal("sleep survived the cgroup kill")
	}
}

// TestCgroupReal runs delegate, attach, kill, list and remove on this
// machine's cgroups, detected as in production (v1 here, v2 on most hosts).
func TestCgroupReal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	c, err := openCgroups(cgroupRoot)
	if err != nil {
		t.Skipf("no usable cgroups: %v", err)
	}
	parent := realCgroups(t, c)
	if _, err := c.delegate(parent, os.Getuid(), os.Getgid()); err != nil {
		t.Fatal(err)
	}
	for i, h := range c.hier {
		p, err := openBeneath(h.fd, parent, c.display(i, parent), unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := mkCgroup(p, testVM, c.display(i, parent, testVM))
		unix.Close(p)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(leaf)
	}
	cmd, done := sleeper(t)
	leaves, err := c.openLeaves(parent, testVM)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(leaves)
	if err := c.attach(leaves, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if pids, err := c.procs(leaves); err != nil || len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Fatalf("procs = %v, %v", pids, err)
	}
	if ids, err := c.list(parent); err != nil || len(ids) != 1 || ids[0] != testVM {
		t.Fatalf("list = %v, %v", ids, err)
	}
	checkKilled(t, c, leaves, done)
	if removed, err := c.remove(parent, testVM); !removed || err != nil {
		t.Fatalf("remove = %v, %v", removed, err)
	}
	for _, h := range c.hier {
		if _, err := os.Stat(filepath.Join(h.path, parent, testVM)); !os.IsNotExist(err) {
			t.Errorf("%s survived removal", filepath.Join(h.path, parent, testVM))
		}
	}
	if removed, err := c.remove(parent, testVM); removed || err != nil {
		t.Fatalf("second remove = %v, %v", removed, err)
	}
}

// TestCgroupV2KillReal drives the v2 kill (cgroup.kill) on a real cgroup2
// mount: /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a
// hybrid one (which has no cpu or memory controller, so no limits here).
func TestCgroupV2KillReal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	var root string
	for _, p := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var fs unix.Statfs_t
		if unix.Statfs(p, &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC {
			root = p
			break
		}
	}
	if root == "" {
		t.Skip("no cgroup2 mount")
	}
	if _, err := os.Stat(filepath.Join(root, "cgroup.kill")); err != nil && root != "/sys/fs/cgroup" {
		t.Logf("note: no cgroup.kill at the root (normal)")
	}
	fd, err := openDir(root)
	if err != nil {
		t.Fatal(err)
	}
	c := &cgroups{version: 2, hier: []hierarchy{{"", root, fd}}}
	parent := realCgroups(t, c)
	p, err := mkCgroup(fd, parent, filepath.Join(root, parent))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := mkCgroup(p, testVM, filepath.Join(root, parent, testVM))
	unix.Close(p)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(leaf)
	if _, err := os.Stat(filepath.Join(root, parent, testVM, "cgroup.kill")); err != nil {
		t.Skipf("kernel without cgroup.kill: %v", err)
	}
	cmd, done := sleeper(t)
	leaves, err := c.openLeaves(parent, testVM)
	if err != nil {
		t.Fatal(err)
	}
	defer closeAll(leaves)
	if err := c.attach(leaves, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	checkKilled(t, c, leaves, done)
	if removed, err := c.remove(parent, testVM); !removed || err != nil {
		t.Fatalf("remove = %v, %v", removed, err)
	}
}
