package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// process is the VM's Firecracker held by a pidfd, so that signals and
// waits reach the process that was verified even if its pid is reused. It
// is the driver's child after Start (the helper and the jailer exec in
// place, keeping the pid) and a stranger after Attach. The pidfd is
// registered with the runtime's poller: waiting for the exit parks a
// goroutine, not a thread.
type process struct {
	pid  int
	fd   *os.File      // the pidfd
	done chan struct{} // closed once the process has exited
}

var errGone = errors.New("process is gone")

func openPidfd(pid int) (*process, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		return nil, errGone
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	p := &process{pid: pid, fd: os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid)), done: make(chan struct{})}
	go p.watch()
	return p, nil
}

// watch closes done when the pidfd becomes readable (the process exited)
// or is closed.
func (p *process) watch() {
	defer close(p.done)
	rc, err := p.fd.SyscallConn()
	if err != nil {
		return
	}
	rc.Read(func(fd uintptr) bool {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
		return err != nil && !errors.Is(err, unix.EINTR) || n > 0
	})
}

// attachProcess opens pid and checks that it is the Firecracker of VM id:
// its argv[0] names firecracker and it carries --id <id> (or --id=<id>),
// which the jailer passes. The check runs after the pidfd is open, so the
// process it vouches for is the one the pidfd holds.
func attachProcess(pid int, id string) (*process, error) {
	p, err := openPidfd(pid)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		p.close()
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return nil, errGone
		}
		return nil, err
	}
	if !isFirecrackerOf(strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00"), id) {
		p.close()
		return nil, fmt.Errorf("pid %d is not the firecracker of vm %s (argv %q): %w", pid, id, raw, errGone)
	}
	return p, nil
}

func isFirecrackerOf(argv []string, id string) bool {
	if len(argv) == 0 || !strings.Contains(filepath.Base(argv[0]), "firecracker") {
		return false
	}
	for i, a := range argv[1:] {
		if a == "--id="+id || a == "--id" && i+2 < len(argv) && argv[i+2] == id {
			return true
		}
	}
	return false
}

// exited reports, without blocking, whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait blocks until the process exits or ctx is done.
func (p *process) wait(ctx context.Context) error {
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// kill sends SIGKILL. It fails with EPERM when the process runs as the
// jail's user and the caller is neither root nor that user.
func (p *process) kill() error {
	rc, err := p.fd.SyscallConn()
	if err != nil {
		return nil // closed: the process is gone
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.PidfdSendSignal(int(fd), unix.SIGKILL, nil, 0) }); err != nil {
		return nil
	}
	if errors.Is(serr, unix.ESRCH) {
		return nil
	}
	return serr
}

// close releases the pidfd; the process then counts as exited, so it is
// for processes that have exited or are no longer wanted.
func (p *process) close() {
	p.fd.Close()
	<-p.done
}

func writePidfile(path string, pid int) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readPidfile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pidfile %s: bad pid %q", path, bytes.TrimSpace(b))
	}
	return pid, nil
}
