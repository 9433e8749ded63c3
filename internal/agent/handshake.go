package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Every host connection starts with a handshake before yamux takes over:
//
//	host:  "HYPER-AGENT/1 HELLO <nonce>\n"
//	guest: "HYPER-AGENT/1 READY <nonce>\n"
//
// with a fresh random nonce per connection. Under QEMU the channel is one
// virtio-serial byte stream for the guest's whole life, and it does not
// separate host connections cleanly: bytes the guest wrote for an earlier
// host can reach the next one, and a guest that misses a quick
// disconnect-reconnect sees the new host's bytes in its old session. The
// handshake resynchronises both ends: the guest discards everything until a
// HELLO line and starts a fresh session after it; the host discards
// everything until the READY line carrying its own nonce.
const (
	helloPrefix = "HYPER-AGENT/1 HELLO "
	readyPrefix = "HYPER-AGENT/1 READY "
	nonceLen    = 32 // hex characters
	// maxStale bounds what the host discards before the READY line.
	maxStale = 4 << 20
)

// handshake sends HELLO on c and waits for the matching READY, until
// deadline. It returns a connection that yields whatever followed the
// READY line.
func handshake(ctx context.Context, c net.Conn, deadline time.Time) (net.Conn, error) {
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("agent handshake: %w", err)
	}
	// The context may end before the deadline.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var raw [nonceLen / 2]byte
	rand.Read(raw[:])
	nonce := hex.EncodeToString(raw[:])
	if _, err := io.WriteString(c, helloPrefix+nonce+"\n"); err != nil {
		return nil, fmt.Errorf("%w: agent handshake: send hello: %v", ErrNotReady, err)
	}
	want := []byte(readyPrefix + nonce + "\n")
	r := bufio.NewReaderSize(c, 4<<10)
	var window []byte
	stale := 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			return nil, fmt.Errorf("%w: agent handshake: no answer: %v", ErrNotReady, err)
		}
		window = append(window, b)
		if len(window) > len(want) {
			window = window[1:]
		}
		if bytes.Equal(window, want) {
			break
		}
		if stale++; stale > maxStale {
			return nil, fmt.Errorf("agent handshake: no answer in the first %d bytes", maxStale)
		}
	}
	if !stop() && ctx.Err() != nil {
		return nil, fmt.Errorf("agent handshake: %w", ctx.Err())
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("agent handshake: %w", err)
	}
	// Keep only the bytes read past READY, not the reader's buffer: the
	// connection lives as long as the VM, and every VM has one.
	rest, _ := r.Peek(r.Buffered())
	if len(rest) == 0 {
		return c, nil
	}
	return &prefixConn{Conn: c, prefix: bytes.Clone(rest)}, nil
}

// prefixConn is a connection whose first reads return prefix.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// HelloScanner finds a host's HELLO line in a byte stream that may carry
// leftovers of earlier connections before it. It is the guest's half of
// the handshake.
type HelloScanner struct {
	buf []byte
}

// maxLine is the longest a HELLO line can be.
const maxLine = len(helloPrefix) + nonceLen + 1

// Feed scans p. Once a complete HELLO line is found it returns the READY
// line to answer with, the bytes of p after the HELLO line (the start of
// the host's yamux session), and true; the scanner is then reset.
func (s *HelloScanner) Feed(p []byte) (ready []byte, rest []byte, ok bool) {
	for i, b := range p {
		s.buf = append(s.buf, b)
		if len(s.buf) > maxLine {
			s.buf = s.buf[len(s.buf)-maxLine:]
		}
		if b != '\n' || len(s.buf) != maxLine || !bytes.HasPrefix(s.buf, []byte(helloPrefix)) {
			continue
		}
		nonce := s.buf[len(helloPrefix) : maxLine-1]
		if !isHex(nonce) {
			continue
		}
		ready = []byte(readyPrefix + string(nonce) + "\n")
		s.buf = s.buf[:0]
		return ready, p[i+1:], true
	}
	return nil, nil, false
}

func isHex(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// AcceptHello reads r until a HELLO line, writes the READY answer to w and
// returns what r yielded after the HELLO line. It is the guest's handshake
// on a connection of its own (vsock).
func AcceptHello(r io.Reader, w io.Writer) ([]byte, error) {
	var s HelloScanner
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if ready, rest, ok := s.Feed(buf[:n]); ok {
			if _, err := w.Write(ready); err != nil {
				return nil, fmt.Errorf("agent handshake: answer: %w", err)
			}
			return bytes.Clone(rest), nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("agent handshake: connection closed before hello: %w", err)
			}
			return nil, fmt.Errorf("agent handshake: %w", err)
		}
	}
}
