// Package agenttest serves a real guest agent (internal/agent/guestd) in
// the test process and connects a real host client to it over a
// socketpair, so tests of the agent and of the code above it run real
// processes through the real protocol without a VM.
package agenttest

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/agent/guestd"
)

// Serve starts a guest agent with cfg (and a reaper of its own) and
// returns the server and a client connected to it; both stop when the test
// ends, and an error from the server fails the test.
func Serve(t testing.TB, cfg guestd.Config) (*guestd.Server, *agent.Client) {
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
		<-served
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("guest ServeConn: %v", err)
		}
		srv.Close()
		reaper.Close()
	})
	return srv, client
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
