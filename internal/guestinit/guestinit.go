// Package guestinit is stage 1 of a guest's boot: the code hyper-agent runs
// first when the kernel starts it as /init from the initramfs. It loads the
// kernel modules, mounts the VM's read-only base disk and writable disk as
// an overlay root, switches to it and re-executes the agent there as PID 1
// (stage 2), without copying anything into the image or the disk.
//
// It uses only system calls (no busybox, no external tools). Whatever goes
// wrong, it never returns and never panics: a PID 1 that exits panics the
// kernel. It prints the error to the console and powers the VM off.
package guestinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/guestcfg"
)

// DeviceTimeout bounds the wait for the VM's block devices to appear.
const DeviceTimeout = 30 * time.Second

// IsStage1 reports whether this process is stage 1: PID 1 on the kernel's
// initial rootfs (ramfs or tmpfs) with the VM configuration the host put in
// the initramfs. After the switch the root is an overlay, so the re-executed
// agent sees false.
func IsStage1() bool {
	if os.Getpid() != 1 {
		return false
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return false
	}
	if st.Type != unix.RAMFS_MAGIC && st.Type != unix.TMPFS_MAGIC {
		return false
	}
	_, err := os.Stat(guestcfg.ConfigPath)
	return err == nil
}

// Stage1 boots the VM's root and re-executes the running binary in it. It
// never returns.
func Stage1() {
	err := run()
	fatal(err)
}

func run() error {
	start := time.Now()
	if err := mountEarly(); err != nil {
		return err
	}
	vm, err := readConfig()
	if err != nil {
		return err
	}
	plan, err := MakePlan(vm)
	if err != nil {
		return err
	}
	if err := loadModules(); err != nil {
		return err
	}
	modulesDone := time.Now()
	for _, dev := range []string{vm.BaseDevice, vm.WritableDevice} {
		if err := waitDevice(dev, DeviceTimeout); err != nil {
			return err
		}
	}
	devicesDone := time.Now()
	for _, m := range plan.Mounts {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", m.Target, err)
		}
		if err := unix.Mount(m.Source, m.Target, m.FSType, m.Flags, m.Data); err != nil {
			return mountError(m, err)
		}
		for _, d := range m.Dirs {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("mkdir %s: %w", d, err)
			}
		}
	}
	if err := copyConfig(); err != nil {
		return err
	}
	for _, mv := range plan.Moves {
		if err := mkdirInRoot(mv.To); err != nil {
			return err
		}
		if err := unix.Mount(mv.From, mv.To, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move mount %s to %s: %w", mv.From, mv.To, err)
		}
	}
	// Opened before the switch: the initramfs holding the binary is about
	// to be emptied and become unreachable.
	self, err := unix.Open("/init", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /init: %w", err)
	}
	if err := switchRoot(); err != nil {
		return err
	}
	ms := func(d time.Duration) int64 { return d.Milliseconds() }
	fmt.Fprintf(os.Stderr, "hyper-init: root ready in %dms (modules %dms, disks %dms, mounts %dms), starting the agent\n",
		ms(time.Since(start)), ms(modulesDone.Sub(start)), ms(devicesDone.Sub(modulesDone)), ms(time.Since(devicesDone)))
	return execveat(self, os.Args, os.Environ())
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

func readConfig() (*guestcfg.VM, error) {
	data, err := os.ReadFile(guestcfg.ConfigPath)
	if err != nil {
		return nil, fmt.Errorf("read vm config: %w", err)
	}
	var vm guestcfg.VM
	if err := json.Unmarshal(data, &vm); err != nil {
		return nil, fmt.Errorf("vm config %s: %w", guestcfg.ConfigPath, err)
	}
	return &vm, nil
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
		var id uint32
		if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "0x%x", &id); err == nil {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

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

// copyConfig leaves the VM config on the /run tmpfs for stage 2.
func copyConfig() error {
	data, err := os.ReadFile(guestcfg.ConfigPath)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(guestcfg.RunConfigPath), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(guestcfg.RunConfigPath, data, 0o600); err != nil {
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

// switchRoot frees the initramfs and makes NewRoot the root: what
// switch_root(8) does. The initial rootfs cannot be unmounted, so its files
// are deleted to give their memory back.
func switchRoot() error {
	var rootSt unix.Stat_t
	if err := unix.Stat("/", &rootSt); err != nil {
		return fmt.Errorf("stat /: %w", err)
	}
	entries, err := os.ReadDir("/")
	if err != nil {
		return fmt.Errorf("read /: %w", err)
	}
	for _, e := range entries {
		p := "/" + e.Name()
		if p == NewRoot {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil || st.Dev != rootSt.Dev {
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("free initramfs %s: %w", p, err)
		}
	}
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
