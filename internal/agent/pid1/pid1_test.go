package pid1

import (
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestIsMountPoint(t *testing.T) {
	for path, want := range map[string]bool{"/proc": true, "/": true, t.TempDir(): false} {
		got, err := isMountPoint(path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if got != want {
			t.Errorf("isMountPoint(%s) = %v, want %v", path, got, want)
		}
	}
}

func TestMountOnceLeavesMountedAlone(t *testing.T) {
	before := countMounts(t, "/proc")
	if err := mountOnce(mounts[0]); err != nil {
		t.Fatal(err)
	}
	if after := countMounts(t, "/proc"); after != before {
		t.Errorf("/proc mounted %d times after mountOnce, was %d", after, before)
	}
}

func countMounts(t *testing.T, target string) int {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == target {
			n++
		}
	}
	return n
}

// inNamespace runs fn on an OS thread moved into new namespaces of kind
// flags; the thread is thrown away afterwards.
func inNamespace(t *testing.T, flags int, fn func() error) error {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CI runs tests as root)")
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, now in other namespaces, dies with
		// the goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(flags); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func TestLoopbackUp(t *testing.T) {
	err := inNamespace(t, unix.CLONE_NEWNET, func() error {
		if up, err := loUp(); err != nil || up {
			t.Errorf("lo in a new namespace: up=%v err=%v, want down", up, err)
		}
		if err := LoopbackUp(); err != nil {
			return err
		}
		if up, err := loUp(); err != nil || !up {
			t.Errorf("lo after LoopbackUp: up=%v err=%v", up, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func loUp() (bool, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return false, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return false, err
	}
	return ifr.Uint16()&unix.IFF_UP != 0, nil
}

func TestSetHostname(t *testing.T) {
	err := inNamespace(t, unix.CLONE_NEWUTS, func() error {
		if err := SetHostname("vabcdefghijklmnop"); err != nil {
			return err
		}
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return err
		}
		if got := unix.ByteSliceToString(u.Nodename[:]); got != "vabcdefghijklmnop" {
			t.Errorf("hostname %q", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestUserProcesses(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	pids := userProcesses()
	if !slices.Contains(pids, cmd.Process.Pid) {
		t.Errorf("our child %d is not listed", cmd.Process.Pid)
	}
	if slices.Contains(pids, os.Getpid()) {
		t.Error("the caller is listed")
	}
	if comm, err := os.ReadFile("/proc/2/comm"); err == nil && strings.TrimSpace(string(comm)) == "kthreadd" && slices.Contains(pids, 2) {
		t.Error("kthreadd is listed")
	}
}
