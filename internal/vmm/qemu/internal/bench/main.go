// Command bench measures a Hyper guest's boot under the QEMU driver: the
// time from the driver's start (writing the VM's config disk included) to the
// agent's Health answer, against the same kernel booted bare by QEMU with a
// one-line init that prints and powers off, in the same run, alternating.
// It prints each sample, the medians and their ratio.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/config"
	"github.com/hypervm/hyper/internal/disk"
	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/guestcfg"
	"github.com/hypervm/hyper/internal/units"
	"github.com/hypervm/hyper/internal/vmm"
	"github.com/hypervm/hyper/internal/vmm/qemu"
)

func main() {
	n := flag.Int("n", 5, "iterations of each boot")
	kernelDir := flag.String("kernel-dir", "/var/cache/hyper-test/kernel", "guest kernel cache")
	qemuBin := flag.String("qemu", config.DefaultQEMU, "qemu-system-x86_64")
	accel := flag.String("accel", qemu.AccelAuto, "auto, kvm or tcg")
	agentBin := flag.String("agent", "", "hyper-agent binary (default: build ./cmd/hyper-agent)")
	flag.StringVar(&bootArgs, "boot-args", "", "extra kernel command line for both boots (e.g. loglevel=7 to see where time goes)")
	flag.BoolVar(&verbose, "v", false, "print where each hyper boot's time went")
	flag.BoolVar(&standIn, "stand-in", false, "boot the driver tests' stand-in agent and time its first answer instead of hyper-agent's Health")
	flag.StringVar(&mainCmd, "main", "", "the image's command, run by sh -c as the VM's main process (default: none)")
	flag.Parse()
	if err := run(*n, *kernelDir, *qemuBin, *accel, *agentBin); err != nil {
		fmt.Fprintln(os.Stderr, "bench-boot:", err)
		os.Exit(1)
	}
}

var (
	bootArgs string
	verbose  bool
	standIn  bool
	mainCmd  string
)

func run(n int, kernelDir, qemuBin, accel, agentBin string) error {
	ctx := context.Background()
	work, err := os.MkdirTemp("", "hyper-bench-boot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	p, err := guest.NewProvider(config.Kernel{Dir: kernelDir})
	if err != nil {
		return err
	}
	k, err := p.Kernel(ctx)
	if err != nil {
		return err
	}
	if agentBin == "" {
		agentBin = filepath.Join(work, "hyper-agent")
		pkg := "./cmd/hyper-agent"
		if standIn {
			pkg = "./internal/vmm/qemu/internal/testagent"
		} else if err := runsStage1(pkg); err != nil {
			return err
		}
		if err := goBuild(agentBin, pkg); err != nil {
			return err
		}
	}
	bareBin := filepath.Join(work, "bareinit")
	if err := goBuild(bareBin, "./internal/vmm/qemu/internal/bareinit"); err != nil {
		return err
	}
	initfs, err := guest.BuildInitramfs(filepath.Join(work, "initramfs"), k, agentBin, guest.InitramfsOptions{})
	if err != nil {
		return err
	}
	bareInitrd := filepath.Join(work, "bare.cpio")
	if err := writeBareInitrd(bareInitrd, bareBin); err != nil {
		return err
	}
	base := filepath.Join(work, "base.ext4")
	if err := busyboxDisk(base); err != nil {
		return err
	}
	disks, err := writableDisks(ctx, work)
	if err != nil {
		return err
	}
	d, err := qemu.New(qemu.Options{QEMU: qemuBin, Accel: accel})
	if err != nil {
		return err
	}
	boot, err := d.Boot(ctx, k.Vmlinuz)
	if err != nil {
		return err
	}
	fi, _ := os.Stat(initfs.Path)
	fmt.Printf("kernel %s (both boot %s), accel %s, initramfs %.1f MiB, cmdline %q\n", k.Release, filepath.Base(qemu.KernelImage(*k)), boot.Accel, float64(fi.Size())/(1<<20), boot.Cmdline(""))
	if verbose {
		fmt.Printf("machine flags of both boots: %s\n", strings.Join(machineArgs(qemuBin, boot, k), " "))
	}

	var bare, ours []time.Duration
	for i := range n {
		b, err := bareBoot(ctx, qemuBin, boot, k, bareInitrd, work)
		if err != nil {
			return fmt.Errorf("bare boot %d: %w", i, err)
		}
		o, err := hyperBoot(ctx, d, disks, k, initfs, base, filepath.Join(work, fmt.Sprintf("vm%d", i)))
		if err != nil {
			return fmt.Errorf("hyper boot %d: %w", i, err)
		}
		fmt.Printf("  #%d  bare %7.3fs   hyper %7.3fs\n", i+1, b.Seconds(), o.Seconds())
		bare, ours = append(bare, b), append(ours, o)
	}
	mb, mo := median(bare), median(ours)
	fmt.Printf("median: bare %.3fs, hyper (driver start -> agent Health) %.3fs, ratio %.3f (target <= 1.15)\n",
		mb.Seconds(), mo.Seconds(), mo.Seconds()/mb.Seconds())
	// Boots minutes apart run on a differently loaded host; each pair ran
	// back to back.
	extra := make([]time.Duration, n)
	for i := range n {
		extra[i] = ours[i] - bare[i]
	}
	fmt.Printf("median of hyper - bare per pair: %.3fs\n", median(extra).Seconds())
	return nil
}

func goBuild(out, pkg string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w: %s", pkg, err, b)
	}
	return nil
}

