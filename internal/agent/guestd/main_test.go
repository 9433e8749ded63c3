package guestd_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/agent/guestd"
)

func TestMain(m *testing.M) {
	if os.Getenv(reaperHelperEnv) != "" {
		os.Exit(reaperHelper())
	}
	goleak.VerifyTestMain(m)
}

// harness is a guest service served in-process over yamux on a socketpair,
// and a host client connected to it.
type harness struct {
	srv    *guestd.Server
	client *agent.Client
}

// start serves cfg (with a reaper of its own) and connects a client; all of
// it is torn down when the test ends.
func start(t testing.TB, cfg guestd.Config) *harness {
	t.Helper()
	reaper := guestd.NewReaper(false)
	cfg.Reaper = reaper
	srv := guestd.New(cfg)

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	hostConn, guestConn := fileConn(t, fds[0]), fileConn(t, fds[1])

	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.ServeConn(ctx, guestConn) }()

	dialCtx, dialCancel := context.WithTimeout(ctx, 10*time.Second)
	defer dialCancel()
	client, err := agent.Dial(dialCtx, func(context.Context) (net.Conn, error) { return hostConn, nil })
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("ServeConn: %v", err)
		}
		srv.Close()
		reaper.Close()
	})
	return &harness{srv: srv, client: client}
}

func fileConn(t testing.TB, fd int) net.Conn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "socketpair")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// etcRoot writes a root directory with an etc/passwd and etc/group that
// know root and nobody.
func etcRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "etc/passwd"), []byte(
		"root:x:0:0:root:/root:/bin/sh\n"+
			"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(root, "etc/group"), []byte(
		"root:x:0:\n"+
			"users:x:100:nobody\n"+
			"nogroup:x:65534:\n"), 0o644))
	return root
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CI runs tests as root)")
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
