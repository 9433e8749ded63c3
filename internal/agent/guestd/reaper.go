package guestd

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// Reaper collects the exit statuses of the processes the agent starts and,
// as PID 1, of every orphan that the kernel reparents to it. It is the only
// code that calls wait4, so it never steals a status someone waits for:
// Start registers a process under the same lock the reaping loop holds, and
// the loop hands each status to the waiter registered for its pid.
type Reaper struct {
	all bool

	mu      sync.Mutex
	waiters map[int]chan unix.WaitStatus

	sigs    chan os.Signal
	stop    chan struct{}
	stopped chan struct{}
}

// NewReaper starts a reaper. With reapAll (PID 1 or a child subreaper) it
// reaps every child, dispatching the statuses of registered ones and
// discarding the rest; otherwise it only waits for the processes it started,
// leaving the caller's other children alone (tests, a host process).
func NewReaper(reapAll bool) *Reaper {
	r := &Reaper{
		all:     reapAll,
		waiters: make(map[int]chan unix.WaitStatus),
		// One pending signal is enough: each pass reaps everything.
		sigs:    make(chan os.Signal, 1),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	signal.Notify(r.sigs, unix.SIGCHLD)
	go r.loop()
	// Children may have exited before the handler was installed.
	r.sigs <- unix.SIGCHLD
	return r
}

// Close stops the reaper. Processes still registered are no longer waited
// for.
func (r *Reaper) Close() {
	signal.Stop(r.sigs)
	close(r.stop)
	<-r.stopped
}

// Start starts cmd, which must not be waited for any other way (never call
// cmd.Wait), and returns a channel that receives its wait status once.
// cmd's standard streams must be nil or *os.File so that exec starts no
// copying goroutines that only Wait would end.
func (r *Reaper) Start(cmd *exec.Cmd) (<-chan unix.WaitStatus, error) {
	for _, f := range []any{cmd.Stdin, cmd.Stdout, cmd.Stderr} {
		if f == nil {
			continue
		}
		if _, ok := f.(*os.File); !ok {
			return nil, errors.New("reaper: standard streams must be *os.File")
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiters[cmd.Process.Pid] = ch
	return ch, nil
}

func (r *Reaper) loop() {
	defer close(r.stopped)
	for {
		select {
		case <-r.stop:
			return
		case <-r.sigs:
			r.reap()
		}
	}
}

func (r *Reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.all {
		for {
			var ws unix.WaitStatus
			pid, err := wait4(-1, &ws)
			if pid <= 0 || err != nil {
				return
			}
			r.dispatch(pid, ws)
		}
	}
	for pid := range r.waiters {
		var ws unix.WaitStatus
		got, err := wait4(pid, &ws)
		switch {
		case got == pid:
			r.dispatch(pid, ws)
		case errors.Is(err, unix.ECHILD):
			// Someone else reaped it: nothing will ever come. Report it as
			// killed rather than leave its waiter hanging.
			r.dispatch(pid, unix.WaitStatus(unix.SIGKILL))
		}
	}
}

// dispatch hands a status to its waiter; r.mu must be held.
func (r *Reaper) dispatch(pid int, ws unix.WaitStatus) {
	if ch, ok := r.waiters[pid]; ok {
		delete(r.waiters, pid)
		ch <- ws
	}
}

// wait4 is a non-blocking wait4 that retries on EINTR; it returns 0 when
// the child has not exited.
func wait4(pid int, ws *unix.WaitStatus) (int, error) {
	for {
		got, err := unix.Wait4(pid, ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("wait4 %d: %w", pid, err)
		}
		return got, nil
	}
}
