package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"connectrpc.com/connect"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
	"github.com/hypervm/hyper/internal/ids"
	"github.com/hypervm/hyper/internal/store"
)

const (
	// logChunk is the most console output one message carries.
	logChunk = 32 << 10
	// logPoll is how often a follower looks for new output and for the
	// VM's end. Polling costs one stat and one store read per interval and
	// works on any filesystem, where inotify would miss writes made through
	// another mount or host.
	logPoll = 250 * time.Millisecond
)

func (s *Server) GetVmLogs(ctx context.Context, req *connect.Request[hyperv1.GetVmLogsRequest], stream *connect.ServerStream[hyperv1.GetVmLogsResponse]) (err error) {
	defer func() { s.logStreamFailure(ctx, "GetVmLogs", err) }()
	if s.vms == nil {
		return unimplemented("GetVmLogs", "this node runs no VMs")
	}
	id := req.Msg.GetId()
	if !ids.IsVM(id) {
		return invalid("id", "%q is not a VM id (want v followed by 16 of [a-z2-7])", id)
	}
	if req.Msg.GetTailBytes() < 0 {
		return invalid("tail_bytes", "%d is negative", req.Msg.GetTailBytes())
	}
	p, err := s.vms.ConsoleLog(ctx, id)
	if err != nil {
		return apiError(withVM(id, fmt.Errorf("console log: %w", err)))
	}
	console := &consoleLog{path: p}
	defer console.close()
	if err := console.open(req.Msg.GetTailBytes()); err != nil {
		return apiError(fmt.Errorf("vm %s: %w", id, err))
	}
	sent := false
	send := func(b []byte) error {
		sent = true
		return stream.Send(&hyperv1.GetVmLogsResponse{Data: b})
	}
	if !req.Msg.GetFollow() {
		return apiError(console.copy(send))
	}

	t := time.NewTicker(logPoll)
	defer t.Stop()
	for {
		// The state is read before the output is copied, so everything the
		// VM wrote before it ended is sent before the stream ends.
		ended, err := s.vmEnded(ctx, id)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return apiError(err)
		}
		if err := console.copy(send); err != nil {
			return apiError(err)
		}
		if ended {
			return nil
		}
		if !sent {
			// Clients see the call start only with the response headers,
			// which go out with the first message: an empty one tells a
			// follower of a silent console that it is following.
			if err := send(nil); err != nil {
				return apiError(err)
			}
		}
		select {
		case <-ctx.Done():
			// The client stopped following: the normal end of a follow.
			return nil
		case <-t.C:
		}
	}
}

// vmEnded reports whether the store says the VM will write no more output.
func (s *Server) vmEnded(ctx context.Context, id string) (bool, error) {
	vm, err := s.store.GetVM(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("vm %s: %w", id, err)
	}
	switch vm.State {
	case store.StateStopped, store.StateFailed, store.StateLost:
		return true, nil
	}
	return false, nil
}

// consoleLog reads a VM's console log file from an offset onwards. A file
// that does not exist yet is read as empty until it appears; one that is
// truncated is read again from its start; one that is replaced is read to
// its end, then the new one from its start.
type consoleLog struct {
	path string
	f    *os.File
	off  int64
	buf  []byte
}

// open opens the log positioned tail bytes before its end (0: at its
// start).
func (c *consoleLog) open(tail int64) error {
	f, err := os.Open(c.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open console log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("stat console log: %w", err)
	}
	c.f = f
	if tail > 0 {
		c.off = max(0, fi.Size()-tail)
	}
	return nil
}

// copy sends everything from the offset to the current end of the log.
func (c *consoleLog) copy(send func([]byte) error) error {
	if c.f == nil {
		if err := c.open(0); err != nil || c.f == nil {
			return err
		}
	}
	fi, err := c.f.Stat()
	if err != nil {
		return fmt.Errorf("stat console log: %w", err)
	}
	if fi.Size() < c.off {
		c.off = 0
	}
	if err := c.copyOpen(send); err != nil {
		return err
	}
	// Replaced while we read the old one, which has now been read to its
	// end: continue with the new one.
	if now, err := os.Stat(c.path); err == nil && !os.SameFile(fi, now) {
		c.close()
		c.off = 0
		return c.copy(send)
	}
	return nil
}

func (c *consoleLog) copyOpen(send func([]byte) error) error {
	if c.buf == nil {
		c.buf = make([]byte, logChunk)
	}
	for {
		n, err := c.f.ReadAt(c.buf, c.off)
		if n > 0 {
			c.off += int64(n)
			// Send has marshalled the message when it returns, so the
			// buffer can be reused.
			if err := send(c.buf[:n]); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read console log: %w", err)
		}
	}
}

func (c *consoleLog) close() {
	if c.f != nil {
		c.f.Close()
		c.f = nil
	}
}
