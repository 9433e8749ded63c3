package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hypervm/hyper/internal/guest/guesttest"
	"github.com/hypervm/hyper/internal/image/imagetest"
	"github.com/hypervm/hyper/internal/store"
	"github.com/hypervm/hyper/internal/suid"
)

// vmNode is a hyperd that runs real guests: the real setuid helper
// (installed root:root 4755 and built to read this node's config), the
// pinned guest kernel, hyper-agent in the initramfs, and the given driver.
type vmNode struct {
	*node
	cgroup  string
	helper  string
	imageID string
}

func newVMNode(t *testing.T, vmmSection string) *vmNode {
	t.Helper()
	requireRoot(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("needs qemu-system-x86_64 (Debian qemu-system-x86): ", err)
	}
	k := guesttest.Kernel(t)
	cgroup := fmt.Sprintf("hyper-e2e-%d-%d", os.Getpid(), time.Now().UnixNano()%100000)
	// Registered before the node, so it runs after hyperd has stopped:
	// the parent cgroup (and under v2 hyperd's leaf in it) can go then.
	t.Cleanup(func() { removeCgroupParents(cgroup) })
	n := newNode(t, "")
	vn := &vmNode{node: n, cgroup: cgroup}

	// The work dir is root-owned and sticky, as make demo makes it: the
	// daemon's group may create in it but cannot move what root put there.
	_, gid := ensureUser(t)
	must(t, os.Chown(n.workDir, 0, gid))
	must(t, os.Chmod(n.workDir, os.ModeSticky|0o770))

	// The helper reads this node's config: its path is compiled in.
	binDir := filepath.Join(n.dir, "bin")
	must(t, os.Mkdir(binDir, 0o755))
	vn.helper = filepath.Join(binDir, "hyper-suidhelper")
	build(t, vn.helper, "./cmd/hyper-suidhelper", "-X main.configPath="+n.config)
	must(t, os.Chmod(vn.helper, os.ModeSetuid|0o755))
	agentBin := filepath.Join(binDir, "hyper-agent")
	build(t, agentBin, "./cmd/hyper-agent", "")

	cfg := fmt.Sprintf(`work_dir = %q

[tools]
suidhelper = %q
agent = %q
%s
[jails]
uid_gid_range = [700000, 700063]
cgroup = %q

[cluster]
node_name = %q
lease_interval = "1s"
lease_ttl = "3s"

[budget]
mem_max = "1GiB"
disk_max = "16GiB"

[kernel]
vmlinuz = %q
vmlinux = %q
modules = %q

%s
`, n.workDir, vn.helper, agentBin, toolsExtra(vmmSection), cgroup, n.name, k.Vmlinuz, k.Vmlinux, k.Modules, withoutTools(vmmSection))
	cfg = strings.Replace(cfg, "[vmm]\n", "[vmm]\nboot_timeout = \"180s\"\n", 1)
	must(t, os.WriteFile(n.config, []byte(cfg), 0o644))
	t.Cleanup(func() { vn.checkNoLeaks(t) })
	return vn
}

// toolsExtra moves "tools." lines of the vmm section into [tools].
func toolsExtra(section string) string {
	var out []string
	for _, l := range strings.Split(section, "\n") {
		if strings.HasPrefix(l, "tools.") {
			out = append(out, strings.TrimPrefix(l, "tools."))
		}
	}
	return strings.Join(out, "\n")
}

// withoutTools is the vmm section less its "tools." lines.
func withoutTools(section string) string {
	var out []string
	for _, l := range strings.Split(section, "\n") {
		if !strings.HasPrefix(l, "tools.") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// build compiles pkg (relative to the module root) to out.
func build(t *testing.T, out, pkg, ldflags string) {
	t.Helper()
	args := []string{"build", "-trimpath", "-o", out}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

// loadBusybox loads the small real image every VM test boots.
func (vn *vmNode) loadBusybox(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(vn.dir, "busybox")
	must(t, os.Mkdir(dir, 0o755))
	layout := imagetest.BusyboxLayout(t, dir)
	// hyperd runs as another user: it must be able to read the layout.
	must(t, filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if fi.IsDir() {
			mode = 0o755
		}
		return os.Chmod(p, mode)
	}))
	out, stderr, code := vn.hyper("image", "load", "-q", "oci:"+layout)
	if code != 0 {
		t.Fatalf("image load: %d %s%s\nhyperd log:\n%s", code, out, stderr, vn.log)
	}
	vn.imageID = strings.TrimSpace(out)
	return vn.imageID
}

// createVM creates a micro VM from the busybox image and returns its id.
func (vn *vmNode) createVM(t *testing.T, args ...string) string {
	t.Helper()
	out, stderr, code := vn.hyper(append([]string{"vm", "create", "-q", "--image", vn.imageID, "--type", "micro"}, args...)...)
	if code != 0 {
		t.Fatalf("vm create: %d %s%s\nhyperd log:\n%s\nconsoles:\n%s", code, out, stderr, vn.log, vn.consoles())
	}
	return strings.TrimSpace(out)
}

// consoles returns the kept console logs of the node's VMs.
func (vn *vmNode) consoles() string {
	var b strings.Builder
	logs, _ := filepath.Glob(filepath.Join(vn.workDir, "logs", "*.log"))
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		fmt.Fprintf(&b, "--- %s\n%s\n", filepath.Base(l), data)
	}
	return b.String()
}

