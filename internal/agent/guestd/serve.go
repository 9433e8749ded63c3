package guestd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/hypervm/hyper/internal/agent"
)

// helloTimeout bounds how long a fresh connection may take to say HELLO.
const helloTimeout = 30 * time.Second

// ServeConn serves one host connection of its own (vsock, or a socket in
// tests): the agent handshake, then a yamux session in which every stream
// the host opens is an HTTP/2 cleartext connection carrying agent RPCs. It
// returns when the host goes away or ctx is done, after closing conn.
func (s *Server) ServeConn(ctx context.Context, conn io.ReadWriteCloser) error {
	if d, ok := conn.(interface{ SetDeadline(time.Time) error }); ok {
		d.SetDeadline(time.Now().Add(helloTimeout))
		defer d.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	rest, err := agent.AcceptHello(conn, conn)
	if !stop() || err != nil {
		conn.Close()
		if err == nil {
			err = ctx.Err()
		}
		return err
	}
	if d, ok := conn.(interface{ SetDeadline(time.Time) error }); ok {
		d.SetDeadline(time.Time{})
	}
	s.serveSession(ctx, &replayConn{ReadWriteCloser: conn, pending: rest})
	return nil
}

// serveSession runs a yamux session over conn until it ends (the host went
// away or broke the stream) or ctx is done; conn is closed on return.
func (s *Server) serveSession(ctx context.Context, conn io.ReadWriteCloser) {
	session, err := yamux.Server(conn, agent.NewYamuxConfig())
	if err != nil {
		// Only a bad configuration fails here.
		conn.Close()
		s.log.Error("start yamux session", "err", err)
		return
	}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{
		Handler:           s.Handler(),
		Protocols:         &protocols,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(session) }()
	select {
	case <-ctx.Done():
	case <-session.CloseChan():
	}
	// Close ends every call still in flight: an Exec whose host is gone
	// kills its processes.
	hs.Close()
	session.Close()
	// Serve fails with whatever ended the session (the host hanging up
	// shows as EOF or EPIPE): that is the normal end of a session.
	<-served
}

// replayConn is a connection whose first bytes were already read.
type replayConn struct {
	io.ReadWriteCloser
	pending []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.ReadWriteCloser.Read(p)
}

// ServeListener serves every connection l accepts (vsock under
// Firecracker) until ctx is done, each in its own session; it closes l.
func (s *Server) ServeListener(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			l.Close()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("accept host connection: %w", err)
		}
		wg.Go(func() {
			if err := s.ServeConn(ctx, c); err != nil {
				s.log.Warn("host connection", "err", err)
			}
		})
	}
}

const (
	// hostPollInterval is how often a virtio-serial port without a host
	// is read again.
	hostPollInterval = 100 * time.Millisecond
	// readyTimeout bounds the write of a READY answer (writes to a port
	// block while no host is connected).
	readyTimeout = 5 * time.Second
	portChunk    = 32 << 10
)

// ServeVirtioPort serves the hosts that connect, one after the other, to
// the virtio-serial port at path (QEMU), until ctx is done.
//
// A virtio-serial port is one byte stream for the guest's whole life while
// the host's side (a unix socket in QEMU) comes and goes. Linux reports the
// host's side closing as end of file on read (and poll keeps reporting
// POLLHUP, so it cannot be waited on: the port is read again every 100 ms),
// and writes block until a host is back. QEMU keeps what the guest wrote
// while no host was there for the next one, and a quick reconnect can come
// and go without the guest ever reading end of file. So the port stays open
// for good, one goroutine reads it, and each session starts after a HELLO
// line (see agent.HelloScanner) and ends at end of file or when the
// session's own framing breaks (a new host's HELLO arriving in it).
func (s *Server) ServeVirtioPort(ctx context.Context, path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open agent port: %w", err)
	}
	return s.servePort(ctx, f, path)
}

// portFile is what ServeVirtioPort needs of the port's device: an
// *os.File, or a stand-in with the same behaviour in tests.
type portFile interface {
	io.ReadWriteCloser
	SetWriteDeadline(time.Time) error
}

