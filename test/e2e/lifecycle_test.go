package e2e

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLifecycleQEMU drives one node with the QEMU driver through the CLI:
// real guests, the real setuid helper, hyperd as an unprivileged user.
func TestLifecycleQEMU(t *testing.T) {
	vn := newVMNode(t, "[vmm]\ndriver = \"qemu\"\n")
	vn.start()
	vn.loadBusybox(t)
	runLifecycle(t, vn)
}

func runLifecycle(t *testing.T, vn *vmNode) {
	id := vn.createVM(t, "--label", "suite=e2e")

	t.Run("list and get", func(t *testing.T) {
		out, _, code := vn.hyper("vm", "ls", "--label", "suite=e2e")
		if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "running") {
			t.Fatalf("vm ls: %d\n%s", code, out)
		}
		if s := vn.vmState(t, id); s != "running" {
			t.Fatalf("state %s", s)
		}
		// The image's own command ran as the main process and exited 0.
		out, _, code = vn.hyper("-o", "json", "vm", "get", id)
		var got struct {
			Main struct {
				Exited   bool `json:"exited"`
				ExitCode int  `json:"exit_code"`
			} `json:"main"`
		}
		if code != 0 || json.Unmarshal([]byte(out), &got) != nil || !got.Main.Exited || got.Main.ExitCode != 0 {
			t.Fatalf("main process not reported as exited with 0:\n%s", out)
		}
		out, _, _ = vn.hyper("node", "ls")
		if !strings.Contains(out, "qemu") && !strings.Contains(out, "firecracker") {
			t.Fatalf("node ls does not show the driver:\n%s", out)
		}
	})

	t.Run("exec", func(t *testing.T) {
		out, stderr, code := vn.hyper("vm", "exec", id, "--", "echo", "hello")
		if code != 0 || out != "hello\n" {
			t.Fatalf("exec echo: %d %q %q", code, out, stderr)
		}
		out, _, code = vn.hyper("vm", "exec", id, "--", "uname", "-n")
		if code != 0 || strings.TrimSpace(out) != id {
			t.Fatalf("hostname: %d %q", code, out)
		}
		_, _, code = vn.hyper("vm", "exec", id, "--", "sh", "-c", "exit 7")
		if code != 7 {
			t.Fatalf("exit code %d; want 7", code)
		}
		out, _, code = vn.hyperIn("from stdin\n", "vm", "exec", "-i", id, "--", "cat")
		if code != 0 || out != "from stdin\n" {
			t.Fatalf("stdin: %d %q", code, out)
		}
		// A PTY session: the command sees a terminal, and an interactive
		// shell reads its input from it.
		out, _, code = vn.hyper("vm", "exec", "-t", id, "--", "tty")
		if code != 0 || !strings.HasPrefix(strings.TrimSpace(out), "/dev/pts/") {
			t.Fatalf("tty: %d %q", code, out)
		}
		out, _, code = vn.hyperIn("echo $((6*7))\nexit 5\n", "vm", "exec", "-i", "-t", id, "--", "sh")
		if code != 5 || !strings.Contains(out, "42") {
			t.Fatalf("interactive sh over a pty: %d %q", code, out)
		}
		_, stderr, code = vn.hyper("vm", "exec", id, "--", "/no/such/binary")
		if code == 0 || !strings.Contains(stderr, "not_found") {
			t.Fatalf("missing binary: %d %q", code, stderr)
		}
	})

	t.Run("cp both ways", func(t *testing.T) {
		src := filepath.Join(vn.dir, "payload")
		data := make([]byte, 1<<20)
		_, _ = rand.Read(data)
		must(t, os.WriteFile(src, data, 0o640))
		if _, stderr, code := vn.hyper("vm", "cp", src, id+":/tmp/payload"); code != 0 {
			t.Fatalf("cp in: %s", stderr)
		}
		back := filepath.Join(vn.dir, "back")
		if _, stderr, code := vn.hyper("vm", "cp", id+":/tmp/payload", back); code != 0 {
			t.Fatalf("cp out: %s", stderr)
		}
		got, err := os.ReadFile(back)
		if err != nil || string(got) != string(data) {
			t.Fatalf("round trip differs (%d bytes, %v)", len(got), err)
		}
	})

	t.Run("logs", func(t *testing.T) {
		out, _, code := vn.hyper("vm", "logs", id)
		if code != 0 || !strings.Contains(out, "hello from busybox") {
			t.Fatalf("logs: %d\n%s", code, out)
		}
	})

	t.Run("a killed vmm is restarted", func(t *testing.T) {
		pid := vn.vmmPid(t, id)
		must(t, syscall.Kill(pid, syscall.SIGKILL))
		vn.waitLog(t, "vm crashed", 30*time.Second)
		vn.waitState(t, id, "running", 4*time.Minute)
		out, _, code := vn.hyper("vm", "exec", id, "--", "echo", "back")
		if code != 0 || out != "back\n" {
			t.Fatalf("exec after restart: %d %q", code, out)
		}
	})

	t.Run("vms outlive hyperd", func(t *testing.T) {
		pid := vn.vmmPid(t, id)
		vn.kill()
		if err := syscall.Kill(pid, 0); err != nil {
			t.Fatalf("the vmm died with hyperd: %v", err)
		}
		vn.start()
		vn.waitLog(t, "re-adopted running vm", 10*time.Second)
		out, _, code := vn.hyper("vm", "exec", id, "--", "echo", "adopted")
		if code != 0 || out != "adopted\n" {
			t.Fatalf("exec after re-adoption: %d %q", code, out)
		}
	})

	t.Run("refusals leak nothing", func(t *testing.T) {
		cases := map[string]struct {
			args []string
			want string
		}{
			"unknown image": {[]string{"--image", strings.Repeat("0", 64)}, "not_found"},
			"wrong arch":    {[]string{"--image", vn.imageID, "--arch", "aarch64"}, "failed_precondition"},
			"too large":     {[]string{"--image", vn.imageID, "--type", "deca"}, "resource_exhausted"},
		}
		for name, tc := range cases {
			_, stderr, code := vn.hyper(append([]string{"vm", "create"}, tc.args...)...)
			if code == 0 || !strings.Contains(stderr, tc.want) {
				t.Errorf("%s: %d %q; want %s", name, code, stderr, tc.want)
			}
		}
		entries, _ := os.ReadDir(filepath.Join(vn.workDir, "vms"))
		if len(entries) != 1 {
			t.Fatalf("vm dirs after refusals: %d; want only the running VM's", len(entries))
		}
	})

	t.Run("stop", func(t *testing.T) {
		if _, stderr, code := vn.hyper("vm", "stop", id); code != 0 {
			t.Fatalf("stop: %s", stderr)
		}
		if _, stderr, code := vn.hyper("vm", "stop", id); code != 0 {
			t.Fatalf("second stop: %s", stderr)
		}
		if s := vn.vmState(t, id); s != "stopped" {
			t.Fatalf("state after stop: %s", s)
		}
		_, stderr, code := vn.hyper("vm", "exec", id, "--", "true")
		if code == 0 || !strings.Contains(stderr, "failed_precondition") {
			t.Fatalf("exec on a stopped vm: %d %q; want failed_precondition", code, stderr)
		}
		out, _, _ := vn.hyper("vm", "ls")
		if strings.Contains(out, id) {
			t.Fatalf("stopped vm listed without --all:\n%s", out)
		}
		out, _, _ = vn.hyper("vm", "logs", id)
		if !strings.Contains(out, "hello from busybox") {
			t.Fatalf("console log gone after stop:\n%s", out)
		}
	})
}

