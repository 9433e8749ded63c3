// Command jailer is the strict stand-in for Firecracker's jailer (package
// fakejailer): it checks its arguments as the real jailer does, builds the
// jail and execs the Firecracker stand-in in place (same pid).
package main

import (
	"fmt"
	"os"

	"github.com/hypervm/hyper/internal/vmm/firecracker/fctest/fakejailer"
)

func main() {
	a, err := fakejailer.Parse(os.Args[1:])
	if err == nil {
		err = fakejailer.Run(a, os.Args)
	}
	fmt.Fprintf(os.Stderr, "jailer stand-in: %v\n", err)
	os.Exit(1)
}
