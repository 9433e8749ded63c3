// Command firecracker is the strict stand-in for Firecracker (package
// fakefc): it serves Firecracker's API on --api-sock and boots the guest
// under QEMU. It runs with its working directory at the jail root, which
// it treats as "/" (the jailer stand-in puts it there).
//
// The QEMU binary is linked in at build time
// (-ldflags "-X main.qemu=/usr/bin/qemu-system-x86_64"): the jailer empties
// the environment, as the real one does, so nothing else could name it.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/hypervm/hyper/internal/vmm/firecracker/fctest/fakefc"
)

var qemu = "/usr/bin/qemu-system-x86_64"

// runDir is the in-jail directory holding QEMU's sockets.
const runDir = ".fctest-qemu"

func main() {
	os.Exit(run())
}

func run() int {
	logger := log.New(os.Stderr, "[firecracker stand-in] ", log.LstdFlags|log.Lmicroseconds)
	args, err := fakefc.ParseArgs(os.Args[1:])
	if err != nil {
		logger.Print(err)
		return 1
	}
	if args.Version {
		fmt.Printf("Firecracker v%s (stand-in)\n", fakefc.Version)
		return 0
	}
	if err := os.Mkdir(runDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		logger.Printf("create %s: %v", runDir, err)
		return 1
	}
	m := fakefc.NewQEMU(qemu, runDir, os.Stdout)
	defer m.Kill()
	srv, err := fakefc.New(args.ID, ".", m, logger.Printf)
	if err != nil {
		logger.Print(err)
		return 1
	}
	defer srv.Close()
	sock := srv.HostPath(args.APISock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		logger.Printf("Failed to open the API socket %s: %v", args.APISock, err)
		return 1
	}
	hs := &http.Server{Handler: srv}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(l) }()
	logger.Printf("Running Firecracker v%s (stand-in) as %d:%d, API on %s", fakefc.Version, os.Getuid(), os.Getgid(), args.APISock)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	code := 0
	select {
	case <-m.Done():
		// Firecracker exits when the guest powers off or reboots.
		logger.Print("guest ended; exiting")
	case sig := <-sigs:
		logger.Printf("%v; exiting", sig)
		code = 128 + int(sig.(syscall.Signal))
	case err := <-served:
		logger.Printf("API server: %v", err)
		code = 1
	}
	hs.Shutdown(context.Background())
	os.Remove(sock)
	return code
}
