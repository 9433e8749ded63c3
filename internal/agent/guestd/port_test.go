package guestd

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/agent"
)

// fakePort behaves like a virtio-serial port seen from the guest, with
// hosts that come and go: reads return end of file while no host is
// connected and block while one is; writes block until a host is there;
// what the guest wrote with no host (or after the host's side stopped
// reading) reaches the next host, as QEMU does.
type fakePort struct {
	mu       sync.Mutex
	cond     *sync.Cond
	host     net.Conn // the port's end of the current host's socket
	in       []byte   // from hosts, not read by the guest yet
	out      []byte   // from the guest, not delivered to a host yet
	closed   bool
	deadline time.Time
	wg       sync.WaitGroup
}

func newFakePort() *fakePort {
	p := &fakePort{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// connect attaches a new host and returns its end. A host still attached
// is replaced at once, without the guest ever seeing it leave (a quick
// reconnect); it stays open but nothing moves over it any more.
func (p *fakePort) connect(t *testing.T) net.Conn {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := sockConn(t, fds[0]), sockConn(t, fds[1])
	p.mu.Lock()
	p.host = mine
	if len(p.out) > 0 {
		mine.Write(p.out)
		p.out = nil
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	p.wg.Go(func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := mine.Read(buf)
			p.mu.Lock()
			if p.host != mine {
				p.mu.Unlock()
				mine.Close()
				return
			}
			p.in = append(p.in, buf[:n]...)
			if err != nil {
				p.host = nil // the host hung up
				mine.Close()
			}
			p.cond.Broadcast()
			p.mu.Unlock()
			if err != nil {
				return
			}
		}
	})
	return theirs
}

func sockConn(t *testing.T, fd int) net.Conn {
	f := os.NewFile(uintptr(fd), "socket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (p *fakePort) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		switch {
		case p.closed:
			return 0, os.ErrClosed
		case len(p.in) > 0:
			n := copy(b, p.in)
			p.in = p.in[n:]
			return n, nil
		case p.host == nil:
			return 0, io.EOF
		}
		p.cond.Wait()
	}
}

func (p *fakePort) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		switch {
		case p.closed:
			return 0, os.ErrClosed
		case !p.deadline.IsZero() && !time.Now().Before(p.deadline):
			return 0, os.ErrDeadlineExceeded
		case p.host != nil:
			// What the host does not read stays for the next one.
			p.out = append(p.out, b...)
			p.host.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := p.host.Write(p.out); err == nil {
				p.out = nil
			}
			return len(b), nil
		}
		p.cond.Wait()
	}
}

func (p *fakePort) SetWriteDeadline(t time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deadline = t
	p.cond.Broadcast()
	if !t.IsZero() {
		time.AfterFunc(time.Until(t)+time.Millisecond, func() {
			p.mu.Lock()
			p.cond.Broadcast()
			p.mu.Unlock()
		})
	}
	return nil
}

func (p *fakePort) Close() error {
	p.mu.Lock()
	p.closed = true
	if p.host != nil {
		p.host.Close()
		p.host = nil
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

// servePortForTest serves a guest on a fake port until the test ends.
func servePortForTest(t *testing.T) *fakePort {
	t.Helper()
	reaper := NewReaper(false)
	srv := New(Config{VMID: "vport", Reaper: reaper})
	p := newFakePort()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.servePort(ctx, p, "fake") }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("servePort: %v", err)
		}
		srv.Close()
		reaper.Close()
	})
	return p
}

// hostRound connects a host, checks that calls work and returns the client.
func hostRound(t *testing.T, p *fakePort) *agent.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn := p.connect(t)
	c, err := agent.Dial(ctx, func(context.Context) (net.Conn, error) { return conn, nil })
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	st, err := c.Exec(ctx, agent.ExecOptions{Argv: []string{"echo", "hi"}, Stdout: &out})
	if err != nil || st.Code != 0 || out.String() != "hi\n" {
		c.Close()
		t.Fatalf("exec: %+v %q %v", st, out.String(), err)
	}
	return c
}

func TestPortHostsComeAndGo(t *testing.T) {
	p := servePortForTest(t)
	for range 3 {
		c := hostRound(t, p)
		c.Close()
		// Give the guest time to see the host leave.
		time.Sleep(200 * time.Millisecond)
	}
}

func TestPortQuickReconnect(t *testing.T) {
	p := servePortForTest(t)
	for range 3 {
		began := time.Now()
		// The old host is replaced while its session is still up, so the
		// guest never reads end of file: the new HELLO lands in the old
		// session.
		c := hostRound(t, p)
		if d := time.Since(began); d > 5*time.Second {
			t.Errorf("reconnect took %v", d)
		}
		c.Close()
	}
}

func TestPortStaleBytesAreSkipped(t *testing.T) {
	p := servePortForTest(t)
	c := hostRound(t, p)
	c.Close()
	time.Sleep(200 * time.Millisecond)
	// Leftovers of earlier connections on both sides: output the guest
	// wrote for a host that left (including an answer to someone else's
	// HELLO), and input a host wrote before it left.
	p.mu.Lock()
	p.out = append(p.out, "\x00\x01\x00\x05HYPER-AGENT/1 READY 0123456789abcdef0123456789abcdef\n\x00junk"...)
	p.in = append(p.in, "\x00\x02\x00\x01 HYPER-AGENT/1 HELLO nothex\n\xff\xfe"...)
	p.mu.Unlock()
	hostRound(t, p).Close()
}
