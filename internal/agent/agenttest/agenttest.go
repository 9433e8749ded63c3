// Package agenttest serves a real guest agent (internal/agent/guestd) in
// the test process and connects a real host client to it over a
// socketpair, so tests of the agent and of the code above it run real
// processes through the real protocol without a VM.
package agenttest

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/agent/guestd"
)

// Serve starts a guest agent with cfg (and a reaper of its own) and
// returns the server and a client connected to it; both stop when the test
// ends, and an error from the server fails the test.
func Serve(t testing.TB, cfg guestd.Config) (*guestd.Server, *agent.Client) {
	t.Helper()
	reaper := guestd.NewReaper(false)
	cfg.Reaper = reaper
	srv := guestd.New(cfg)

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	hostConn, guestConn := fileConn(t, fds[0]), fileConn(t, fds[1])

	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.ServeConn(ctx, guestConn) }()

	dialCtx, dialCancel := context.WithTimeout(ctx, 10*time.Second)
	defer dialCancel()
	client, err := agent.Dial(dialCtx, func(context.Context) (net.Conn, error) { return hostConn, nil })
	if err != nil {
		cancel()
		<-served
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("guest ServeConn: %v", err)
		}
		srv.Close()
		reaper.Close()
	})
	return srv, client
}

func fileConn(t testing.TB, fd int) net.Conn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "socketpair")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// MountExt4 makes a small ext4 image, loop-mounts it and returns the mount
// point: a real filesystem for an agent to freeze. When the test ends it is
// thawed (a failed test may leave it frozen, and umount would then hang)
// and unmounted. It skips the test without root, the tools or a loop
// device.
func MountExt4(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to loop-mount an ext4 filesystem (CI runs tests as root)")
	}
	for _, tool := range []string{"mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (Debian: e2fsprogs, mount)", tool)
		}
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount (no loop devices?): %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY, 0); err == nil {
			_ = unix.IoctlSetInt(fd, 0xc0045878, 0) // FITHAW
			unix.Close(fd)
		}
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v\n%s", err, out)
		}
	})
	return mnt
}
