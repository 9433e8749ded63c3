// Command testagent is the guest side of the Firecracker driver's boot
// tests: stage 1 is the real guest init (guestinit), stage 2 serves the
// real agent protocol (guestd) on the hyper.agent virtio-serial port,
// which the Firecracker stand-in bridges to its vsock socket. It exists
// because hyper-agent is wired up by another part of the tree; the test
// switches to it once that binary boots from the initramfs itself.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/hypervm/hyper/internal/agent/guestd"
	"github.com/hypervm/hyper/internal/agent/pid1"
	"github.com/hypervm/hyper/internal/guestcfg"
	"github.com/hypervm/hyper/internal/guestinit"
)

func main() {
	if guestinit.IsStage1() {
		guestinit.Stage1()
	}
	pid1.Fatal(run())
}

func run() error {
	if err := pid1.MountAll(); err != nil {
		return err
	}
	console := pid1.Console()
	log := slog.New(slog.NewTextHandler(console, nil))
	b, err := os.ReadFile(guestcfg.RunConfigPath)
	if err != nil {
		return err
	}
	var vm guestcfg.VM
	if err := json.Unmarshal(b, &vm); err != nil {
		return fmt.Errorf("vm config: %w", err)
	}
	srv := guestd.New(guestd.Config{
		VMID: vm.ID, Image: vm.Image, Reaper: guestd.NewReaper(true), MainOutput: console, Logger: log,
		PowerOff: func(reboot bool, grace time.Duration) {
			pid1.KillAll(grace)
			pid1.Fatal(pid1.PowerOff(reboot))
		},
	})
	if err := srv.StartMain(); err != nil {
		log.Error("main process", "err", err)
	}
	port, err := guestd.FindVirtioPort("/sys", guestcfg.AgentPortName)
	if err != nil {
		return err
	}
	log.Info("testagent serving", "port", port)
	return srv.ServeVirtioPort(context.Background(), port)
}
