package suid

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Every path the helper acts on is resolved relative to a pinned directory
// descriptor with openat2: never through a symlink (not even /proc magic
// links), never out of the directory, never across a mount point. The
// descriptor is then used for the action itself, so a path swapped after
// the check cannot redirect it.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// openBeneath opens rel below dirfd under resolveFlags. display is the
// path shown in errors.
func openBeneath(dirfd int, rel, display string, flags int, mode uint32) (int, error) {
	if flags&unix.O_PATH == 0 {
		flags |= unix.O_NOCTTY // openat2 refuses it with O_PATH
	}
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW), Resolve: resolveFlags}
	if flags&unix.O_CREAT != 0 {
		how.Mode = uint64(mode)
	}
	for try := 0; ; try++ {
		fd, err := unix.Openat2(dirfd, rel, &how)
		if (err == unix.EAGAIN || err == unix.EINTR) && try < 8 {
			continue // a concurrent rename somewhere in the tree; retry
		}
		return fd, pathErr("open", display, err)
	}
}

// pathErr wraps err for path. A symlink or mount point in the way is a
// refusal: it is how an attacker would try to redirect the helper.
func pathErr(op, path string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ELOOP):
		return refused("%s: a symlink is in the way; refusing to follow it", path)
	case errors.Is(err, unix.ENOTDIR):
		return refused("%s: not a directory (a symlink or a file is in the way)", path)
	case errors.Is(err, unix.EXDEV):
		return refused("%s: path crosses a mount point or leaves its directory", path)
	}
	return fmt.Errorf("%s %s: %w", op, path, err)
}

// openDir opens a directory named by the trusted config.
func openDir(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	return fd, pathErr("open", path, err)
}

func fstat(fd int, path string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstat(fd, &st)
	return st, pathErr("stat", path, err)
}

func isType(st unix.Stat_t, t uint32) bool { return st.Mode&unix.S_IFMT == t }

// checkRootDir requires a directory owned by root that nobody else can
// write: the helper's own parts of the tree (jails) must look like that.
func checkRootDir(fd int, path string) error {
	st, err := fstat(fd, path)
	if err != nil {
		return err
	}
	if !isType(st, unix.S_IFDIR) || st.Uid != 0 || st.Mode&0o022 != 0 {
		return refused("%s must be a directory owned by root and not group/other-writable (uid %d, mode %04o)", path, st.Uid, st.Mode&0o7777)
	}
	return nil
}

// checkTrustedPath walks an absolute path from "/" without following
// symlinks and requires every directory on the way to be owned by root and
// not writable by others (a root-owned sticky directory such as /tmp is
// allowed: nobody else can rename a root-owned entry out of it). Such a path
// cannot be redirected by the caller between this check and its use by
// name. last checks the final component.
func checkTrustedPath(path string, last func(unix.Stat_t) error) error {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path || path == "/" {
		return refused("%s: must be an absolute, clean path", path)
	}
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return pathErr("open", "/", err)
	}
	walked := ""
	for _, name := range strings.Split(path[1:], "/") {
		st, err := fstat(fd, walked+"/")
		if err != nil {
			unix.Close(fd)
			return err
		}
		if !isType(st, unix.S_IFDIR) || st.Uid != 0 || (st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0) {
			unix.Close(fd)
			return refused("%s: directory %s is not owned by root or is writable by others", path, walked+"/")
		}
		next, err := unix.Openat(fd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		walked += "/" + name
		if err != nil {
			return pathErr("open", walked, err)
		}
		fd = next
	}
	defer unix.Close(fd)
	st, err := fstat(fd, path)
	if err != nil {
		return err
	}
	if isType(st, unix.S_IFLNK) {
		return refused("%s is a symlink", path)
	}
	return last(st)
}

