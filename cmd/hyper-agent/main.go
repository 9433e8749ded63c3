// Command hyper-agent is PID 1 inside every Hyper guest: it finishes the
// guest's setup, starts the image's command as the main process, reaps
// orphans, and serves the host over vsock (Firecracker) or a virtio-serial
// port (QEMU) with the agent protocol (api/agent/v1).
//
// The same binary is the initramfs's stage-1 init, which mounts the disks
// and switches root; the process then carries on as the agent, PID 1 of the
// new root.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/agent/guestd"
	"github.com/hypervm/hyper/internal/agent/pid1"
	"github.com/hypervm/hyper/internal/guestcfg"
	"github.com/hypervm/hyper/internal/guestinit"
)

func main() {
	// In the initramfs this process is stage 1 first: it builds the VM's
	// root and switches into it, then serves as its init. Started any
	// other way as PID 1 (a root built by someone else), it reads the
	// configuration stage 1 left behind.
	var vm *guestcfg.VM
	if guestinit.IsStage1() {
		vm = guestinit.EnterRoot() // returns only in the new root
	} else if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "hyper-agent: must run as PID 1 of a Hyper guest")
		os.Exit(2)
	}
	// run returns only on a fatal error; a PID 1 must never exit.
	pid1.Fatal(run(vm))
}

// run is the agent's life as PID 1 of the VM's root; vm is nil when the
// configuration is to be read from guestcfg.RunConfigPath.
func run(vm *guestcfg.VM) error {
	if err := pid1.MountAll(); err != nil {
		return err
	}
	console := pid1.Console()
	log := slog.New(slog.NewTextHandler(console, &slog.HandlerOptions{Level: slog.LevelInfo}))

	if vm == nil {
		var err error
		if vm, err = readConfig(guestcfg.RunConfigPath); err != nil {
			return err
		}
	}
	if vm.ID == "" {
		return errors.New("vm config: id: empty")
	}
	if err := pid1.SetHostname(vm.ID); err != nil {
		log.Warn("hostname", "err", err)
	}
	if err := pid1.LoopbackUp(); err != nil {
		log.Warn("loopback", "err", err)
	}

	// As PID 1 every orphan in the guest is ours to reap.
	reaper := guestd.NewReaper(true)
	srv := guestd.New(guestd.Config{
		VMID:       vm.ID,
		Image:      vm.Image,
		Reaper:     reaper,
		MainOutput: console,
		PowerOff:   powerOff(log),
		Logger:     log,
	})
	if err := srv.StartMain(); err != nil {
		// The VM stays up so the host can read the failure from Health.
		log.Error("main process", "err", err)
	}
	go forwardSignals(srv, log)

	ctx := context.Background()
	port, err := waitChannel(channelTimeout)
	if err != nil {
		return err
	}
	if port != "" {
		log.Info("serving on virtio-serial", "port", port, "since_boot", sinceBoot())
		return srv.ServeVirtioPort(ctx, port)
	}
	l, err := vsock.Listen(guestcfg.AgentVsockPort, nil)
	if err != nil {
		return fmt.Errorf("listen on vsock port %d: %w", guestcfg.AgentVsockPort, err)
	}
	log.Info("serving on vsock", "port", guestcfg.AgentVsockPort, "since_boot", sinceBoot())
	return srv.ServeListener(ctx, l)
}

// sinceBoot is the guest's time since its kernel started: logged when the
// agent starts serving, so a console log shows how long the guest took to
// boot, apart from the host's side of it.
func sinceBoot() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano()).Round(time.Millisecond)
}

// channelTimeout bounds the wait for the host channel's device: drivers
// announce virtio devices asynchronously, so it may appear shortly after
// its module was loaded.
const channelTimeout = 10 * time.Second

// channelPoll is how often waitChannel looks: the port usually appears
// within milliseconds of the agent starting, and every one counts at boot.
const channelPoll = 2 * time.Millisecond

// waitChannel waits for the host channel: it returns the virtio-serial port
// named guestcfg.AgentPortName (QEMU), or "" once a virtio vsock device is
// bound (Firecracker).
func waitChannel(timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		if port, err := guestd.FindVirtioPort("/sys", guestcfg.AgentPortName); err == nil {
			return port, nil
		}
		if vsocks, _ := filepath.Glob("/sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio*"); len(vsocks) > 0 {
			return "", nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no host channel after %v: no virtio-serial port %q and no virtio vsock device",
				timeout, guestcfg.AgentPortName)
		}
		time.Sleep(channelPoll)
	}
}

func readConfig(path string) (*guestcfg.VM, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read vm config: %w", err)
	}
	var vm guestcfg.VM
	if err := json.Unmarshal(b, &vm); err != nil {
		return nil, fmt.Errorf("read vm config %s: %w", path, err)
	}
	return &vm, nil
}

// forwardSignals passes the SIGTERM and SIGINT that PID 1 receives (the
// kernel turns ctrl-alt-del into SIGINT) on to the main process.
func forwardSignals(srv *guestd.Server, log *slog.Logger) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT)
	for sig := range sigs {
		if err := srv.SignalMain(sig.(unix.Signal)); err != nil {
			log.Warn("forward signal", "signal", sig, "err", err)
		}
	}
}

func powerOff(log *slog.Logger) func(reboot bool, grace time.Duration) {
	return func(reboot bool, grace time.Duration) {
		log.Info("stopping all processes", "grace", grace)
		pid1.KillAll(grace)
		pid1.Fatal(pid1.PowerOff(reboot))
	}
}
