// Package guestinit is stage 1 of a guest's boot: the code hyper-agent runs
// first when the kernel starts it as /init from the initramfs. It loads the
// kernel modules, reads the VM's configuration from its config disk, mounts
// the VM's read-only base disk and writable disk as an overlay root and
// switches to it, without copying anything into the image or the disk. The
// same process then goes on as the agent, PID 1 of the new root (stage 2).
//
// It uses only system calls (no busybox, no external tools). Whatever goes
// wrong, it never returns an error and never panics: a PID 1 that exits
// panics the kernel. It prints the error to the console and powers the VM
// off.
package guestinit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/guestcfg"
)

// DeviceTimeout bounds the wait for the VM's block devices to appear.
const DeviceTimeout = 30 * time.Second

// IsStage1 reports whether this process is stage 1: PID 1 on the kernel's
// initial rootfs (ramfs or tmpfs). After the switch the root is an overlay,
// so it is false from then on.
func IsStage1() bool {
	if os.Getpid() != 1 {
		return false
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return false
	}
	return st.Type == unix.RAMFS_MAGIC || st.Type == unix.TMPFS_MAGIC
}

// EnterRoot boots the VM's root and switches this process into it: when it
// returns, the process is PID 1 of the VM's root and can serve as its init
// (stage 2) without executing anything again, which under emulation saves
// a second start of a large binary. It returns the VM's configuration,
// also left at guestcfg.RunConfigPath for other readers. The initramfs's
// files are freed in the background a few seconds later. On failure it
// reports the error on the console and powers off; it never returns then.
func EnterRoot() *guestcfg.VM {
	vm, initramfs, err := run()
	if err != nil {
		fatal(err)
	}
	go func() {
		time.Sleep(freeInitramfsDelay)
		if err := freeInitramfs(initramfs); err != nil {
			fmt.Fprintf(os.Stderr, "hyper-init: %v\n", err)
		}
	}()
	return vm
}

// Stage1 boots the VM's root and executes the running binary again in it,
// for an init that cannot carry on in the same process. It never returns.
func Stage1() {
	// Opened before the switch: the initramfs holding the binary is
	// emptied and becomes unreachable.
	self, err := unix.Open("/init", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		fatal(fmt.Errorf("open /init: %w", err))
	}
	_, initramfs, err := run()
	if err != nil {
		fatal(err)
	}
	if err := freeInitramfs(initramfs); err != nil {
		fatal(err)
	}
	fatal(execveat(self, os.Args, os.Environ()))
}

// run builds the VM's root and switches to it. It returns the VM's
// configuration and the initramfs, for freeInitramfs.
func run() (*guestcfg.VM, *os.Root, error) {
	start := time.Now()
	if err := mountEarly(); err != nil {
		return nil, nil, err
	}
	if err := loadModules(); err != nil {
		return nil, nil, err
	}
	modulesDone := time.Now()
	for _, dev := range []string{guestcfg.BaseDevice, guestcfg.WritableDevice, guestcfg.ConfigDevice} {
		if err := waitDevice(dev, DeviceTimeout); err != nil {
			return nil, nil, err
		}
	}
	devicesDone := time.Now()
	raw, err := readConfig(guestcfg.ConfigDevice)
	if err != nil {
		return nil, nil, err
	}
	vm, err := guestcfg.Decode(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", guestcfg.ConfigDevice, err)
	}
	plan := MakePlan()
	for _, m := range plan.Mounts {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return nil, nil, fmt.Errorf("mkdir %s: %w", m.Target, err)
		}
		if err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data); err != nil {
			return nil, nil, mountError(m, err)
		}
		for _, d := range m.Dirs {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return nil, nil, fmt.Errorf("mkdir %s: %w", d, err)
			}
		}
	}
	if err := saveConfig(raw); err != nil {
		return nil, nil, err
	}
	for _, mv := range plan.Moves {
		if err := mkdirInRoot(mv.To); err != nil {
			return nil, nil, err
		}
		if err := unix.Mount(mv.From, mv.To, "", unix.MS_MOVE, ""); err != nil {
			return nil, nil, fmt.Errorf("move mount %s to %s: %w", mv.From, mv.To, err)
		}
	}
	initramfs, err := switchRoot()
	if err != nil {
		return nil, nil, err
	}
	ms := func(d time.Duration) int64 { return d.Milliseconds() }
	fmt.Fprintf(os.Stderr, "hyper-init: root ready in %dms (modules %dms, disks %dms, mounts %dms), starting the agent\n",
		ms(time.Since(start)), ms(modulesDone.Sub(start)), ms(devicesDone.Sub(modulesDone)), ms(time.Since(devicesDone)))
	return vm, initramfs, nil
}