// TestKilledDuringCreate SIGKILLs hyperd while a VM boots: after a restart
// nothing of that VM is left.
func TestKilledDuringCreate(t *testing.T) {
	vn := newVMNode(t, "[vmm]\ndriver = \"qemu\"\n")
	vn.start()
	vn.loadBusybox(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		vn.hyper("vm", "create", "--image", vn.imageID)
	}()
	vn.waitLog(t, "serving API", time.Second)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if entries, _ := os.ReadDir(filepath.Join(vn.workDir, "vms")); len(entries) > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	vn.kill()
	<-done
	vn.start()
	out, _, _ := vn.hyper("vm", "ls", "--all")
	if !strings.Contains(out, "failed") {
		t.Fatalf("the interrupted create is not recorded as failed:\n%s", out)
	}
	// checkNoLeaks runs at cleanup, after hyperd's reclaim.
}

// TestCrashLoopFails kills a VM's VMM until the node gives up on it: the
// VM ends Failed with the reason, and nothing of it is left.
func TestCrashLoopFails(t *testing.T) {
	vn := newVMNode(t, "[vmm]\ndriver = \"qemu\"\nmax_crashes = 1\n")
	vn.start()
	vn.loadBusybox(t)
	id := vn.createVM(t)
	must(t, syscall.Kill(vn.vmmPid(t, id), syscall.SIGKILL))
	vn.waitLog(t, "vm restarted", 4*time.Minute)
	must(t, syscall.Kill(vn.vmmPid(t, id), syscall.SIGKILL))
	vn.waitState(t, id, "failed", time.Minute)
	out, _, _ := vn.hyper("-o", "json", "vm", "get", id)
	if !strings.Contains(out, "crashed 2 times") || !strings.Contains(out, "vmm exited") {
		t.Fatalf("last error does not give the reason:\n%s", out)
	}
	// checkNoLeaks runs at cleanup: no process, cgroup or vm dir.
}
