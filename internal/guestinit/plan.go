package guestinit

import (
	"fmt"
	"path"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/guestcfg"
)

// NewRoot is where init assembles the final root before switching to it.
const NewRoot = "/newroot"

// Mount is one mount(2) call of the plan.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
	// Dirs are created (mode 0755) after this mount, below its target.
	Dirs []string
}

// Move is one mount --move of a filesystem from the initramfs into the new
// root.
type Move struct{ From, To string }

// Plan is what init mounts, in order, to build the final root from a VM's
// configuration.
type Plan struct {
	Mounts []Mount
	// Moves run after RunConfigPath is written and before the switch.
	Moves []Move
}

// MakePlan builds the mount plan of every VM. The disks are mounted under
// a staging tmpfs at /run (guestcfg.MountBase, guestcfg.MountWritable), the
// overlay is assembled at NewRoot from them, and /run is then moved into
// the new root with /dev, /proc and /sys, so the disks stay reachable from
// the final root without a byte written into the image or the VM's disk.
func MakePlan() *Plan {
	upper := path.Join(guestcfg.MountWritable, "upper")
	work := path.Join(guestcfg.MountWritable, "work")
	return &Plan{
		Mounts: []Mount{
			{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=0755",
				Dirs: []string{guestcfg.MountBase, guestcfg.MountWritable}},
			{Source: guestcfg.BaseDevice, Target: guestcfg.MountBase, FSType: "ext4", Flags: unix.MS_RDONLY},
			// noinit_itable: a fresh disk's inode tables are flagged
			// uninitialised and need no zeroing, which the kernel would
			// otherwise do in the background, competing with the boot
			// and the workload for the vCPU.
			{Source: guestcfg.WritableDevice, Target: guestcfg.MountWritable, FSType: "ext4", Data: "noinit_itable",
				Dirs: []string{upper, work}},
			{Source: "overlay", Target: NewRoot, FSType: "overlay",
				Data: fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", guestcfg.MountBase, upper, work)},
		},
		Moves: []Move{
			{From: "/run", To: NewRoot + "/run"},
			{From: "/dev", To: NewRoot + "/dev"},
			{From: "/proc", To: NewRoot + "/proc"},
			{From: "/sys", To: NewRoot + "/sys"},
		},
	}
}