func mountEarly() error {
	for _, m := range []Mount{
		{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755"},
		{Source: "proc", Target: "/proc", FSType: "proc", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	} {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", m.Target, err)
		}
		if err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err)
		}
	}
	return nil
}

// readConfig reads the JSON of the VM's configuration from the config
// disk.
func readConfig(dev string) ([]byte, error) {
	f, err := os.Open(dev)
	if err != nil {
		return nil, fmt.Errorf("open the config disk: %w", err)
	}
	defer f.Close()
	raw, err := guestcfg.ReadDisk(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dev, err)
	}
	return raw, nil
}

func loadModules() error {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return fmt.Errorf("uname: %w", err)
	}
	release := unix.ByteSliceToString(uts.Release[:])
	dir := filepath.Join("/lib/modules", release)
	dep, err := os.ReadFile(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return fmt.Errorf("kernel %s has no modules in this initramfs (%w): the initramfs was built for another kernel", release, err)
	}
	alias, err := os.ReadFile(filepath.Join(dir, "modules.alias"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	mods, err := ParseModules(dep, alias)
	if err != nil {
		return err
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("read /proc/cmdline: %w", err)
	}
	params := ModuleParams(SplitCmdline(string(cmdline)))
	load := func(list []string) error {
		for _, rel := range list {
			if err := loadModule(filepath.Join(dir, rel), params[ModuleName(rel)]); err != nil {
				return err
			}
		}
		return nil
	}
	// The transport first: loading virtio_mmio registers every virtio
	// device the VMM announced, so their IDs can be read next.
	core := mods.Core()
	if err := load(core); err != nil {
		return err
	}
	present, err := virtioDevices("/sys/bus/virtio/devices")
	if err != nil {
		return err
	}
	return load(mods.Drivers(present, core))
}

// virtioDevices lists the device IDs of the registered virtio devices.
func virtioDevices(dir string) ([]uint32, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list virtio devices: %w", err)
	}
	var ids []uint32
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "device"))
		if err != nil {
			continue
		}
		hex, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "0x")
		if !ok {
			continue
		}
		if id, err := strconv.ParseUint(hex, 16, 32); err == nil {
			ids = append(ids, uint32(id))
		}
	}
	return ids, nil
}

// loadModule loads the module at path, signature and all: stripping the
// signature saved about 70 ms under TCG but tainted every guest's kernel,
// for about a millisecond under KVM.
func loadModule(path, params string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.FinitModule(fd, params, 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s (params %q): %w", path, params, err)
	}
	return nil
}