// servePort serves hosts on f, which it closes on return.
func (s *Server) servePort(ctx context.Context, f portFile, path string) error {
	ctx, cancel := context.WithCancel(ctx)
	p := &port{f: f, events: make(chan portEvent)}
	var wg sync.WaitGroup
	wg.Go(func() { p.readLoop(ctx) })
	defer func() {
		cancel()
		f.Close()
		wg.Wait()
	}()

	var scan agent.HelloScanner
	var input []byte // already read, to scan before reading on
	for {
		ready, rest, ok := scan.Feed(input)
		for !ok {
			var ev portEvent
			select {
			case <-ctx.Done():
				return ctx.Err()
			case ev = <-p.events:
			}
			if ev.err != nil {
				return fmt.Errorf("read agent port: %w", ev.err)
			}
			if ev.hangup {
				scan = agent.HelloScanner{}
				continue
			}
			ready, rest, ok = scan.Feed(ev.data)
		}
		f.SetWriteDeadline(time.Now().Add(readyTimeout))
		_, err := f.Write(ready)
		f.SetWriteDeadline(time.Time{})
		if err != nil {
			s.log.Warn("agent port: answer hello", "err", err)
			input = nil
			continue
		}
		s.log.Info("host connected", "port", path)
		conn := &portConn{p: p, closed: make(chan struct{})}
		p.pending = rest
		s.serveSession(ctx, conn)
		f.SetWriteDeadline(time.Time{})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if conn.hangup {
			s.log.Info("host disconnected", "port", path)
			p.pending, input = nil, nil
			continue
		}
		// The session broke without the host leaving: most likely a new
		// host's HELLO reached it. Look for that HELLO in what the session
		// was last given.
		s.log.Info("host session broke; rescanning", "port", path)
		input = slices.Concat(conn.recent[0], conn.recent[1], p.pending)
		p.pending = nil
	}
}

// port is a virtio-serial port read by one goroutine.
type port struct {
	f      portFile
	events chan portEvent
	// pending is what was read but not consumed yet; it belongs to the
	// current session, or to ServeVirtioPort between sessions.
	pending []byte
}

// portEvent is data from the host, the host leaving, or a read error.
type portEvent struct {
	data   []byte
	hangup bool
	err    error
}

func (p *port) readLoop(ctx context.Context) {
	send := func(ev portEvent) bool {
		select {
		case p.events <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	connected := false
	for {
		buf := make([]byte, portChunk)
		n, err := p.f.Read(buf)
		switch {
		case n > 0:
			connected = true
			if !send(portEvent{data: buf[:n]}) {
				return
			}
		case errors.Is(err, io.EOF):
			if connected {
				connected = false
				if !send(portEvent{hangup: true}) {
					return
				}
			}
			t := time.NewTimer(hostPollInterval)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		case err != nil:
			if ctx.Err() == nil {
				send(portEvent{err: err})
			}
			return
		}
	}
}

// portConn is one host session's view of the port. Closing it (yamux does
// when the session ends) leaves the port open for the next host.
type portConn struct {
	p         *port
	closed    chan struct{}
	closeOnce sync.Once
	hangup    bool      // the session ended because the host left
	recent    [2][]byte // the last bytes handed to the session
}

func (c *portConn) Read(b []byte) (int, error) {
	for len(c.p.pending) == 0 {
		select {
		case <-c.closed:
			return 0, io.EOF
		case ev := <-c.p.events:
			switch {
			case ev.err != nil:
				return 0, ev.err
			case ev.hangup:
				c.hangup = true
				return 0, io.EOF
			}
			c.p.pending = ev.data
		}
	}
	n := copy(b, c.p.pending)
	c.recent[0], c.recent[1] = c.recent[1], c.p.pending[:n]
	c.p.pending = c.p.pending[n:]
	return n, nil
}

func (c *portConn) Write(b []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, io.ErrClosedPipe
	default:
	}
	return c.p.f.Write(b)
}

// Close ends the session's use of the port; a write blocked on a port
// whose host is gone is released by a deadline in the past.
func (c *portConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.p.f.SetWriteDeadline(time.Unix(1, 0))
	})
	return nil
}

// FindVirtioPort returns the device (/dev/vportNpM) of the virtio-serial
// port called name, looking in sysfs (normally /sys).
func FindVirtioPort(sysfs, name string) (string, error) {
	dirs, err := filepath.Glob(filepath.Join(sysfs, "class/virtio-ports/*"))
	if err != nil {
		return "", err
	}
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "name"))
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(d), nil
		}
	}
	return "", fmt.Errorf("virtio-serial port %q: %w", name, os.ErrNotExist)
}
