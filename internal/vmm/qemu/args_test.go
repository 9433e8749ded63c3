package qemu_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/guest/guesttest"
	"github.com/hypervm/hyper/internal/units"
	"github.com/hypervm/hyper/internal/vmm"
	"github.com/hypervm/hyper/internal/vmm/qemu"
)

func argAfter(args []string, flag string) []string {
	var vals []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			vals = append(vals, args[i+1])
		}
	}
	return vals
}

func TestArgs(t *testing.T) {
	c := vmm.Config{
		ID: "vm-1", Dir: "/srv/hyper/vms/vm-1", Kernel: guest.Kernel{Vmlinuz: "/k/vmlinuz"},
		Initrd: "/srv/hyper/kernel/initramfs/k.cpio", BaseDisk: "/layers/images/a,b.ext4",
		WritableDisk: "/srv/hyper/vms/vm-1/disk.ext4", ConfigDisk: "/srv/hyper/vms/vm-1/config.img", VCPUs: 2, Memory: 512 * units.MiB,
		DiskBandwidth: 100 << 20, BootArgs: "hyper.debug=1",
	}
	args := qemu.Args("/usr/bin/qemu-system-x86_64", qemu.Boot{Accel: qemu.AccelTCG, TSCkHz: 2596000}, c)
	if args[0] != "/usr/bin/qemu-system-x86_64" {
		t.Fatalf("argv[0] = %q", args[0])
	}
	drives := argAfter(args, "-drive")
	if len(drives) != 3 {
		t.Fatalf("drives = %q", drives)
	}
	// The base disk is first (/dev/vda), read-only; a comma in a path is
	// doubled so QEMU does not read it as an option separator.
	if !strings.Contains(drives[0], "file=/layers/images/a,,b.ext4,readonly=on") {
		t.Errorf("base drive = %q", drives[0])
	}
	if strings.Contains(drives[1], "readonly") || !strings.Contains(drives[1], "file=/srv/hyper/vms/vm-1/disk.ext4") {
		t.Errorf("writable drive = %q", drives[1])
	}
	if !strings.Contains(drives[2], "file=/srv/hyper/vms/vm-1/config.img,readonly=on") {
		t.Errorf("config drive = %q", drives[2])
	}
	for _, d := range drives {
		if !strings.Contains(d, "throttling.bps-total=104857600") {
			t.Errorf("drive without the bandwidth limit: %q", d)
		}
	}
	for flag, want := range map[string]string{
		"-smp": "2", "-m": "512M", "-accel": "tcg,tb-size=64", "-M": "microvm", "-kernel": "/k/vmlinuz",
		"-pidfile": "/srv/hyper/vms/vm-1/qemu.pid",
		"-append":  "console=ttyS0 reboot=t panic=-1 quiet tsc_early_khz=2596000 hyper.debug=1",
	} {
		if got := argAfter(args, flag); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", flag, got, want)
		}
	}
	joined := strings.Join(args, " ")
	for _, want := range []string{"-nodefaults", "-no-user-config", "-daemonize", "-no-reboot",
		"virtserialport,chardev=agent,name=hyper.agent", "path=/srv/hyper/vms/vm-1/agent.sock",
		"path=/srv/hyper/vms/vm-1/qmp.sock", "mode=control", "path=/srv/hyper/vms/vm-1/console.log"} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q: %s", want, joined)
		}
	}
	kvm := strings.Join(qemu.Args("/q", qemu.Boot{Accel: qemu.AccelKVM, TSCkHz: 1}, c), " ")
	if strings.Contains(kvm, "tsc_early_khz") || !strings.Contains(kvm, "-cpu host") {
		t.Errorf("kvm args: %s", kvm)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	if _, err := qemu.New(qemu.Options{QEMU: "qemu-system-x86_64"}); err == nil {
		t.Error("relative qemu path accepted")
	}
	if _, err := qemu.New(qemu.Options{QEMU: "/usr/bin/qemu-system-x86_64", Accel: "hvf"}); err == nil {
		t.Error("unknown accelerator accepted")
	}
}

// TestKernelImage: QEMU boots the ELF vmlinux when it has a PVH entry
// point, skipping the bzImage's self-decompression, and the bzImage
// otherwise.
func TestKernelImage(t *testing.T) {
	k := guesttest.Kernel(t)
	if k.Vmlinux == "" {
		t.Skip("the pinned kernel gave no vmlinux")
	}
	if got := qemu.KernelImage(*k); got != k.Vmlinux {
		t.Errorf("KernelImage = %s, want the PVH-capable %s", got, k.Vmlinux)
	}
	notELF := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(notELF, []byte("not an ELF file"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, kk := range map[string]guest.Kernel{
		"no vmlinux":     {Vmlinuz: k.Vmlinuz},
		"not ELF":        {Vmlinuz: k.Vmlinuz, Vmlinux: notELF},
		"missing":        {Vmlinuz: k.Vmlinuz, Vmlinux: filepath.Join(t.TempDir(), "absent")},
		"bzImage as ELF": {Vmlinuz: k.Vmlinuz, Vmlinux: k.Vmlinuz},
	} {
		if got := qemu.KernelImage(kk); got != k.Vmlinuz {
			t.Errorf("%s: KernelImage = %s, want the bzImage", name, got)
		}
	}
}
