package suid

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/config"
)

// Names inside a VM's chroot: the contract with the Firecracker driver,
// which refers to them as /vmlinux, /initrd.img and so on. JailConfig is
// also the config disk's name in the VM's directory, where the node writes
// it and the helper takes it from.
const (
	JailKernel      = "vmlinux"
	JailInitrd      = "initrd.img"
	JailConfig      = "config.img"
	JailBaseDisk    = "base.ext4"
	JailDisk        = "disk.ext4"
	JailAPISocket   = "api.socket"
	JailVsockSocket = "vsock.socket"
)

// InitramfsDir is where, below kernel.dir, the node keeps the shared
// initramfs archives (guest.Provider's cache).
const InitramfsDir = "initramfs"

// jailExec is the jailer's <exec-file basename> level of the chroot path;
// it is fixed because checkBinary pins the basename of tools.firecracker.
const jailExec = "firecracker"

// JailDir is the directory the jailer uses for VM id.
func JailDir(cfg *config.Config, id string) string {
	return filepath.Join(cfg.JailsDir(), jailExec, id)
}

// JailRoot is the chroot of VM id.
func JailRoot(cfg *config.Config, id string) string { return filepath.Join(JailDir(cfg, id), "root") }

type source struct {
	name string // name in the jail
	f    *os.File
}

// jailPrepare builds <jails>/firecracker/<id>/root and places the VM's files
// in it. Everything the caller influences is opened and checked first, as
// the caller; root only creates the jail and links the checked descriptors.
func (h *helper) jailPrepare(r Request) (*Result, error) {
	if err := checkVMIDs(h.cfg, r.UID, r.GID); err != nil {
		return nil, err
	}
	work, err := openDir(h.cfg.WorkDir)
	if err != nil {
		return nil, err
	}
	defer unix.Close(work)
	if err := precheckJail(work, h.cfg, r.VM); err != nil {
		return nil, err
	}
	shared, disk, err := h.openSources(work, r)
	defer func() {
		for _, s := range append(shared, disk) {
			if s.f != nil {
				s.f.Close()
			}
		}
	}()
	if err != nil {
		return nil, err
	}
	res := &Result{Result: "prepared", Path: JailRoot(h.cfg, r.VM), Files: map[string]string{}}
	err = asRoot(func() error {
		jails, err := ensureRootDir(work, "jails", h.cfg.JailsDir())
		if err != nil {
			return err
		}
		defer unix.Close(jails)
		fc, err := ensureRootDir(jails, jailExec, filepath.Join(h.cfg.JailsDir(), jailExec))
		if err != nil {
			return err
		}
		defer unix.Close(fc)
		dir := JailDir(h.cfg, r.VM)
		if err := unix.Mkdirat(fc, r.VM, 0o755); err != nil {
			if err == unix.EEXIST {
				return refused("jail %s already exists", dir)
			}
			return pathErr("mkdir", dir, err)
		}
		if err := fillJail(fc, dir, r, shared, disk, res); err != nil {
			if rmErr := removeTree(fc, r.VM, dir); rmErr != nil {
				return fmt.Errorf("%w (rolling back: %v)", err, rmErr)
			}
			return err
		}
		return nil
	})
	return res, err
}

// openSources opens the kernel, the shared initramfs, the base image, the
// VM's config disk and its writable disk as the caller, each resolved below
// a directory from the trusted config.
func (h *helper) openSources(work int, r Request) (shared []source, disk source, err error) {
	kdir, kname := h.cfg.Kernel.Dir, JailKernel
	switch {
	case r.Kernel != "":
		kname = r.Kernel
	case h.cfg.Kernel.Vmlinux != "":
		kdir, kname = filepath.Dir(h.cfg.Kernel.Vmlinux), filepath.Base(h.cfg.Kernel.Vmlinux)
	}
	vm := filepath.Join("vms", r.VM)
	for _, s := range []struct{ name, dir, rel string }{
		{JailKernel, kdir, kname},
		{JailInitrd, h.cfg.Kernel.Dir, filepath.Join(InitramfsDir, r.Initrd)},
		{JailBaseDisk, h.cfg.Disk.LayerDir, filepath.Join("images", r.Image+".ext4")},
		{JailConfig, h.cfg.WorkDir, filepath.Join(vm, JailConfig)},
	} {
		f, st, err := openSource(work, s.dir, h.cfg.WorkDir, s.rel, unix.O_RDONLY)
		if err != nil {
			return shared, disk, err
		}
		shared = append(shared, source{s.name, f})
		if err := checkShared(st, f.Name(), r.UID, r.GID); err != nil {
			return shared, disk, err
		}
	}
	f, st, err := openSource(work, h.cfg.WorkDir, h.cfg.WorkDir, filepath.Join(vm, JailDisk), unix.O_RDWR)
	if err != nil {
		return shared, disk, err
	}
	disk = source{JailDisk, f}
	mine := st.Uid == uint32(caller.uid) || st.Uid == r.UID && st.Gid == uint32(caller.gid)
	if !isType(st, unix.S_IFREG) || !mine || st.Nlink != 1 {
		return shared, disk, refused("%s must be a regular file owned by the caller with one link (uid %d, links %d)", f.Name(), st.Uid, st.Nlink)
	}
	return shared, disk, nil
}

