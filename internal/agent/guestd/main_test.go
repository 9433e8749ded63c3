package guestd_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/agent/agenttest"
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

// start serves cfg and connects a client; all of it is torn down when the
// test ends.
func start(t testing.TB, cfg guestd.Config) *harness {
	t.Helper()
	srv, client := agenttest.Serve(t, cfg)
	return &harness{srv: srv, client: client}
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