// checkNoLeaks asserts that nothing a VM uses outlives the test: no VM
// cgroup under the node's parent, no VM directory, no uid claim (through
// the API's view of live VMs), no process started from the work dir.
func (vn *vmNode) checkNoLeaks(t *testing.T) {
	t.Helper()
	if pids := processesUnder(vn.dir); len(pids) > 0 {
		t.Errorf("processes left running from %s: %v", vn.dir, pids)
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, dir := range cgroupParents(vn.cgroup) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			// Under cgroup v2 the delegated parent also holds hyperd's
			// own leaf, which is not a VM's.
			if e.IsDir() && e.Name() != suid.DaemonCgroup {
				t.Errorf("cgroup left: %s/%s", dir, e.Name())
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	// A VM's directory holds its disks and sockets; a jail holds the
	// Firecracker VM's links and sockets; the node's partial layer
	// directory holds a layer's file while the layer is being made.
	for _, dir := range []string{filepath.Join(vn.workDir, "vms"), filepath.Join(vn.workDir, "jails", "firecracker"),
		filepath.Join(vn.workDir, "layers", "layers", ".partial", vn.name)} {
		if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("left in %s: %v", dir, names)
		}
	}
	vn.checkNoUIDClaims(t)
}

// cgroupParents lists the node's parent cgroup in every hierarchy that may
// hold it: the v1 controllers the helper uses, and cgroup2 (hybrid or
// unified).
func cgroupParents(name string) []string {
	var dirs []string
	for _, root := range []string{"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/freezer", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		dirs = append(dirs, filepath.Join(root, name))
	}
	return dirs
}

// removeCgroupParents removes the node's parent cgroups once nothing runs
// in them; what is left then is a leak checkNoLeaks has reported.
func removeCgroupParents(name string) {
	for _, dir := range cgroupParents(name) {
		_ = os.Remove(filepath.Join(dir, suid.DaemonCgroup))
		_ = os.Remove(dir)
	}
}

// checkNoUIDClaims reads the node's store (SQLite in WAL mode lets a
// second reader in while hyperd runs): every uid claim belongs to a live
// VM, and a test leaves none.
func (vn *vmNode) checkNoUIDClaims(t *testing.T) {
	t.Helper()
	path := filepath.Join(vn.workDir, "hyper.db")
	if _, err := os.Stat(path); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := store.Open(ctx, path)
	if err != nil {
		t.Errorf("leak check: open the store: %v", err)
		return
	}
	defer st.Close()
	claims, err := st.ListUIDClaims(ctx, vn.name)
	if err != nil {
		t.Errorf("leak check: uid claims: %v", err)
		return
	}
	if len(claims) > 0 {
		t.Errorf("uid claims left: %v", claims)
	}
}

// processesUnder lists pids whose command line mentions dir or whose
// working directory is below it (a jailed VMM runs in its jail).
func processesUnder(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err == nil && bytes.Contains(b, []byte(dir)) || strings.HasPrefix(cwd, dir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// vmmPid finds the VMM process of a VM: QEMU (named hyper-<id>) or
// Firecracker (started with --id <id>).
func (vn *vmNode) vmmPid(t *testing.T, id string) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		name := strings.TrimSpace(string(comm))
		if !bytes.Contains(cmdline, []byte(id)) {
			continue
		}
		if strings.HasPrefix(name, "hyper-v") || name == "firecracker" {
			return pid
		}
	}
	t.Fatalf("no vmm process for %s", id)
	return 0
}

// waitLog waits until the hyperd log contains s.
func (vn *vmNode) waitLog(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(vn.log.String(), s) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("hyperd log has no %q after %s:\n%s", s, timeout, vn.log)
}

// vmState returns a VM's state as the CLI shows it.
func (vn *vmNode) vmState(t *testing.T, id string) string {
	t.Helper()
	out, stderr, code := vn.hyper("vm", "get", id)
	if code != 0 {
		t.Fatalf("vm get: %s", stderr)
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Scan()
	sc.Scan()
	f := strings.Fields(sc.Text())
	if len(f) < 2 {
		t.Fatalf("vm get output: %q", out)
	}
	return f[1]
}

// waitState polls until the VM is in state.
func (vn *vmNode) waitState(t *testing.T, id, state string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := vn.vmState(t, id)
		if got == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("vm %s is %s after %s; want %s\nhyperd log:\n%s", id, got, timeout, state, vn.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// hyperIn runs the CLI with stdin.
func (vn *vmNode) hyperIn(stdin string, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "hyper"), append([]string{"--addr", "unix://" + vn.socket}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}