// openSource opens rel below dir (reusing the work_dir descriptor when dir
// is work_dir) without following links; O_NONBLOCK keeps a planted FIFO
// from hanging the helper.
func openSource(work int, dir, workDir, rel string, flags int) (*os.File, unix.Stat_t, error) {
	display := filepath.Join(dir, rel)
	base := work
	if dir != workDir {
		fd, err := openDir(dir)
		if err != nil {
			return nil, unix.Stat_t{}, err
		}
		defer unix.Close(fd)
		base = fd
	}
	fd, err := openBeneath(base, rel, display, flags|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, unix.Stat_t{}, err
	}
	st, err := fstat(fd, display)
	if err != nil {
		unix.Close(fd)
		return nil, st, err
	}
	return os.NewFile(uintptr(fd), display), st, nil
}

// precheckJail refuses, before anything is created, a jail tree that is
// not root's or a jail that already exists.
func precheckJail(work int, cfg *config.Config, id string) error {
	path := cfg.JailsDir()
	parent := work
	for _, name := range []string{"jails", jailExec} {
		fd, err := openBeneath(parent, name, path, unix.O_PATH|unix.O_DIRECTORY, 0)
		if parent != work {
			unix.Close(parent)
		}
		if err == nil {
			err = checkRootDir(fd, path)
		}
		if err != nil {
			if fd >= 0 {
				unix.Close(fd)
			}
			if notExist(err) {
				return nil
			}
			return err
		}
		parent, path = fd, filepath.Join(path, jailExec)
	}
	defer unix.Close(parent)
	var st unix.Stat_t
	switch err := unix.Fstatat(parent, id, &st, unix.AT_SYMLINK_NOFOLLOW); err {
	case nil:
		return refused("jail %s already exists", JailDir(cfg, id))
	case unix.ENOENT:
		return nil
	default:
		return pathErr("stat", JailDir(cfg, id), err)
	}
}

