// Package fctest builds the strict stand-ins for Firecracker and its
// jailer (cmd/firecracker, cmd/jailer; the logic lives in fakefc and
// fakejailer) for tests on hosts where Firecracker cannot run.
package fctest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Binaries are the built stand-ins, named as the helper expects them.
type Binaries struct {
	Firecracker string
	Jailer      string
}

const pkg = "github.com/hypervm/hyper/internal/vmm/firecracker/fctest/cmd/"

// Build compiles both stand-ins into dir as dir/firecracker and
// dir/jailer, mode 0755, with qemu (qemu-system-x86_64) linked into the
// Firecracker stand-in.
func Build(dir, qemu string) (Binaries, error) {
	b := Binaries{Firecracker: filepath.Join(dir, "firecracker"), Jailer: filepath.Join(dir, "jailer")}
	for _, t := range []struct{ out, pkg, ldflags string }{
		{b.Firecracker, pkg + "firecracker", "-X main.qemu=" + qemu},
		{b.Jailer, pkg + "jailer", ""},
	} {
		cmd := exec.Command("go", "build", "-o", t.out, "-ldflags", t.ldflags, t.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return b, fmt.Errorf("build %s: %v: %s", t.pkg, err, out)
		}
		if err := os.Chmod(t.out, 0o755); err != nil {
			return b, err
		}
	}
	return b, nil
}
