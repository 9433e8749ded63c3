// Command kerneltool fetches the pinned guest kernel (make kernel) and
// re-pins the manifest to the kernel the Debian mirror serves now (make
// repin-kernel).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"

	"github.com/hypervm/hyper/internal/config"
	"github.com/hypervm/hyper/internal/guest"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var err error
	switch os.Args[1] {
	case "fetch":
		err = fetch(ctx, os.Args[2:])
	case "repin":
		err = repin(ctx, os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kerneltool:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: kerneltool fetch -dir DIR | repin -manifest FILE [-arch ARCH]")
	os.Exit(2)
}

func fetch(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("fetch", flag.ExitOnError)
	dir := fs.String("dir", config.Default().Kernel.Dir, "kernel cache directory (config kernel.dir)")
	fs.Parse(args)
	p, err := guest.NewProvider(config.Kernel{Dir: *dir})
	if err != nil {
		return err
	}
	k, err := p.Kernel(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("kernel %s (%s=%s)\n  vmlinuz %s\n  vmlinux %s\n  modules %s\n",
		k.Release, p.Pin.Package, p.Pin.Version, k.Vmlinuz, k.Vmlinux, k.Modules)
	return nil
}

func repin(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("repin", flag.ExitOnError)
	path := fs.String("manifest", guest.ManifestFile, "manifest to rewrite")
	arch := fs.String("arch", runtime.GOARCH, "architecture to re-pin")
	fs.Parse(args)
	data, err := os.ReadFile(*path)
	if err != nil {
		return err
	}
	m, err := guest.ParseManifest(data)
	if err != nil {
		return err
	}
	old, err := m.For(*arch)
	if err != nil {
		return err
	}
	var apt guest.Apt
	pin, err := apt.Current(ctx, old.MetaPackage, *arch)
	if err != nil {
		return err
	}
	// Prove the mirror serves the file and that it matches its index.
	tmp, err := os.MkdirTemp("", "kerneltool-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	p := &guest.Provider{Dir: tmp, Pin: pin}
	if _, err := p.Kernel(ctx); err != nil {
		return err
	}
	for i := range m.Kernels {
		if m.Kernels[i].Arch == *arch {
			m.Kernels[i] = pin
		}
	}
	if err := m.WriteFile(*path); err != nil {
		return err
	}
	if old == pin {
		fmt.Printf("%s: %s=%s is still current\n", *path, pin.Package, pin.Version)
	} else {
		fmt.Printf("%s: re-pinned %s=%s to %s=%s (sha256 %s)\n", *path, old.Package, old.Version, pin.Package, pin.Version, pin.SHA256)
	}
	return nil
}
