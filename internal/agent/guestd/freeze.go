package guestd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	agentv1 "github.com/hypervm/hyper/api/agent/v1"
)

// The fsfreeze ioctls (linux/fs.h: _IOWR('X', 119, int), _IOWR('X', 120,
// int)); golang.org/x/sys does not define them.
const (
	ioctlFIFREEZE = 0xc0045877
	ioctlFITHAW   = 0xc0045878
)

const (
	defaultFreezeTimeout = 30 * time.Second
	maxFreezeTimeout     = 10 * time.Minute
)

// freezer freezes one filesystem and thaws it when asked or, if the host
// vanished mid-fork, when a timer runs out.
type freezer struct {
	path string
	log  *slog.Logger

	mu     sync.Mutex
	frozen bool
	timer  *time.Timer
}

func newFreezer(path string, log *slog.Logger) *freezer {
	return &freezer{path: path, log: log}
}

func (f *freezer) ioctl(req uint) error {
	fd, err := unix.Open(f.path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", f.path, err)
	}
	defer unix.Close(fd)
	return unix.IoctlSetInt(fd, req, 0)
}

// freeze freezes the filesystem and (re)arms the automatic thaw.
func (f *freezer) freeze(timeout time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	// EBUSY: already frozen (by an earlier Freeze whose Thaw never came).
	if err := f.ioctl(ioctlFIFREEZE); err != nil && !errors.Is(err, unix.EBUSY) {
		return fileError("freeze "+f.path, err)
	}
	f.frozen = true
	if f.timer != nil {
		f.timer.Stop()
	}
	var t *time.Timer
	t = time.AfterFunc(timeout, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.timer != t {
			return // re-armed or thawed since
		}
		f.log.Warn("no thaw came: thawing", "path", f.path, "after", timeout)
		f.thawLocked()
	})
	f.timer = t
	return nil
}

// thaw thaws the filesystem if it is frozen and says whether it was.
func (f *freezer) thaw() (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.thawLocked()
}

func (f *freezer) thawLocked() (bool, error) {
	if f.timer != nil {
		f.timer.Stop()
		f.timer = nil
	}
	f.frozen = false
	err := f.ioctl(ioctlFITHAW)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EINVAL):
		return false, nil // not frozen
	default:
		return false, fileError("thaw "+f.path, err)
	}
}

func (f *freezer) isFrozen() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.frozen
}

// Sync flushes every filesystem.
func (s *Server) Sync(context.Context, *connect.Request[agentv1.SyncRequest]) (*connect.Response[agentv1.SyncResponse], error) {
	unix.Sync()
	return connect.NewResponse(&agentv1.SyncResponse{}), nil
}

// Freeze freezes the writable filesystem.
func (s *Server) Freeze(_ context.Context, req *connect.Request[agentv1.FreezeRequest]) (*connect.Response[agentv1.FreezeResponse], error) {
	timeout := defaultFreezeTimeout
	if t := req.Msg.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() <= 0 || t.AsDuration() > maxFreezeTimeout {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("timeout: %v is not between 0 and %v", t.AsDuration(), maxFreezeTimeout))
		}
		timeout = t.AsDuration()
	}
	if err := s.freezer.freeze(timeout); err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.FreezeResponse{}), nil
}

// Thaw thaws the writable filesystem.
func (s *Server) Thaw(context.Context, *connect.Request[agentv1.ThawRequest]) (*connect.Response[agentv1.ThawResponse], error) {
	was, err := s.freezer.thaw()
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.ThawResponse{WasFrozen: was}), nil
}
