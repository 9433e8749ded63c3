package fakefc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// vsockDevice is the host end of the guest's vsock device: Firecracker's
// hybrid vsock protocol on a unix socket. A host connection sends
// "CONNECT <port>\n"; when something in the guest listens on the port,
// Firecracker answers "OK <host-side port>\n" and the connection carries
// the stream; otherwise Firecracker closes it.
type vsockDevice struct {
	s   *Server
	l   net.Listener
	cid uint32

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// handshakeTimeout bounds how long a host connection may take to send its
// CONNECT line.
const handshakeTimeout = 5 * time.Second

// maxConnectLine bounds the CONNECT line ("CONNECT 4294967295\n").
const maxConnectLine = 32

func newVsockDevice(s *Server, l net.Listener, cid uint32) *vsockDevice {
	v := &vsockDevice{s: s, l: l, cid: cid, conns: map[net.Conn]struct{}{}}
	v.wg.Add(1)
	go v.accept()
	return v
}

func (v *vsockDevice) accept() {
	defer v.wg.Done()
	for {
		c, err := v.l.Accept()
		if err != nil {
			return
		}
		if !v.track(c) {
			c.Close()
			return
		}
		v.wg.Add(1)
		go func() {
			defer v.wg.Done()
			defer v.untrack(c)
			v.serve(c)
		}()
	}
}

func (v *vsockDevice) track(c net.Conn) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return false
	}
	v.conns[c] = struct{}{}
	return true
}

func (v *vsockDevice) untrack(c net.Conn) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.conns, c)
	c.Close()
}

// close stops accepting, ends every bridged connection and removes the
// socket file.
func (v *vsockDevice) close() {
	v.mu.Lock()
	v.closed = true
	for c := range v.conns {
		c.Close()
	}
	v.mu.Unlock()
	v.l.Close() // a unix listener removes its socket file
	v.wg.Wait()
}

func (v *vsockDevice) serve(c net.Conn) {
	port, err := readConnect(c)
	if err != nil {
		v.s.logf("vsock: %v", err)
		return
	}
	if !v.s.isStarted() {
		v.s.logf("vsock: CONNECT %d before the guest runs: closed", port)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	g, err := v.s.machine.DialPort(ctx, port)
	cancel()
	if err != nil {
		// Clients poll until the guest listens: a refusal is routine and
		// not worth a console line each time.
		if !errors.Is(err, ErrNoListener) {
			v.s.logf("vsock: CONNECT %d: %v: closed", port, err)
		}
		return
	}
	defer g.Close()
	if !v.track(g) {
		return
	}
	defer v.untrack(g)
	if _, err := fmt.Fprintf(c, "OK %d\n", v.s.allocPort()); err != nil {
		return
	}
	splice(c, g)
}

// readConnect reads the CONNECT line byte by byte, so nothing after it is
// consumed, and returns the port.
func readConnect(c net.Conn) (uint32, error) {
	c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	defer c.SetReadDeadline(time.Time{})
	r := bufio.NewReaderSize(oneByteReader{c}, 16)
	var line []byte
	for {
		b, err := r.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("read CONNECT line: %w", err)
		}
		if b == '\n' {
			break
		}
		line = append(line, b)
		if len(line) > maxConnectLine {
			return 0, fmt.Errorf("CONNECT line too long: %q", line)
		}
	}
	arg, ok := strings.CutPrefix(string(line), "CONNECT ")
	if !ok {
		return 0, fmt.Errorf("bad command %q", line)
	}
	port, err := strconv.ParseUint(arg, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("bad port in %q", line)
	}
	return uint32(port), nil
}

// oneByteReader reads one byte per call, so the bufio.Reader above never
// reads past the line.
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}

// splice copies both ways until either side ends, then closes both.
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	a.Close()
	b.Close()
	<-done
}
