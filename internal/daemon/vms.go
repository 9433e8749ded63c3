package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/hypervm/hyper/internal/cgroup"
	"github.com/hypervm/hyper/internal/config"
	"github.com/hypervm/hyper/internal/disk"
	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/helper"
	"github.com/hypervm/hyper/internal/node"
	"github.com/hypervm/hyper/internal/store"
	"github.com/hypervm/hyper/internal/vmm"
	"github.com/hypervm/hyper/internal/vmm/firecracker"
	"github.com/hypervm/hyper/internal/vmm/qemu"
)

// vmDeps builds everything the node's VM manager needs: the guest kernel
// and initramfs, the disk maker, the helper client and the VMM driver. Any
// failure names the missing piece and the fix.
func vmDeps(ctx context.Context, cfg *config.Config, st *store.Store, log *slog.Logger) (node.Options, error) {
	o := node.Options{
		Config: cfg, Node: cfg.Cluster.NodeName, Store: st, Logger: log,
		MaxCrashes: *cfg.VMM.MaxCrashes, CrashWindow: cfg.VMM.CrashWindow.Duration,
	}

	hc := helper.New(cfg.Tools.SuidHelper)
	sys, err := hc.SysTest(ctx)
	if err != nil {
		return o, fmt.Errorf("the setuid helper %s does not work (install it with `make install-helper`): %w", cfg.Tools.SuidHelper, err)
	}
	if sys.WorkDir != cfg.WorkDir {
		return o, fmt.Errorf("the setuid helper reads work_dir %s from its config, hyperd %s: point both at the same /etc/hyper/config.toml", sys.WorkDir, cfg.WorkDir)
	}
	o.Helper = hc
	if o.Cgroups, err = delegatedCgroups(ctx, hc, log); err != nil {
		return o, err
	}

	provider, err := guest.NewProvider(cfg.Kernel)
	if err != nil {
		return o, fmt.Errorf("guest kernel: %w", err)
	}
	log.Info("preparing guest kernel", "dir", cfg.Kernel.Dir)
	k, err := provider.Kernel(ctx)
	if err != nil {
		return o, fmt.Errorf("guest kernel: %w", err)
	}
	agentBin := cfg.Tools.Agent
	if agentBin == "" {
		self, err := os.Executable()
		if err != nil {
			return o, fmt.Errorf("find hyper-agent: %w", err)
		}
		agentBin = filepath.Join(filepath.Dir(self), "hyper-agent")
	}
	initramfs, err := provider.Initramfs(k, agentBin, guest.InitramfsOptions{})
	if err != nil {
		return o, fmt.Errorf("guest initramfs (agent %s; set tools.agent if it lives elsewhere): %w", agentBin, err)
	}
	o.Kernel, o.Initramfs = *k, initramfs.Path
	log.Info("guest ready", "kernel", k.Release, "initramfs", initramfs.Path)

	if err := os.MkdirAll(cfg.DiskTemplatesDir(), 0o750); err != nil {
		return o, err
	}
	caps, err := disk.Probe(cfg.VMsDir())
	if err != nil {
		return o, fmt.Errorf("probe %s for clones: %w", cfg.VMsDir(), err)
	}
	cloner, err := disk.NewCloner(cfg.Disk.Clone, caps)
	if err != nil {
		return o, fmt.Errorf("disk.clone: %w", err)
	}
	log.Info("disk clones", "dir", cfg.VMsDir(), "fs", caps.FSType, "method", cloner.Method().String())
	maker, err := disk.NewMaker(ctx, cfg.Tools.Mke2fs, cfg.DiskTemplatesDir(), cloner)
	if err != nil {
		return o, fmt.Errorf("writable disks: %w", err)
	}
	o.Disks, o.Cloner = maker, cloner

	o.Driver, err = driver(ctx, cfg, st, hc, k.Vmlinuz, log)
	if err != nil {
		return o, err
	}
	if q, ok := o.Driver.(*qemu.Driver); ok {
		// How QEMU runs guests here (KVM or TCG) sets what each VM's
		// QEMU needs beside its guest, so it is settled before any VM
		// reserves its share.
		boot, err := q.Boot(ctx, k.Vmlinuz)
		if err != nil {
			return o, err
		}
		o.VMMOverhead = boot.MemoryOverhead()
		log.Info("qemu", "accel", boot.Accel, "vmm_overhead", o.VMMOverhead.String())
	}
	capacity, err := node.HostCapacity(cfg)
	if err != nil {
		return o, err
	}
	o.Budget = node.NewBudget(capacity)
	return o, nil
}

// delegatedCgroups has the helper hand the node's parent cgroup to
// hyperd, once per start, so that creating a VM's cgroup and moving its
// VMM in run no helper process. Under cgroup v2 the helper also moves
// hyperd into the parent's hyperd leaf.
func delegatedCgroups(ctx context.Context, hc *helper.Client, log *slog.Logger) (*cgroup.Tree, error) {
	d, err := hc.Delegate(ctx)
	if err != nil {
		return nil, fmt.Errorf("the setuid helper could not delegate the parent cgroup to hyperd: %w", err)
	}
	tree, err := cgroup.Delegated(d)
	if err != nil {
		return nil, err
	}
	log.Info("cgroups delegated", "version", d.CgroupVersion, "parents", d.Parents, "self", d.Self)
	return tree, nil
}

// driver picks the VMM driver: Firecracker when its binaries are
// configured and KVM can run a guest, QEMU otherwise (vmm.driver = auto).
func driver(ctx context.Context, cfg *config.Config, st *store.Store, hc *helper.Client, vmlinuz string, log *slog.Logger) (vmm.Driver, error) {
	want := cfg.VMM.Driver
	if want == "auto" {
		want = "qemu"
		if cfg.Tools.Firecracker != "" && cfg.Tools.Jailer != "" {
			if ok, _ := qemu.ProbeKVM(ctx, cfg.Tools.QEMU, vmlinuz, 5*time.Second); ok {
				want = "firecracker"
			} else {
				log.Warn("firecracker is configured but KVM cannot run a guest here; using qemu with TCG")
			}
		}
	}
	switch want {
	case "firecracker":
		if cfg.Tools.Firecracker == "" || cfg.Tools.Jailer == "" {
			return nil, fmt.Errorf("vmm.driver = firecracker needs tools.firecracker and tools.jailer in the config")
		}
		return firecracker.New(firecracker.Options{
			Jail:         hc,
			JailsDir:     cfg.JailsDir(),
			InitramfsDir: filepath.Join(cfg.Kernel.Dir, guest.InitramfsDir),
			Owner: func(id string) (uint32, uint32, error) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				vm, err := st.GetVM(ctx, id)
				if err != nil {
					return 0, 0, err
				}
				return vm.UID, vm.UID, nil
			},
		})
	default:
		return qemu.New(qemu.Options{QEMU: cfg.Tools.QEMU})
	}
}
