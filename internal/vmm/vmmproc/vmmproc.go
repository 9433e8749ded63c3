// Package vmmproc tracks a VMM's process through a pidfd, for the VMM
// drivers. Both drivers outlive and re-attach to the VMMs they start, so
// they hold them by pidfd rather than by pid: a signal or a wait then
// reaches the process that was checked even if its pid is later reused,
// and the process need not be the caller's child. Which process is the
// right one stays each driver's own check; this package holds only the
// mechanism they share, and the pidfiles that name the process across
// daemon restarts.
package vmmproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrGone means the process has exited, or the pid no longer names the
// process it was meant to.
var ErrGone = errors.New("process is gone")

// Process is a process held by a pidfd. The pidfd is registered with the
// runtime's poller, so waiting for the exit parks a goroutine, not a
// thread. Methods are safe for concurrent use.
type Process struct {
	pid  int
	fd   *os.File      // the pidfd
	done chan struct{} // closed once the pidfd has reported the exit or been closed
}

// Open opens a pidfd for pid. It fails with ErrGone if no process has pid.
// It says nothing about which program pid runs: for a process found
// through a pidfile, use Attach. PIDFD_NONBLOCK, which the runtime poller
// needs, takes Linux 5.10 or later.
func Open(pid int) (*Process, error) {
	if pid <= 0 || pid > math.MaxInt32 {
		return nil, fmt.Errorf("pidfd_open %d: pid out of range", pid)
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		return nil, ErrGone
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	p := &Process{pid: pid, fd: os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid)), done: make(chan struct{})}
	go p.watch()
	return p, nil
}

// Attach opens pid and hands its command line to check, which returns an
// error saying why the process is not the one wanted. The check runs after
// the pidfd is open, and Argv refuses a process that has exited, so the
// process it vouches for is the one the pidfd holds even if the pid is
// reused meanwhile. A refused process comes back as an error wrapping
// ErrGone (the wanted one is not there), its pidfd closed again.
func Attach(pid int, check func(argv []string) error) (*Process, error) {
	p, err := Open(pid)
	if err != nil {
		return nil, err
	}
	argv, err := p.Argv()
	if err == nil {
		if cerr := check(argv); cerr != nil {
			err = fmt.Errorf("pid %d %w: %w", pid, cerr, ErrGone)
		}
	}
	if err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// watch closes done when the pidfd becomes readable (the process exited)
// or is closed.
func (p *Process) watch() {
	defer close(p.done)
	rc, err := p.fd.SyscallConn()
	if err != nil {
		return
	}
	rc.Read(func(fd uintptr) bool {
		exited, err := pollExited(fd)
		return exited || err != nil && !errors.Is(err, unix.EINTR)
	})
}

// pollExited reports, without blocking, whether the pidfd fd is readable,
// which it is once its process has exited.
func pollExited(fd uintptr) (bool, error) {
	n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
	return n > 0, err
}

// Pid is the process's id.
func (p *Process) Pid() int { return p.pid }

// Argv returns the process's command line from /proc: empty for a kernel
// thread, and for a moment while a process execs. It fails with ErrGone if the process has exited, for then the
// pid may already name another process, whose command line this would be.
func (p *Process) Argv() ([]string, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.pid))
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) || p.Exited() {
		return nil, ErrGone
	}
	if err != nil {
		return nil, err
	}
	if len(raw) == 0 {
		return nil, nil
	}
	return strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00"), nil
}

// Exited reports, without blocking, whether the process has exited. A
// closed Process counts as exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
	}
	// The watcher may not have run since the exit: ask the pidfd itself.
	rc, err := p.fd.SyscallConn()
	if err != nil {
		return true
	}
	exited := false
	if err := rc.Control(func(fd uintptr) { exited, _ = pollExited(fd) }); err != nil {
		return true // closed
	}
	return exited
}

// Wait blocks until the process exits or ctx is done. An exit wins over a
// ctx that is done at the same time. On a closed Process it returns nil.
func (p *Process) Wait(ctx context.Context) error {
	if p.Exited() {
		return nil
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Kill sends SIGKILL. A process that has exited is not an error. It fails
// with an error matching os.ErrPermission when the caller may not signal
// the process (it runs as another user and the caller is not root).
func (p *Process) Kill() error {
	rc, err := p.fd.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.PidfdSendSignal(int(fd), unix.SIGKILL, nil, 0) }); err != nil {
		return fmt.Errorf("kill pid %d: %w", p.pid, os.ErrClosed)
	}
	if serr == nil || errors.Is(serr, unix.ESRCH) {
		return nil
	}
	return os.NewSyscallError("pidfd_send_signal", serr)
}

// Close releases the pidfd and returns once its watcher has stopped. The
// process itself is left alone; from then on it counts as exited, so Close
// is for processes that have exited or are no longer wanted.
func (p *Process) Close() {
	p.fd.Close()
	<-p.done
}

// ReadPidfile returns the pid written in the pidfile at path: decimal,
// surrounded by optional white space. Pids 0 and 1 are refused, as no VMM
// can have them.
func ReadPidfile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	b = bytes.TrimSpace(b)
	pid, err := strconv.Atoi(string(b))
	if err != nil || pid <= 1 || pid > math.MaxInt32 {
		return 0, fmt.Errorf("pidfile %s: bad pid %q", path, b)
	}
	return pid, nil
}

// WritePidfile writes pid to the pidfile at path, replacing any old one
// by rename, so that a reader sees the old pid or the new one, never a
// partial write.
func WritePidfile(path string, pid int) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
