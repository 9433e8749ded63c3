package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Boot returns how guests boot here, deciding it on the first call and
// keeping the verdict for the driver's lifetime. Under AccelAuto that first
// call makes a test boot under KVM: /dev/kvm can exist and still not run a
// stock kernel (a PVM host hangs it early in boot), so only a boot proves
// it. TCG guests are handed the host's TSC frequency (see HostTSCkHz).
func (d *Driver) Boot(ctx context.Context, vmlinuz string) (Boot, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.boot != nil {
		return *d.boot, nil
	}
	b := Boot{Accel: d.opts.Accel}
	if b.Accel == AccelAuto {
		ok, err := ProbeKVM(ctx, d.opts.QEMU, vmlinuz, d.opts.ProbeTimeout)
		if err != nil {
			return Boot{}, err
		}
		b.Accel = AccelTCG
		if ok {
			b.Accel = AccelKVM
		}
	}
	if b.Accel == AccelTCG {
		b.TSCkHz = HostTSCkHz()
	}
	d.boot = &b
	return b, nil
}

// panicMarker is what the probe kernel prints when, with no initrd and no
// root disk, it has booted to the point of mounting a root: far past where
// a broken KVM stops.
const panicMarker = "Kernel panic"

// ProbeKVM boots vmlinuz under KVM with no root and reports whether it
// reached its root-mount panic within timeout. A missing or unusable
// /dev/kvm is a plain false. The error is only for a QEMU that cannot run
// at all. The probe's QEMU is killed on timeout and always reaped.
func ProbeKVM(ctx context.Context, qemu, vmlinuz string, timeout time.Duration) (bool, error) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, nil
	}
	f.Close()
	probeCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(probeCtx, qemu,
		"-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128M",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", vmlinuz, "-append", "console=ttyS0 panic=-1",
		"-serial", "stdio")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return false, fmt.Errorf("kvm probe: %w", err)
	}
	werr := cmd.Wait()
	if err := ctx.Err(); err != nil {
		// The caller gave up: no verdict.
		return false, fmt.Errorf("kvm probe: %w", err)
	}
	if probeCtx.Err() != nil {
		return false, nil
	}
	if werr != nil && !strings.Contains(out.String(), panicMarker) {
		if _, ok := werr.(*exec.ExitError); !ok {
			return false, fmt.Errorf("kvm probe: %w", werr)
		}
	}
	return strings.Contains(out.String(), panicMarker), nil
}