// checkBinary is the rule for a program the helper runs as root: a path
// from the trusted config, with the basename the op expects, a regular
// executable owned by root that nobody else can write, reached through
// root-owned directories only.
func checkBinary(key, path, name string) error {
	if path == "" {
		return refused("%s is not configured", key)
	}
	if filepath.Base(path) != name {
		return refused("%s: basename must be %q (got %q)", key, name, path)
	}
	return checkTrustedPath(path, func(st unix.Stat_t) error {
		switch {
		case !isType(st, unix.S_IFREG):
			return refused("%s: %s is not a regular file", key, path)
		case st.Uid != 0:
			return refused("%s: %s is not owned by root", key, path)
		case st.Mode&0o022 != 0:
			return refused("%s: %s is group/other-writable", key, path)
		case st.Mode&0o111 == 0:
			return refused("%s: %s is not executable", key, path)
		}
		return nil
	})
}

// ensureRootDir creates name under parent (as root, mode 0755) unless it
// exists, opens it without following links and checks it is root's.
func ensureRootDir(parent int, name, display string) (int, error) {
	if err := unix.Mkdirat(parent, name, 0o755); err != nil && err != unix.EEXIST {
		return -1, pathErr("mkdir", display, err)
	}
	fd, err := openBeneath(parent, name, display, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, err
	}
	if err := checkRootDir(fd, display); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// removeTree removes name below parent and everything in it, descending
// only through real directories on the same mount. Symlinks are unlinked,
// never followed. A missing name is not an error.
func removeTree(parent int, name, display string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return nil
		}
		return pathErr("stat", display, err)
	}
	if !isType(st, unix.S_IFDIR) {
		return pathErr("unlink", display, ignoreENOENT(unix.Unlinkat(parent, name, 0)))
	}
	fd, err := openBeneath(parent, name, display, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	dir := os.NewFile(uintptr(fd), display)
	for {
		names, err := dir.Readdirnames(256)
		for _, n := range names {
			if err := removeTree(fd, n, display+"/"+n); err != nil {
				dir.Close()
				return err
			}
		}
		if err == io.EOF || len(names) == 0 {
			break
		}
		if err != nil {
			dir.Close()
			return pathErr("read", display, err)
		}
	}
	dir.Close()
	return pathErr("rmdir", display, ignoreENOENT(unix.Unlinkat(parent, name, unix.AT_REMOVEDIR)))
}

func ignoreENOENT(err error) error {
	if err == unix.ENOENT {
		return nil
	}
	return err
}

// placeShared puts the read-only file src into dir as name without ever
// changing its owner or mode. A hard link is enough when the caller proved
// (checkShared) that the VM user can neither write nor chmod the inode; it
// costs nothing and shares the page cache between VMs. Across filesystems
// it falls back to a reflink and then a copy, made by root with mode 0644.
func placeShared(src *os.File, dir int, name, display string) (string, error) {
	err := unix.Linkat(int(src.Fd()), "", dir, name, unix.AT_EMPTY_PATH)
	if err == nil {
		return "link", nil
	}
	if err != unix.EXDEV {
		return "", pathErr("link", display, err)
	}
	fd, err := openBeneath(dir, name, display, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	dst := os.NewFile(uintptr(fd), display)
	defer dst.Close()
	if unix.IoctlFileClone(fd, int(src.Fd())) == nil {
		return "reflink", nil
	}
	if _, err := io.Copy(dst, src); err != nil {
		return "", fmt.Errorf("copy to %s: %w", display, err)
	}
	return "copy", nil
}

// checkShared is the rule for a file shared read-only with a VM: a regular
// file owned by root or the caller, never by the VM's uid or gid, readable
// by others (the VM reads it as "other") and writable by nobody but its
// owner.
func checkShared(st unix.Stat_t, path string, vmUID, vmGID uint32) error {
	switch {
	case !isType(st, unix.S_IFREG):
		return refused("%s is not a regular file", path)
	case st.Uid != 0 && st.Uid != uint32(caller.uid) || st.Uid == vmUID || st.Gid == vmGID:
		return refused("%s must be owned by root or the caller (uid %d, gid %d)", path, st.Uid, st.Gid)
	case st.Mode&0o022 != 0:
		return refused("%s is group/other-writable (mode %04o)", path, st.Mode&0o7777)
	case st.Mode&0o004 == 0:
		return refused("%s is not readable by others (mode %04o)", path, st.Mode&0o7777)
	}
	return nil
}