// waitDevice waits for a block device node: devtmpfs creates it when the
// virtio-blk driver probes the device, shortly after the module loads.
func waitDevice(dev string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		fi, err := os.Stat(dev)
		if err == nil {
			if fi.Mode()&fs.ModeDevice == 0 || fi.Mode()&fs.ModeCharDevice != 0 {
				return fmt.Errorf("%s is not a block device", dev)
			}
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("block device %s did not appear within %s (present: %s)", dev, timeout, listBlockDevices())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func listBlockDevices() string {
	entries, err := os.ReadDir("/sys/class/block")
	if err != nil || len(entries) == 0 {
		return "none"
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return strings.Join(names, ", ")
}

func mountError(m Mount, err error) error {
	what := fmt.Sprintf("mount %s (%s) on %s", m.Source, m.FSType, m.Target)
	if m.FSType == "ext4" && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EUCLEAN)) {
		return fmt.Errorf("%s: %w: the disk does not hold an ext4 filesystem", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// saveConfig leaves the VM config on the /run tmpfs for stage 2, as the
// config disk holds it: encoding it again would run the JSON encoder, at
// boot, for nothing.
func saveConfig(raw []byte) error {
	if err := os.MkdirAll(filepath.Dir(guestcfg.RunConfigPath), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(guestcfg.RunConfigPath, raw, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", guestcfg.RunConfigPath, err)
	}
	return nil
}

// mkdirInRoot creates a mount point in the new root if the image lacks it
// (the directory then lands in the VM's writable layer).
func mkdirInRoot(dir string) error {
	fi, err := os.Lstat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("the image's %s is not a directory, cannot mount on it", strings.TrimPrefix(dir, NewRoot))
		}
		return nil
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", dir, err)
	}
	return nil
}

// switchRoot makes NewRoot the root: what switch_root(8) does, but for
// freeing the initramfs. It returns the initramfs's root, which is no
// longer reachable by path, for freeInitramfs.
func switchRoot() (*os.Root, error) {
	initramfs, err := os.OpenRoot("/")
	if err != nil {
		return nil, fmt.Errorf("open the initramfs: %w", err)
	}
	if err := enterNewRoot(); err != nil {
		initramfs.Close()
		return nil, err
	}
	return initramfs, nil
}

func enterNewRoot() error {
	if err := unix.Chdir(NewRoot); err != nil {
		return fmt.Errorf("chdir %s: %w", NewRoot, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", NewRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

// freeInitramfsDelay is how long after the switch EnterRoot frees the
// initramfs: once the agent has answered the host, not while the boot
// needs the vCPU.
const freeInitramfsDelay = 5 * time.Second

// freeInitramfs deletes the files of the initramfs (the initial rootfs
// cannot be unmounted) to give their memory back, then closes it. The
// running binary's own pages stay in use until it exits, which as PID 1 it
// never does. Every mount was moved out of it by then; a directory of
// another filesystem is left alone all the same.
func freeInitramfs(initramfs *os.Root) error {
	defer initramfs.Close()
	root, err := initramfs.Stat(".")
	if err != nil {
		return fmt.Errorf("free initramfs: %w", err)
	}
	entries, err := fs.ReadDir(initramfs.FS(), ".")
	if err != nil {
		return fmt.Errorf("free initramfs: %w", err)
	}
	for _, e := range entries {
		fi, err := initramfs.Lstat(e.Name())
		if err != nil || !sameDevice(fi, root) {
			continue
		}
		if err := initramfs.RemoveAll(e.Name()); err != nil {
			return fmt.Errorf("free initramfs: %w", err)
		}
	}
	return nil
}

func sameDevice(a, b fs.FileInfo) bool {
	sa, ok1 := a.Sys().(*syscall.Stat_t)
	sb, ok2 := b.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && sa.Dev == sb.Dev
}

// execveat runs the binary open at fd (execveat(2) with AT_EMPTY_PATH),
// replacing this process. It returns only on failure.
func execveat(fd int, argv, envv []string) error {
	empty, err := unix.BytePtrFromString("")
	if err != nil {
		return err
	}
	argvp, err := cStrings(argv)
	if err != nil {
		return err
	}
	envp, err := cStrings(envv)
	if err != nil {
		return err
	}
	_, _, errno := unix.Syscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafe.Pointer(empty)),
		uintptr(unsafe.Pointer(&argvp[0])), uintptr(unsafe.Pointer(&envp[0])), unix.AT_EMPTY_PATH, 0)
	return fmt.Errorf("execveat the agent: %w", errno)
}

// cStrings is a NULL-terminated array of C strings.
func cStrings(ss []string) ([]*byte, error) {
	out := make([]*byte, len(ss)+1)
	for i, s := range ss {
		p, err := unix.BytePtrFromString(s)
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

// fatal reports err on the console and powers off. It never returns.
func fatal(err error) {
	fmt.Fprintf(os.Stderr, "hyper-init: fatal: %v\n", err)
	if c, cerr := os.OpenFile("/dev/console", os.O_WRONLY, 0); cerr == nil && !sameFile(c, os.Stderr) {
		fmt.Fprintf(c, "hyper-init: fatal: %v\n", err)
		c.Close()
	}
	unix.Sync()
	for {
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		time.Sleep(time.Second)
	}
}

func sameFile(a, b *os.File) bool {
	fa, err1 := a.Stat()
	fb, err2 := b.Stat()
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}