// runsStage1 checks that the agent at pkg can boot from the initramfs.
func runsStage1(pkg string) error {
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		return fmt.Errorf("go list %s: %w", pkg, err)
	}
	if !strings.Contains(string(out), "github.com/hypervm/hyper/internal/guestinit\n") {
		return fmt.Errorf("%s does not use guestinit (EnterRoot or Stage1), so it cannot boot from the initramfs; pass -agent BINARY or -stand-in", pkg)
	}
	return nil
}

func writeBareInitrd(path, init string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	bin, err := os.Open(init)
	if err != nil {
		return err
	}
	defer bin.Close()
	fi, err := bin.Stat()
	if err != nil {
		return err
	}
	w := guest.NewCPIOWriter(f)
	for _, err := range []error{
		w.Dir("dev", 0o755),
		w.CharDev("dev/console", 0o600, 5, 1),
		w.File("init", 0o755, bin, fi.Size()),
		w.Close(),
	} {
		if err != nil {
			return err
		}
	}
	return f.Close()
}

// bareBoot runs QEMU in the foreground with the driver's machine flags and
// the same kernel command line and times it from exec to the init's line
// on the serial console. With -v the init stays up until QEMU has said how
// much guest code the boot translated, and is then killed.
func bareBoot(ctx context.Context, qemuBin string, b qemu.Boot, k *guest.Kernel, initrd, dir string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmdline := b.Cmdline(bootArgs)
	qmpSock := filepath.Join(dir, "bare-qmp.sock")
	args := machineArgs(qemuBin, b, k)
	if verbose {
		cmdline += " -- wait"
		args = append(args, "-qmp", "unix:"+qmpSock+",server=on,wait=off")
	}
	args = append(args, "-kernel", qemu.KernelImage(*k), "-initrd", initrd, "-append", cmdline, "-serial", "stdio")
	cmd := exec.CommandContext(ctx, qemuBin, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	var took time.Duration
	var console strings.Builder
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		console.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "bare-init: up") {
			took = time.Since(start)
			break
		}
	}
	if verbose && took > 0 {
		jit, err := translated(ctx, qmpSock)
		cmd.Process.Kill()
		cmd.Wait()
		if err != nil {
			return 0, err
		}
		fmt.Printf("      bare: %s\n", jit)
		return took, nil
	}
	io.Copy(&console, out)
	if err := cmd.Wait(); err != nil {
		return 0, fmt.Errorf("qemu: %w", err)
	}
	if took == 0 {
		return 0, fmt.Errorf("the bare init never printed; console:\n%s", console.String())
	}
	if bootArgs != "" {
		fmt.Printf("console of the bare boot:\n%s\n", console.String())
	}
	return took, nil
}

// machineArgs are the flags the driver gives QEMU for the machine itself
// (machine type, accelerator and its translation cache, CPU model, vCPUs,
// memory, no default devices, no reboot) for a 1-vCPU 256 MiB VM, taken
// from the driver's own command line so the bare boot cannot drift from it.
func machineArgs(qemuBin string, b qemu.Boot, k *guest.Kernel) []string {
	all := qemu.Args(qemuBin, b, vmm.Config{ID: "bare", Dir: os.TempDir(), Kernel: *k, VCPUs: 1, Memory: 256 * units.MiB})
	withValue := map[string]bool{"-M": true, "-accel": true, "-cpu": true, "-smp": true, "-m": true, "-display": true}
	alone := map[string]bool{"-nodefaults": true, "-no-user-config": true, "-no-reboot": true}
	var out []string
	for i := 1; i < len(all); i++ {
		switch {
		case withValue[all[i]] && i+1 < len(all):
			out = append(out, all[i], all[i+1])
			i++
		case alone[all[i]]:
			out = append(out, all[i])
		}
	}
	return out
}