// fillJail runs as root: root/ owned by the VM (0700), the shared files
// linked or copied without a change of owner, and the writable disk handed
// to the VM user with the caller's group (0660), so that the node can still
// clone it for forks.
func fillJail(fc int, dir string, r Request, shared []source, disk source, res *Result) error {
	id, err := openBeneath(fc, r.VM, dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(id)
	rootPath := filepath.Join(dir, "root")
	if err := unix.Mkdirat(id, "root", 0o700); err != nil {
		return pathErr("mkdir", rootPath, err)
	}
	root, err := openBeneath(id, "root", rootPath, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	for _, s := range shared {
		how, err := placeShared(s.f, root, s.name, filepath.Join(rootPath, s.name))
		if err != nil {
			return err
		}
		res.Files[s.name] = how
	}
	diskPath := filepath.Join(rootPath, JailDisk)
	if err := unix.Linkat(int(disk.f.Fd()), "", root, JailDisk, unix.AT_EMPTY_PATH); err != nil {
		if err == unix.EXDEV {
			return refused("%s and %s must be on one filesystem", disk.f.Name(), rootPath)
		}
		return pathErr("link", diskPath, err)
	}
	res.Files[JailDisk] = "link"
	if err := unix.Fchown(root, int(r.UID), int(r.GID)); err != nil {
		return pathErr("chown", rootPath, err)
	}
	if err := unix.Fchown(int(disk.f.Fd()), int(r.UID), caller.gid); err != nil {
		return pathErr("chown", diskPath, err)
	}
	return pathErr("chmod", diskPath, unix.Fchmod(int(disk.f.Fd()), 0o660))
}

// jailGrant hands the jail's API or vsock socket to the caller (owner,
// mode 0660) and lets the caller's group traverse root/ (0710). A socket
// or jail that does not exist yet is "pending".
func (h *helper) jailGrant(r Request, sock string) (*Result, error) {
	res := &Result{Result: "pending", Path: filepath.Join(JailRoot(h.cfg, r.VM), sock)}
	work, err := openDir(h.cfg.WorkDir)
	if err != nil {
		return nil, err
	}
	defer unix.Close(work)
	dirs, err := openJailDirs(work, h.cfg, "jails", jailExec, r.VM)
	if notExist(err) {
		return res, nil
	}
	if err != nil {
		return nil, err
	}
	defer unix.Close(dirs)
	err = asRoot(func() error {
		rootPath := JailRoot(h.cfg, r.VM)
		root, err := openBeneath(dirs, "root", rootPath, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if notExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		defer unix.Close(root)
		rst, err := fstat(root, rootPath)
		if err != nil {
			return err
		}
		if rst.Uid < h.cfg.Jails.UIDMin() || rst.Uid > h.cfg.Jails.UIDMax() {
			return refused("%s is not owned by a jail uid (uid %d)", rootPath, rst.Uid)
		}
		s, err := openBeneath(root, sock, res.Path, unix.O_PATH, 0)
		if notExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		defer unix.Close(s)
		st, err := fstat(s, res.Path)
		if err != nil {
			return err
		}
		if !isType(st, unix.S_IFSOCK) || (st.Uid != rst.Uid && st.Uid != uint32(caller.uid)) {
			return refused("%s is not a socket of this jail (mode %o, uid %d); refusing to touch it", res.Path, st.Mode, st.Uid)
		}
		if err := unix.Fchownat(s, "", caller.uid, caller.gid, unix.AT_EMPTY_PATH); err != nil {
			return pathErr("chown", res.Path, err)
		}
		// chmod cannot act on an O_PATH descriptor; its /proc link names
		// exactly the inode checked above.
		if err := unix.Fchmodat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(s), 0o660, 0); err != nil {
			return pathErr("chmod", res.Path, err)
		}
		if err := unix.Fchown(root, -1, caller.gid); err != nil {
			return pathErr("chgrp", rootPath, err)
		}
		if err := unix.Fchmod(root, 0o710); err != nil {
			return pathErr("chmod", rootPath, err)
		}
		res.Result = "granted"
		return nil
	})
	return res, err
}

// openJailDirs walks names (a prefix of jails/firecracker/<id>) from
// work_dir as the caller, requiring every level to be root's, and returns
// the last.
func openJailDirs(work int, cfg *config.Config, names ...string) (int, error) {
	fd, path := work, cfg.WorkDir
	for _, name := range names {
		path = filepath.Join(path, name)
		next, err := openBeneath(fd, name, path, unix.O_PATH|unix.O_DIRECTORY, 0)
		if fd != work {
			unix.Close(fd)
		}
		if err == nil {
			err = checkRootDir(next, path)
		}
		if err != nil {
			if next >= 0 {
				unix.Close(next)
			}
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// jailRemove deletes <jails>/firecracker/<id> and everything in it.
func (h *helper) jailRemove(r Request) (*Result, error) {
	res := &Result{Result: "absent", Path: JailDir(h.cfg, r.VM)}
	work, err := openDir(h.cfg.WorkDir)
	if err != nil {
		return nil, err
	}
	defer unix.Close(work)
	fc, err := openJailDirs(work, h.cfg, "jails", jailExec)
	if notExist(err) {
		return res, nil
	}
	if err != nil {
		return nil, err
	}
	defer unix.Close(fc)
	var st unix.Stat_t
	if err := unix.Fstatat(fc, r.VM, &st, unix.AT_SYMLINK_NOFOLLOW); err == unix.ENOENT {
		return res, nil
	}
	res.Result = "removed"
	return res, asRoot(func() error { return removeTree(fc, r.VM, res.Path) })
}

// jailer execs the configured jailer in place of the helper (same pid, so
// the caller supervises it), as root with an empty environment and no
// descriptor above 2, inside the VM's cgroup. The caller chooses only the
// id, uid, gid and an optional hyper- network namespace; everything else
// comes from the trusted config.
func (h *helper) jailer(r Request) error {
	if err := checkVMIDs(h.cfg, r.UID, r.GID); err != nil {
		return err
	}
	jailer, fc := h.cfg.Tools.Jailer, h.cfg.Tools.Firecracker
	if err := checkBinary("tools.jailer", jailer, "jailer"); err != nil {
		return err
	}
	if err := checkBinary("tools.firecracker", fc, "firecracker"); err != nil {
		return err
	}
	// The jailer resolves its chroot by name, as root: no one but root
	// may be able to change any directory on the way.
	err := checkTrustedPath(JailDir(h.cfg, r.VM), func(st unix.Stat_t) error {
		if !isType(st, unix.S_IFDIR) || st.Uid != 0 || st.Mode&0o022 != 0 {
			return refused("%s must be a root-owned directory made by jail prepare", JailDir(h.cfg, r.VM))
		}
		return nil
	})
	if err != nil {
		return err
	}
	cg, err := openCgroups(cgroupRoot)
	if err != nil {
		return err
	}
	leaves, err := cg.openLeaves(h.cfg.Jails.Cgroup, r.VM)
	if err != nil {
		return fmt.Errorf("cgroup of %s (the node creates it in the delegated parent before the jailer): %w", r.VM, err)
	}
	argv := []string{jailer, "--id", r.VM, "--exec-file", fc,
		"--uid", strconv.FormatUint(uint64(r.UID), 10), "--gid", strconv.FormatUint(uint64(r.GID), 10),
		"--chroot-base-dir", h.cfg.JailsDir(), "--cgroup-version", strconv.Itoa(cg.version),
		"--parent-cgroup", h.cfg.Jails.Cgroup}
	if r.Netns != "" {
		argv = append(argv, "--netns", "/run/netns/"+r.Netns)
	}
	argv = append(argv, "--", "--api-sock", "/"+JailAPISocket)
	if err := becomeRoot(); err != nil {
		return err
	}
	if err := cg.attach(leaves, os.Getpid()); err != nil {
		return err
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	err = syscall.Exec(jailer, argv, []string{})
	return fmt.Errorf("exec %s: %w", jailer, err)
}
