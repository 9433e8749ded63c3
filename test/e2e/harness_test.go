// Package e2e drives the built binaries as a user would: hyperd as an
// unprivileged user with a root-owned config, the hyper CLI, and raw
// HTTP/JSON and gRPC clients against the API socket.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// testUser is the unprivileged account hyperd runs as in these tests.
const testUser = "hyper-e2e"

var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipping: needs root to create the test user and root-owned configs")
		return m.Run()
	}
	binDir = os.Getenv("HYPER_TEST_BIN")
	if binDir == "" {
		dir, err := os.MkdirTemp("", "hyper-e2e-bin-")
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer os.RemoveAll(dir)
		cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/hypervm/hyper/cmd/hyperd", "github.com/hypervm/hyper/cmd/hyper")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Printf("build: %v\n%s", err, out)
			return 1
		}
		binDir = dir
	}
	// The unprivileged user must be able to reach the binaries.
	if err := os.Chmod(binDir, 0o755); err != nil {
		fmt.Println(err)
		return 1
	}
	return m.Run()
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a system user and root-owned configs")
	}
}

// ensureUser creates the unprivileged test user once.
func ensureUser(t *testing.T) (uid, gid int) {
	t.Helper()
	u, err := user.Lookup(testUser)
	if err != nil {
		out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", testUser).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "already exists") {
			t.Fatalf("useradd %s: %v: %s", testUser, err, out)
		}
		if u, err = user.Lookup(testUser); err != nil {
			t.Fatal(err)
		}
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid
}

// node is one hyperd under test.
type node struct {
	t       *testing.T
	dir     string // root-owned, world-traversable
	workDir string // owned by the test user
	config  string
	socket  string
	name    string
	cmd     *exec.Cmd
	exited  chan struct{}
	log     *syncBuffer
}

// syncBuffer is a bytes.Buffer the daemon writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// newNode prepares a work dir and a root-owned config; extra is appended to
// the config file.
func newNode(t *testing.T, extra string) *node {
	t.Helper()
	requireRoot(t)
	uid, gid := ensureUser(t)
	dir, err := os.MkdirTemp("", "hyper-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, dir: dir, workDir: filepath.Join(dir, "work"), name: "e2e-" + filepath.Base(dir)}
	if err := os.Mkdir(n.workDir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(n.workDir, uid, gid); err != nil {
		t.Fatal(err)
	}
	n.socket = filepath.Join(n.workDir, "hyperd.sock")
	n.config = filepath.Join(dir, "config.toml")
	cfg := fmt.Sprintf("work_dir = %q\n\n[cluster]\nnode_name = %q\nlease_interval = \"1s\"\nlease_ttl = \"3s\"\n%s", n.workDir, n.name, extra)
	if !strings.Contains(extra, "[vmm]") {
		// Without a [vmm] section the node serves the API and runs no VMs.
		cfg += "\n[vmm]\ndriver = \"none\"\n"
	}
	if err := os.WriteFile(n.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return n
}

// hyperdCmd returns a hyperd command running as the test user.
func (n *node) hyperdCmd(args ...string) *exec.Cmd {
	uid, gid := ensureUser(n.t)
	cmd := exec.Command(filepath.Join(binDir, "hyperd"), append([]string{"--config", n.config}, args...)...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)},
		Setpgid:    true,
	}
	return cmd
}

// start runs hyperd and waits until it serves.
func (n *node) start() {
	n.t.Helper()
	n.log = &syncBuffer{}
	cmd := n.hyperdCmd()
	cmd.Stdout, cmd.Stderr = n.log, n.log
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	n.cmd, n.exited = cmd, exited
	n.t.Cleanup(func() {
		select {
		case <-exited:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			n.t.Errorf("hyperd did not stop on SIGTERM within 15s; log:\n%s", n.log)
		}
	})
	// A node that runs VMs builds its initramfs and disk templates first.
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if strings.Contains(n.log.String(), "hyperd ready") {
			return
		}
		select {
		case <-exited:
			n.t.Fatalf("hyperd exited early: %v; log:\n%s", waitErr, n.log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	n.t.Fatalf("hyperd not ready after 3m; log:\n%s", n.log)
}

// kill SIGKILLs hyperd, as a crash would.
func (n *node) kill() {
	n.t.Helper()
	_ = n.cmd.Process.Kill()
	<-n.exited
}

// hyper runs the CLI against the node and returns stdout, stderr and the
// exit code.
func (n *node) hyper(args ...string) (stdout, stderr string, code int) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "hyper"), append([]string{"--addr", "unix://" + n.socket}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		n.t.Fatalf("hyper %v: %v", args, err)
	}
	return out.String(), errb.String(), 0
}
