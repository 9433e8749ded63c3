// Package loopfs mounts a throwaway filesystem on a loop device, so that the
// tests and benchmarks of package disk run on a real XFS or ext4 of known
// features whatever the host's own filesystems are. It needs root and the
// Debian packages util-linux (losetup), xfsprogs and e2fsprogs.
package loopfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Type is the kind of filesystem to make.
type Type string

const (
	XFS          Type = "xfs"           // XFS with reflink=1
	XFSNoReflink Type = "xfs-noreflink" // XFS with reflink=0
	Ext4         Type = "ext4"
)

// FS is a mounted loop filesystem.
type FS struct {
	Dir   string // the mount point
	Type  Type
	image string
	dev   string
}

// mkfs returns the command line that formats image as t.
func mkfs(t Type, image string) ([]string, error) {
	switch t {
	case XFS:
		return []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=1", image}, nil
	case XFSNoReflink:
		return []string{"mkfs.xfs", "-q", "-f", "-m", "reflink=0", image}, nil
	case Ext4:
		return []string{"mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", image}, nil
	default:
		return nil, fmt.Errorf("loopfs: unknown filesystem type %q", t)
	}
}

var packages = map[string]string{"mkfs.xfs": "xfsprogs", "mke2fs": "e2fsprogs", "losetup": "util-linux"}

// Unavailable says why a filesystem of type t cannot be mounted here (not
// root, a tool missing), or returns "" if it can.
func Unavailable(t Type) string {
	if os.Geteuid() != 0 {
		return "needs root for losetup and mount"
	}
	argv, err := mkfs(t, "")
	if err != nil {
		return err.Error()
	}
	for _, tool := range []string{argv[0], "losetup"} {
		if _, err := lookTool(tool); err != nil {
			return fmt.Sprintf("%s not found: install the Debian package %s", tool, packages[tool])
		}
	}
	return ""
}

// lookTool finds a tool in PATH or the sbin directories, which a non-login
// root shell may not have in its PATH.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

func run(ctx context.Context, argv ...string) (string, error) {
	path, err := lookTool(argv[0])
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, path, argv[1:]...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// Mount makes a sparse image of size bytes in workDir, formats it as t,
// attaches it to a free loop device and mounts it at workDir/mnt.
// On failure it undoes whatever it did. The caller must Close the FS.
func Mount(ctx context.Context, workDir string, t Type, size int64) (_ *FS, err error) {
	argv, err := mkfs(t, filepath.Join(workDir, "loopfs.img"))
	if err != nil {
		return nil, err
	}
	fs := &FS{Dir: filepath.Join(workDir, "mnt"), Type: t, image: argv[len(argv)-1]}
	f, err := os.OpenFile(fs.image, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err // not ours to clean up
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, fs.Close())
		}
	}()
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if _, err := run(ctx, argv...); err != nil {
		return nil, err
	}
	if fs.dev, err = Attach(ctx, fs.image); err != nil {
		return nil, err
	}
	if err := os.Mkdir(fs.Dir, 0o755); err != nil {
		return nil, err
	}
	fstype := "xfs"
	if t == Ext4 {
		fstype = "ext4"
	}
	if err := unix.Mount(fs.dev, fs.Dir, fstype, 0, ""); err != nil {
		return nil, fmt.Errorf("mount %s on %s: %w", fs.dev, fs.Dir, err)
	}
	return fs, nil
}

// Attach attaches image to a free loop device, with direct I/O so that the
// image's pages are not cached a second time on the host, and returns the
// device's path. The caller must Detach it.
func Attach(ctx context.Context, image string) (string, error) {
	dev, err := run(ctx, "losetup", "--find", "--show", "--direct-io=on", image)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", fmt.Errorf("losetup printed %q, not a loop device", dev)
	}
	return dev, nil
}

// Detach detaches the loop device dev. It is not bound to a context:
// cleanup must run even when the caller was cancelled.
func Detach(dev string) error {
	_, err := run(context.Background(), "losetup", "--detach", dev)
	return err
}

// Close unmounts the filesystem, detaches its loop device and removes the
// image and the mount point. It does as much of that as it can even when a
// step fails, and it is safe to call on a half-made FS.
func (fs *FS) Close() error {
	var errs []error
	if err := Unmount(fs.Dir); err != nil {
		errs = append(errs, err)
	}
	if fs.dev != "" {
		if err := Detach(fs.dev); err != nil {
			errs = append(errs, err)
		}
		fs.dev = ""
	}
	for _, p := range []string{fs.image, fs.Dir} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Unmount unmounts dir if something is mounted there, retrying for a while
// if it is busy (a process that had a file open there may still be exiting).
func Unmount(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := unix.Unmount(dir, 0)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not a mount point (any more), or never made
		case errors.Is(err, unix.EBUSY) && time.Now().Before(deadline):
			time.Sleep(50 * time.Millisecond)
		default:
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
}

// DropCaches flushes and then drops the host's page cache, so that what runs next
// reads from the device. It needs root.
func DropCaches() error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop page cache: %w", err)
	}
	return nil
}
