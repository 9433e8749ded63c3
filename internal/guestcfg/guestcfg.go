// Package guestcfg is the contract between the host and a guest's init: the
// per-VM configuration the host hands the guest, and the names of the
// devices the guest finds its disks and agent channel on.
//
// Every VM boots the same cached initramfs. Its own configuration travels on
// a third, read-only disk (the config disk): a few kilobytes the host writes
// per VM, instead of a per-VM copy of a ten-megabyte initramfs. The kernel
// command line would be cheaper still, but it is readable by every user of
// the host (in QEMU's argv) and of the guest (/proc/cmdline), and the
// image's environment may hold secrets.
package guestcfg

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// AgentPortName is the virtio-serial port name the agent serves on under
// QEMU; under Firecracker it listens on vsock port AgentVsockPort.
const (
	AgentPortName  = "hyper.agent"
	AgentVsockPort = 1024
)

// The guest's block devices, in the order every driver attaches the disks:
// the image's read-only base, the VM's writable disk, the config disk.
const (
	BaseDevice     = "/dev/vda"
	WritableDevice = "/dev/vdb"
	ConfigDevice   = "/dev/vdc"
)

// VM is the configuration of one guest.
type VM struct {
	// ID is the VM id; the guest's hostname.
	ID string `json:"id"`
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
// root, on the /run tmpfs, for the agent to read after the switch.
const RunConfigPath = "/run/hyper/vm.json"

// The config disk's layout: an 8-byte magic, the JSON's length as a
// little-endian uint32, the JSON, then zeros up to a whole number of
// blocks (block devices come in 512-byte sectors; 4 KiB suits every
// VMM). The magic tells init it is reading a config disk and not some
// other device that happens to sit at ConfigDevice.
const (
	diskMagic     = "HYPERVM1"
	diskHeader    = len(diskMagic) + 4
	diskBlock     = 4096
	MaxConfigSize = 1 << 20 // bytes of JSON
)

// EncodeDisk returns the config disk's contents for vm.
func EncodeDisk(vm *VM) ([]byte, error) {
	js, err := json.Marshal(vm)
	if err != nil {
		return nil, fmt.Errorf("encode vm config: %w", err)
	}
	if len(js) > MaxConfigSize {
		return nil, fmt.Errorf("encode vm config: %d bytes, more than the %d a config disk holds (is the image's env that large?)", len(js), MaxConfigSize)
	}
	size := (diskHeader + len(js) + diskBlock - 1) / diskBlock * diskBlock
	b := make([]byte, size)
	copy(b, diskMagic)
	binary.LittleEndian.PutUint32(b[len(diskMagic):], uint32(len(js)))
	copy(b[diskHeader:], js)
	return b, nil
}

// WriteDisk writes vm's config disk to path, which must not exist. Mode
// 0644: the setuid helper shares a file with a jailed VMM only if others
// may read it and no one else may write it; the VM's directory (0750) keeps
// other users of the host out.
func WriteDisk(path string, vm *VM) error {
	b, err := EncodeDisk(vm)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("write config disk: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write config disk %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("write config disk %s: %w", path, err)
	}
	return nil
}

// ErrNotConfigDisk reports a device that does not start with the config
// disk's magic.
var ErrNotConfigDisk = errors.New("not a hyper config disk")

// DecodeDisk reads a VM's configuration from the start of a config disk.
func DecodeDisk(r io.Reader) (*VM, error) {
	js, err := ReadDisk(r)
	if err != nil {
		return nil, err
	}
	return Decode(js)
}

// ReadDisk reads the JSON of a VM's configuration from the start of a
// config disk, unparsed.
func ReadDisk(r io.Reader) ([]byte, error) {
	var h [diskHeader]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, fmt.Errorf("read config disk header: %w", err)
	}
	if !bytes.Equal(h[:len(diskMagic)], []byte(diskMagic)) {
		return nil, fmt.Errorf("%w (magic %q)", ErrNotConfigDisk, h[:len(diskMagic)])
	}
	n := binary.LittleEndian.Uint32(h[len(diskMagic):])
	if n > MaxConfigSize {
		return nil, fmt.Errorf("config disk: length %d exceeds %d", n, MaxConfigSize)
	}
	js := make([]byte, n)
	if _, err := io.ReadFull(r, js); err != nil {
		return nil, fmt.Errorf("read config disk: %w", err)
	}
	return js, nil
}

// Decode parses a VM's configuration from the JSON a config disk holds.
func Decode(js []byte) (*VM, error) {
	var vm VM
	if err := json.Unmarshal(js, &vm); err != nil {
		return nil, fmt.Errorf("config disk: %w", err)
	}
	return &vm, nil
}
