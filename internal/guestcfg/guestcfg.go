// Package guestcfg is the contract between the host and a guest's init: the
// per-VM configuration the host puts in the VM's initramfs and the names of
// the devices the guest finds its disks and agent channel on.
//
// The host appends a small newc archive holding ConfigPath to the shared
// initramfs (the kernel unpacks concatenated archives in order), so every VM
// boots the same cached initramfs plus a few hundred bytes of its own, and
// images stay unmodified.
package guestcfg

// ConfigPath is where the VM's configuration lies inside the initramfs.
const ConfigPath = "/hyper/vm.json"

// AgentPortName is the virtio-serial port name the agent serves on under
// QEMU; under Firecracker it listens on vsock port AgentVsockPort.
const (
	AgentPortName  = "hyper.agent"
	AgentVsockPort = 1024
)

// VM is the configuration of one guest, serialised as JSON at ConfigPath.
type VM struct {
	// ID is the VM id; the guest's hostname.
	ID string `json:"id"`
	// BaseDevice and WritableDevice name the block devices (for example
	// "/dev/vda", "/dev/vdb") holding the read-only base image and the VM's
	// writable disk, which init stacks as an overlay root.
	BaseDevice     string `json:"base_device"`
	WritableDevice string `json:"writable_device"`
	// Image is the OCI image config whose command runs as the VM's main
	// process.
	Image Image `json:"image"`
}

// Image is the part of an OCI image config the guest needs to start it.
type Image struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"` // KEY=VALUE
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"` // "uid[:gid]" or "name[:group]"
}

// Mount points inside the final root. Init mounts a tmpfs on /run first and
// the two disks below it, so they stay reachable after the switch to the
// overlay root (the agent freezes MountWritable for forks) and nothing is
// written into the image or the VM's disk to hold them. The agent must not
// mount over /run again.
const (
	MountBase     = "/run/hyper/base"
	MountWritable = "/run/hyper/writable"
)

// RunConfigPath is where init leaves the VM's configuration in the final
// root, on the /run tmpfs, for the agent to read after the switch: the
// initramfs holding ConfigPath is gone by then.
const RunConfigPath = "/run/hyper/vm.json"
