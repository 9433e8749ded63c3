package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DialFunc opens one byte stream to a guest's agent.
type DialFunc func(ctx context.Context) (net.Conn, error)

// ErrNotReady marks a dial failure that a retry may cure: the socket is
// not there yet, nobody listens on it, or the guest refused the port.
var ErrNotReady = errors.New("agent not ready")

// retryInterval is how long Dial waits between attempts.
const retryInterval = 100 * time.Millisecond

// DialUnix returns a DialFunc for a unix socket, such as the one QEMU binds
// to the guest's virtio-serial agent port.
func DialUnix(path string) DialFunc {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, markNotReady(err)
		}
		return c, nil
	}
}

// DialFirecrackerVsock returns a DialFunc that reaches guest vsock port
// port through Firecracker's hybrid vsock unix socket at udsPath: it
// connects, writes "CONNECT <port>\n" and expects a line starting with
// "OK ". The line is read byte by byte so none of the guest's bytes that
// follow it are swallowed.
func DialFirecrackerVsock(udsPath string, port uint32) DialFunc {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", udsPath)
		if err != nil {
			return nil, markNotReady(err)
		}
		if err := vsockHandshake(ctx, c, port); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

// maxHandshakeLine bounds Firecracker's answer ("OK <host port>\n").
const maxHandshakeLine = 64

func vsockHandshake(ctx context.Context, c net.Conn, port uint32) error {
	deadline := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.SetDeadline(deadline); err != nil {
		return fmt.Errorf("vsock handshake: %w", err)
	}
	if _, err := io.WriteString(c, "CONNECT "+strconv.FormatUint(uint64(port), 10)+"\n"); err != nil {
		return fmt.Errorf("vsock handshake: send CONNECT %d: %w", port, markNotReady(err))
	}
	var line []byte
	var b [1]byte
	for {
		if _, err := io.ReadFull(c, b[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				// Firecracker closes the connection when nothing in the
				// guest listens on the port yet.
				return fmt.Errorf("vsock handshake: port %d: connection closed after %q: %w", port, line, ErrNotReady)
			}
			if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
				// Firecracker did not answer in time; the boot deadline,
				// not this read, decides when to give up.
				return fmt.Errorf("vsock handshake: port %d: no answer within 5s: %w", port, ErrNotReady)
			}
			return fmt.Errorf("vsock handshake: port %d: %w", port, markNotReady(err))
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
		if len(line) > maxHandshakeLine {
			return fmt.Errorf("vsock handshake: port %d: answer longer than %d bytes: %q", port, maxHandshakeLine, line)
		}
	}
	if !strings.HasPrefix(string(line), "OK ") {
		return fmt.Errorf("vsock handshake: port %d: unexpected answer %q: %w", port, line, ErrNotReady)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("vsock handshake: %w", err)
	}
	return nil
}

// markNotReady wraps the errors that mean "nobody is listening yet" with
// ErrNotReady.
func markNotReady(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return fmt.Errorf("%w: %w", ErrNotReady, err)
	}
	return err
}
