package guestd_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/agent/agenttest"
	"github.com/hypervm/hyper/internal/agent/guestd"
)

func sleep() { time.Sleep(10 * time.Millisecond) }

// fsImmutableFL is FS_IMMUTABLE_FL from linux/fs.h.
const fsImmutableFL = 0x10

func setImmutable(t *testing.T, path string) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd)
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	must(t, err)
	must(t, unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags|fsImmutableFL)))
	t.Cleanup(func() {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return
		}
		defer unix.Close(fd)
		unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags))
	})
}

// writeDone writes a file in the background and reports when the write
// (which blocks on a frozen filesystem) is through.
func writeDone(t *testing.T, path string) <-chan error {
	done := make(chan error, 1)
	go func() { done <- os.WriteFile(path, []byte("data"), 0o644) }()
	return done
}

func TestFreezeThaw(t *testing.T) {
	mnt := agenttest.MountExt4(t)
	h := start(t, guestd.Config{FreezePath: mnt})
	ctx := ctxT(t)

	if was, err := h.client.Thaw(ctx); err != nil || was {
		t.Fatalf("thaw of a thawed filesystem: %v %v, want success and not frozen", was, err)
	}
	if err := h.client.Freeze(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := h.client.Freeze(ctx, time.Minute); err != nil {
		t.Fatalf("second freeze: %v", err)
	}
	health, err := h.client.Health(ctx)
	if err != nil || !health.GetFrozen() {
		t.Errorf("health while frozen: %v %v", health, err)
	}
	done := writeDone(t, filepath.Join(mnt, "f"))
	select {
	case err := <-done:
		t.Fatalf("a write went through a frozen filesystem: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if was, err := h.client.Thaw(ctx); err != nil || !was {
		t.Fatalf("thaw: %v %v, want success and was frozen", was, err)
	}
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the write did not complete after the thaw")
	}
	if was, err := h.client.Thaw(ctx); err != nil || was {
		t.Errorf("second thaw: %v %v, want success and not frozen", was, err)
	}
}

func TestFreezeThawsByItself(t *testing.T) {
	mnt := agenttest.MountExt4(t)
	h := start(t, guestd.Config{FreezePath: mnt})
	ctx := ctxT(t)
	if err := h.client.Freeze(ctx, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	done := writeDone(t, filepath.Join(mnt, "f"))
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("the filesystem did not thaw by itself")
	}
	if was, err := h.client.Thaw(ctx); err != nil || was {
		t.Errorf("thaw after the automatic one: %v %v", was, err)
	}
}

func TestFreezeMissingPath(t *testing.T) {
	h := start(t, guestd.Config{FreezePath: filepath.Join(t.TempDir(), "missing")})
	if err := h.client.Freeze(ctxT(t), time.Second); err == nil {
		t.Fatal("freeze of a missing mount point succeeded")
	}
}
