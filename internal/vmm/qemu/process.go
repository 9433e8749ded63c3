package qemu

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

// process is a QEMU process held by a pidfd, so signals and waits reach the
// process that was verified even if its pid is later reused. It need not be
// our child: a daemonized QEMU is reparented away from us.
type process struct {
	pid   int
	pidfd int
}

// openProcess opens pid and checks that it is the QEMU started with
// pidfile: its argv[0] is a qemu-system binary and its argv holds
// "-pidfile <pidfile>". The check runs after the pidfd is open, so the
// process it vouches for is the one the pidfd holds.
func openProcess(pid int, pidfile string) (*process, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil, errGone
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	p := &process{pid: pid, pidfd: fd}
	if err := p.verify(pidfile); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

var errGone = errors.New("process is gone")

func (p *process) verify(pidfile string) error {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errGone
		}
		return err
	}
	argv := strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
	if len(argv) == 0 || !strings.HasPrefix(filepath.Base(argv[0]), "qemu-system-") {
		return fmt.Errorf("pid %d is not QEMU (argv[0] %q): %w", p.pid, argv[0], errGone)
	}
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == "-pidfile" && argv[i+1] == pidfile {
			return nil
		}
	}
	return fmt.Errorf("pid %d is a QEMU of another VM (no -pidfile %s): %w", p.pid, pidfile, errGone)
}

// exited reports whether the process has exited without blocking.
func (p *process) exited() bool {
	fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// wait blocks until the process exits or ctx is done.
func (p *process) wait(ctx context.Context) error {
	for {
		fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 50)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("wait for qemu %d: %w", p.pid, err)
		}
		if n > 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

func (p *process) kill() error {
	err := unix.PidfdSendSignal(p.pidfd, unix.SIGKILL, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

func (p *process) close() { unix.Close(p.pidfd) }

// readPidfile reads the pid QEMU wrote.
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
