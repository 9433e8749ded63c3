package suid

import (
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// The privilege model. The binary is setuid root, so it starts with real
// ids = the caller's and effective uid 0. Drop, called as the first
// statement of main, clears the supplementary groups and sets the effective
// ids to the caller's, keeping 0 only as the saved uid. From then on every
// file the helper opens, reads or creates is accessed as the caller, except
// inside asRoot, which wraps exactly the privileged step of an op.
//
// The syscall package (not x/sys/unix) is used on purpose: since Go 1.16 its
// Setresuid, Setresgid and Setgroups apply to every OS thread of the process
// (AllThreadsSyscall), so no goroutine can keep running as root on another
// thread. That requires a static, cgo-free build.

// ids are the caller's real uid and gid.
type ids struct{ uid, gid int }

var (
	caller     ids
	setuidRoot bool // whether the process started with effective uid 0
)

// Drop must run before anything else in main. It never raises.
func Drop() {
	caller = ids{syscall.Getuid(), syscall.Getgid()}
	setuidRoot = syscall.Geteuid() == 0
	if !setuidRoot {
		return // Main refuses every privileged op; version still works
	}
	if err := syscall.Setgroups(nil); err != nil {
		dropFailed("clear supplementary groups", err)
	}
	if err := syscall.Setresgid(caller.gid, caller.gid, caller.gid); err != nil {
		dropFailed("set gid", err)
	}
	if err := syscall.Setresuid(caller.uid, caller.uid, 0); err != nil {
		dropFailed("set uid", err)
	}
}

func dropFailed(what string, err error) {
	fmt.Fprintf(os.Stderr, "hyper-suidhelper: cannot drop privileges: %s: %v\n", what, err)
	os.Exit(1)
}

// asRoot runs fn with effective uid and gid 0 and drops back afterwards.
// If dropping back fails the process exits at once: nothing may continue
// with root it did not ask for.
func asRoot(fn func() error) error {
	if err := raise(); err != nil {
		return err
	}
	defer func() {
		if err := syscall.Setresgid(-1, caller.gid, -1); err != nil {
			dropFailed("restore gid", err)
		}
		if err := syscall.Setresuid(-1, caller.uid, -1); err != nil {
			dropFailed("restore uid", err)
		}
	}()
	return fn()
}

func raise() error {
	if err := syscall.Setresuid(-1, 0, -1); err != nil {
		return refused("not installed setuid root: %v", err)
	}
	if err := syscall.Setresgid(-1, 0, -1); err != nil {
		if err2 := syscall.Setresuid(-1, caller.uid, -1); err2 != nil {
			dropFailed("restore uid", err2)
		}
		return fmt.Errorf("set gid 0: %w", err)
	}
	return nil
}

// becomeRoot turns the process into root for good before it execs the
// jailer: gid first, uid last (sealing real, effective and saved ids), an
// empty group list, and every descriptor above 2 marked close-on-exec.
// Once the real uid is 0 the kernel no longer treats the exec as secure,
// so the caller must also pass an empty environment.
func becomeRoot() error {
	if err := syscall.Setresuid(-1, 0, -1); err != nil {
		return refused("not installed setuid root: %v", err)
	}
	if err := syscall.Setresgid(0, 0, 0); err != nil {
		return fmt.Errorf("set gid 0: %w", err)
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("clear groups: %w", err)
	}
	if err := syscall.Setresuid(0, 0, 0); err != nil {
		return fmt.Errorf("set uid 0: %w", err)
	}
	return cloexecFrom3()
}

// cloexecFrom3 marks every descriptor above 2 close-on-exec. Closing them
// outright could pull a descriptor from under the Go runtime before exec.
func cloexecFrom3() error {
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return nil
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	for fd := 3; uint64(fd) < min(lim.Cur, 1<<20); fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && err != unix.EBADF {
			return fmt.Errorf("mark fd %d close-on-exec: %w", fd, err)
		}
	}
	return nil
}
