package agent_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/agent/guestd"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// guest serves a guest agent on connections accepted from l; handshake,
// when set, runs on each connection first. Everything stops with the test.
func guest(t *testing.T, l net.Listener, handshake func(net.Conn) error) {
	t.Helper()
	reaper := guestd.NewReaper(false)
	srv := guestd.New(guestd.Config{VMID: "vtest", Reaper: reaper})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				if handshake != nil {
					if err := handshake(c); err != nil {
						c.Close()
						return
					}
				}
				srv.ServeConn(ctx, c)
			})
		}
	})
	t.Cleanup(func() {
		l.Close()
		cancel()
		wg.Wait()
		srv.Close()
		reaper.Close()
	})
}

func dialHealth(t *testing.T, ctx context.Context, dial agent.DialFunc) {
	t.Helper()
	c, err := agent.Dial(ctx, dial)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Health(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.GetVmId() != "vtest" {
		t.Errorf("health %v", res)
	}
}

func TestDialRetriesUntilTheSocketAppears(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		time.Sleep(300 * time.Millisecond)
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Error(err)
			return
		}
		guest(t, l, nil)
	}()
	began := time.Now()
	dialHealth(t, ctx, agent.DialUnix(sock))
	if d := time.Since(began); d < 300*time.Millisecond {
		t.Errorf("connected after %v, before the socket existed", d)
	}
}

func TestDialRetriesWhileRefused(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	// A socket file nobody listens on: connections are refused.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		time.Sleep(300 * time.Millisecond)
		l, err := net.Listen("unix", sock+".new")
		if err != nil {
			t.Error(err)
			return
		}
		guest(t, l, nil)
	}()
	dial := agent.DialUnix(sock)
	swapped := func(ctx context.Context) (net.Conn, error) {
		c, err := dial(ctx)
		if errors.Is(err, agent.ErrNotReady) {
			return agent.DialUnix(sock + ".new")(ctx)
		}
		return c, err
	}
	dialHealth(t, ctx, swapped)
}

func TestDialGivesUpAtTheDeadline(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "never.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	began := time.Now()
	_, err := agent.Dial(ctx, agent.DialUnix(sock))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("error %v, want the deadline and the last attempt's error", err)
	}
	if d := time.Since(began); d < 350*time.Millisecond || d > 5*time.Second {
		t.Errorf("gave up after %v, want about 400ms", d)
	}
}

func TestDialDoesNotRetryOtherErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	attempts := 0
	boom := errors.New("boom")
	_, err := agent.Dial(ctx, func(context.Context) (net.Conn, error) {
		attempts++
		return nil, boom
	})
	if !errors.Is(err, boom) || attempts != 1 {
		t.Errorf("error %v after %d attempts, want boom after 1", err, attempts)
	}
}

// A peer that accepts but never answers (a guest whose agent is not up, or
// a session left broken by an earlier host) costs one attempt, not the
// whole deadline.
func TestDialRedialsASilentPeer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	// The first connection is held without an answer until the client
	// hangs up on it.
	silent := make(chan error, 1)
	var once sync.Once
	guest(t, l, func(c net.Conn) error {
		isFirst := false
		once.Do(func() { isFirst = true })
		if !isFirst {
			return nil
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, c)
		silent <- err
		return errors.New("stayed silent")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	began := time.Now()
	dialHealth(t, ctx, agent.DialUnix(sock))
	if err := <-silent; err != nil {
		t.Errorf("the silent connection was not closed by the client: %v", err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("connected after %v", d)
	}
}

// fakeFirecracker listens on a unix socket and answers each connection's
// CONNECT line with answer (nothing for a hang-up), then runs then.
func fakeFirecracker(t *testing.T, answer string, then func(net.Conn)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "vsock.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			line, err := bufio.NewReader(io.LimitReader(c, 13)).ReadString('\n')
			if err != nil || line != "CONNECT 1024\n" {
				t.Errorf("handshake line %q (%v), want CONNECT 1024", line, err)
				c.Close()
				continue
			}
			if answer == "" {
				c.Close()
				continue
			}
			io.WriteString(c, answer)
			then(c)
		}
	})
	return sock
}

func TestFirecrackerHandshakeKeepsFollowingBytes(t *testing.T) {
	sock := fakeFirecracker(t, "OK 1073741824\nafter the line", func(c net.Conn) { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.DialFirecrackerVsock(sock, 1024)(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rest, err := io.ReadAll(c)
	if err != nil || string(rest) != "after the line" {
		t.Errorf("after the handshake read %q (%v), want the bytes after the line", rest, err)
	}
}

func TestFirecrackerHandshakeRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		answer   string
		retrying bool
	}{
		{"", true},                               // nothing listens on the guest port
		{"FAILED\n", true},                       // not OK
		{strings.Repeat("x", 100) + "\n", false}, // not Firecracker
	} {
		sock := fakeFirecracker(t, tc.answer, func(c net.Conn) { c.Close() })
		_, err := agent.DialFirecrackerVsock(sock, 1024)(ctx)
		if err == nil || errors.Is(err, agent.ErrNotReady) != tc.retrying {
			t.Errorf("answer %q: error %v, want retrying=%v", tc.answer, err, tc.retrying)
		}
	}
}

func TestDialFirecrackerVsock(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vsock.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	guest(t, l, func(c net.Conn) error {
		line, err := bufio.NewReader(io.LimitReader(c, 13)).ReadString('\n')
		if err != nil || line != "CONNECT 1024\n" {
			return errors.New("bad handshake")
		}
		_, err = io.WriteString(c, "OK 1073741824\n")
		return err
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dialHealth(t, ctx, agent.DialFirecrackerVsock(sock, 1024))
}
