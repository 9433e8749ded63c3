// Package pid1 holds what hyper-agent does only because it is a guest's
// init: mounting the kernel filesystems, naming the host, bringing up
// loopback, stopping every process and powering off. Each step is a small
// function so the rest of the agent runs and is tested as an ordinary
// process.
package pid1

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// mount is one filesystem the agent needs.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   os.FileMode
}

// mounts are mounted in order; /run is not among them: stage 1 mounted a
// tmpfs there holding the disks, which must stay visible.
var mounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666", 0o755},
	{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
}

// MountAll mounts proc, sys, dev, devpts, /dev/shm and /tmp where they are
// not mounted yet, and adds the /dev links programs expect.
func MountAll() error {
	for _, m := range mounts {
		if err := mountOnce(m); err != nil {
			return err
		}
	}
	links := [][2]string{
		{"/proc/self/fd", "/dev/fd"},
		{"/proc/self/fd/0", "/dev/stdin"},
		{"/proc/self/fd/1", "/dev/stdout"},
		{"/proc/self/fd/2", "/dev/stderr"},
		{"pts/ptmx", "/dev/ptmx"},
	}
	for _, l := range links {
		if l[1] == "/dev/ptmx" {
			// devtmpfs has a ptmx node of its own, which serves the
			// devpts instance mounted at /dev/pts: keep it.
			if _, err := os.Lstat(l[1]); err == nil {
				continue
			}
		}
		if err := os.Symlink(l[0], l[1]); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("link %s: %w", l[1], err)
		}
	}
	return nil
}

func mountOnce(m mount) error {
	if err := os.MkdirAll(m.target, m.mode); err != nil {
		return fmt.Errorf("mount %s: %w", m.target, err)
	}
	if mounted, err := isMountPoint(m.target); err == nil && mounted {
		return nil
	}
	err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
	if err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
	}
	return nil
}

// isMountPoint reports whether path is the root of a mount.
func isMountPoint(path string) (bool, error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &stx); err != nil {
		return false, err
	}
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return false, errors.New("statx: mount root attribute unsupported")
	}
	return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
}

// SetHostname sets the guest's hostname (the VM id).
func SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("set hostname %q: %w", name, err)
	}
	return nil
}

// LoopbackUp brings up lo; the kernel gives it 127.0.0.1 and ::1 itself.
func LoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: set flags: %w", err)
	}
	return nil
}

// Console opens the kernel console for writing, falling back to stderr.
func Console() *os.File {
	f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return os.Stderr
	}
	return f
}

// KillAll sends SIGTERM to every process but the caller, waits up to grace
// for them to go (the caller's reaper collects them), then SIGKILLs what is
// left.
func KillAll(grace time.Duration) {
	unix.Kill(-1, unix.SIGTERM)
	// kill(-1, 0) cannot tell when they are gone: kernel threads count.
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if len(userProcesses()) == 0 {
			return
		}
	}
	unix.Kill(-1, unix.SIGKILL)
}

// pfKthread is PF_KTHREAD, the flag of kernel threads in /proc/PID/stat.
const pfKthread = 0x00200000

// userProcesses lists the live processes other than the caller and kernel
// threads; zombies count as gone.
func userProcesses() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone
		}
		// After "pid (comm) ": state ppid pgrp session tty_nr tpgid flags.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 7 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if flags, err := strconv.ParseUint(f[6], 10, 64); err == nil && flags&pfKthread != 0 {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// PowerOff syncs the disks and powers the machine off, or reboots it. It
// returns only if that failed (the caller lacks CAP_SYS_BOOT), saying why.
func PowerOff(reboot bool) error {
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if reboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	if err := unix.Reboot(cmd); err != nil {
		return fmt.Errorf("reboot(%#x): %w", cmd, err)
	}
	return fmt.Errorf("reboot(%#x) returned", cmd)
}

// Fatal reports err on the console and powers off; it never returns, since
// a PID 1 that exits panics the kernel.
func Fatal(err error) {
	fmt.Fprintf(Console(), "hyper-agent: fatal: %v\nhyper-agent: powering off\n", err)
	KillAll(2 * time.Second)
	if err := PowerOff(false); err != nil {
		fmt.Fprintf(Console(), "hyper-agent: %v\n", err)
	}
	for {
		time.Sleep(time.Hour)
	}
}