func hyperBoot(ctx context.Context, d *qemu.Driver, disks *disk.Maker, k *guest.Kernel, initfs *guest.Initramfs, base, dir string) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	writable := filepath.Join(dir, "writable.ext4")
	if err := disks.Create(ctx, writable, writableSize); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	start := time.Now()
	configDisk := filepath.Join(dir, "config.img")
	cfg := &guestcfg.VM{ID: filepath.Base(dir)}
	if mainCmd != "" {
		cfg.Image = guestcfg.Image{Cmd: []string{"/bin/sh", "-c", mainCmd}, Env: []string{"PATH=/bin"}}
	}
	if err := guestcfg.WriteDisk(configDisk, cfg); err != nil {
		return 0, err
	}
	v, err := d.Start(ctx, vmm.Config{ID: cfg.ID, Dir: dir, Kernel: *k, Initrd: initfs.Path, BaseDisk: base,
		WritableDisk: writable, ConfigDisk: configDisk, VCPUs: 1, Memory: 256 * units.MiB, BootArgs: bootArgs})
	if err != nil {
		return 0, err
	}
	defer v.Stop(context.WithoutCancel(ctx))
	started := time.Since(start)
	var marks <-chan string
	if verbose {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		marks = watchConsole(wctx, v.ConsolePath(), start, "hyper-init: root ready", "serving on")
	}
	if standIn {
		err = standInAnswer(ctx, v)
	} else {
		err = health(ctx, v)
	}
	if err != nil {
		console, _ := os.ReadFile(v.ConsolePath())
		return 0, fmt.Errorf("%w; console:\n%s", err, console)
	}
	took := time.Since(start)
	if verbose {
		jit, err := translated(ctx, filepath.Join(dir, qemu.QMPSocket))
		if err != nil {
			return 0, err
		}
		fmt.Printf("      hyper: vmm started %.3fs, %s, agent answered %.3fs; %s\n", started.Seconds(), <-marks, took.Seconds(), jit)
	}
	if bootArgs != "" {
		console, _ := os.ReadFile(v.ConsolePath())
		fmt.Printf("console of %s:\n%s\n", cfg.ID, console)
	}
	return took, nil
}

// translated asks the QEMU at sock how much guest code it has translated:
// under TCG, translating code on its first run is much of a boot's cost,
// and unlike a time it hardly varies with the host's load.
func translated(ctx context.Context, sock string) (string, error) {
	ret, err := qemu.QMP(ctx, sock, "human-monitor-command", map[string]string{"command-line": "info jit"})
	if err != nil {
		return "", err
	}
	var text string
	if err := json.Unmarshal(ret, &text); err != nil {
		return "", fmt.Errorf("info jit: %w", err)
	}
	var parts []string
	for _, line := range strings.Split(text, "\n") {
		for _, key := range []string{"TB count", "gen code size", "TB flush count"} {
			if v, ok := strings.CutPrefix(line, key); ok {
				parts = append(parts, key+" "+strings.TrimSpace(v))
			}
		}
	}
	return "translated: " + strings.Join(parts, ", "), nil
}

func health(ctx context.Context, v vmm.VM) error {
	c, err := agent.Dial(ctx, v.DialAgent)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Health(ctx)
	return err
}

// standInAnswer sends the stand-in agent one request and waits for its
// answer, which comes once the guest has booted.
func standInAnswer(ctx context.Context, v vmm.VM) error {
	c, err := v.DialAgent(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, `{"argv":["true"]}`+"\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.Contains(line, `"code":0`) {
		return fmt.Errorf("stand-in agent: %s", line)
	}
	return nil
}

// watchConsole polls the console log and reports when each marker first
// appeared, relative to start.
func watchConsole(ctx context.Context, path string, start time.Time, markers ...string) <-chan string {
	out := make(chan string, 1)
	go func() {
		seen := map[string]time.Duration{}
		for len(seen) < len(markers) && ctx.Err() == nil {
			b, _ := os.ReadFile(path)
			for _, m := range markers {
				if _, ok := seen[m]; !ok && strings.Contains(string(b), m) {
					seen[m] = time.Since(start)
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
		var parts []string
		for _, m := range markers {
			parts = append(parts, fmt.Sprintf("%q %.3fs", m, seen[m].Seconds()))
		}
		out <- strings.Join(parts, ", ")
	}()
	return out
}

// writableSize is the size of each VM's writable disk.
const writableSize = 2 * units.GiB

// writableDisks makes VMs' writable disks as a node does: clones of an
// mke2fs template, made with the node's flags.
func writableDisks(ctx context.Context, work string) (*disk.Maker, error) {
	dir := filepath.Join(work, "disks")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	caps, err := disk.Probe(dir)
	if err != nil {
		return nil, err
	}
	cloner, err := disk.NewCloner(disk.ModeAuto, caps)
	if err != nil {
		return nil, err
	}
	m, err := disk.NewMaker(ctx, config.DefaultMke2fs, dir, cloner)
	if err != nil {
		return nil, err
	}
	_, err = m.Template(ctx, writableSize)
	return m, err
}

// busyboxDisk writes a base disk holding a static busybox as sh, built as
// an image's base disk is: by tar2ext4, with no journal.
func busyboxDisk(path string) error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("needs a static /bin/busybox (Debian busybox-static): %w", err)
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	for _, dir := range []string{"bin", "etc", "tmp", "root"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755}); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))}); err != nil {
		return err
	}
	if _, err := tw.Write(bb); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "busybox"}); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := tar2ext4.ConvertTarToExt4(&layer, f); err != nil {
		return fmt.Errorf("tar2ext4: %w", err)
	}
	return f.Close()
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
