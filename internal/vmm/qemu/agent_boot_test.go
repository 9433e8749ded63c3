package qemu_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/guestcfg"
)

var (
	hyperAgentOnce sync.Once
	hyperAgentPath string
	hyperAgentSkip string
	hyperAgentErr  error
)

// hyperAgent builds the real ./cmd/hyper-agent once per test binary, as
// `make build` does, or uses the binary named by $HYPER_TEST_AGENT. It
// skips the test while that binary does not run guestinit's stage 1 (it
// then cannot boot from the initramfs).
func hyperAgent(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("HYPER_TEST_AGENT"); p != "" {
		return p
	}
	hyperAgentOnce.Do(func() {
		deps, err := exec.Command("go", "list", "-deps", "github.com/hypervm/hyper/cmd/hyper-agent").Output()
		if err != nil {
			hyperAgentSkip = "cmd/hyper-agent does not build yet"
			return
		}
		if !strings.Contains(string(deps), "github.com/hypervm/hyper/internal/guestinit\n") {
			hyperAgentSkip = "cmd/hyper-agent does not call guestinit.Stage1 yet"
			return
		}
		if agentDir == "" {
			if agentDir, hyperAgentErr = os.MkdirTemp("", "hyper-testagent-"); hyperAgentErr != nil {
				return
			}
		}
		hyperAgentPath = filepath.Join(agentDir, "hyper-agent")
		cmd := exec.Command("go", "build", "-trimpath", "-o", hyperAgentPath, "github.com/hypervm/hyper/cmd/hyper-agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			hyperAgentErr = err
			hyperAgentSkip = string(out)
		}
	})
	if hyperAgentErr != nil {
		t.Fatalf("build hyper-agent: %v: %s", hyperAgentErr, hyperAgentSkip)
	}
	if hyperAgentSkip != "" {
		t.Skip(hyperAgentSkip)
	}
	return hyperAgentPath
}

// TestRealGuest boots the real hyper-agent on a busybox base image and a
// fresh writable disk, talks to it with the real agent client, shuts it down
// cleanly and boots the same disks again.
func TestRealGuest(t *testing.T) {
	r := newRigWithAgent(t, hyperAgent(t))
	dir := t.TempDir()
	base := filepath.Join(dir, "base.ext4")
	writable := filepath.Join(dir, "writable.ext4")
	busyboxDisk(t, base, map[string]string{"etc/motd": "from the image\n"})
	writableDisk(t, writable)
	baseSum := sha256File(t, base)
	img := guestcfg.Image{Cmd: []string{"/bin/sh", "-c", "echo main-process-says-hi"}, Env: []string{"PATH=/bin"}}

	ctx, cancel := context.WithTimeout(context.Background(), 4*bootTimeout)
	defer cancel()
	start := time.Now()
	v := r.boot(t, "real1", dir, base, writable, img)
	c := dialRealAgent(ctx, t, v.DialAgent)
	t.Logf("driver start to agent Health: %s", time.Since(start))

	run := func(opts agent.ExecOptions) (string, agent.ExitStatus) {
		t.Helper()
		var out bytes.Buffer
		opts.Stdout, opts.Stderr = &out, &out
		st, err := c.Exec(ctx, opts)
		if err != nil {
			t.Fatalf("exec %q: %v", opts.Argv, err)
		}
		return out.String(), st
	}
	if out, st := run(agent.ExecOptions{Argv: []string{"echo", "hello"}}); out != "hello\n" || st.Code != 0 {
		t.Fatalf("echo hello = %q, %+v", out, st)
	}
	out, st := run(agent.ExecOptions{Argv: []string{"sh"}, TTY: true,
		Stdin: strings.NewReader("tty\necho pty-$((40+2))\nexit 3\n")})
	if st.Code != 3 || !strings.Contains(out, "pty-42") || !strings.Contains(out, "/dev/pts/") {
		t.Fatalf("interactive sh on a pty: exit %+v, output %q", st, out)
	}
	if out, _ := run(agent.ExecOptions{Argv: []string{"cat", "/etc/motd"}}); out != "from the image\n" {
		t.Fatalf("image file = %q", out)
	}
	if out, st := run(agent.ExecOptions{Argv: []string{"sh", "-c",
		"echo changed > /etc/motd && echo kept > /root/note && rm /bin/ls && echo new > /bin/new && " +
			"dd if=/dev/zero of=/big bs=1M count=8 2>/dev/null && mkdir -p /usr/local/x && touch /usr/local/x/y && sync"}}); st.Code != 0 {
		t.Fatalf("writes failed: %+v %q", st, out)
	}

	// A clean shutdown through the agent powers the VM off.
	if err := c.Shutdown(ctx, false, 2*time.Second); err != nil {
		t.Logf("shutdown: %v (the connection may drop as the guest powers off)", err)
	}
	c.Close()
	wctx, wcancel := context.WithTimeout(ctx, bootTimeout)
	defer wcancel()
	if err := v.Wait(wctx); err != nil {
		t.Fatalf("guest did not power off after Shutdown: %v\nconsole:\n%s", err, consoleOf(v))
	}
	console := consoleOf(v)
	if !strings.Contains(console, "main-process-says-hi") {
		t.Errorf("the image's cmd did not run as the main process; console:\n%s", console)
	}
	stopAndCheck(t, v)

	v2 := r.boot(t, "real1", dir, base, writable, img)
	c2 := dialRealAgent(ctx, t, v2.DialAgent)
	var out2 bytes.Buffer
	if st, err := c2.Exec(ctx, agent.ExecOptions{Argv: []string{"sh", "-c", "cat /root/note /etc/motd /bin/new /usr/local/x/y; test -e /bin/ls || echo ls-gone"},
		Stdout: &out2, Stderr: &out2}); err != nil || st.Code != 0 || out2.String() != "kept\nchanged\nnew\nls-gone\n" {
		t.Fatalf("after reboot: %q %+v %v", out2.String(), st, err)
	}
	c2.Close()
	stopAndCheck(t, v2)
	if got := sha256File(t, base); got != baseSum {
		t.Fatalf("base image changed: sha256 %s, was %s", got, baseSum)
	}
}

func dialRealAgent(ctx context.Context, t *testing.T, dial agent.DialFunc) *agent.Client {
	t.Helper()
	dctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	c, err := agent.Dial(dctx, dial)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Health(dctx); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c
}
