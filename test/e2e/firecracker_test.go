package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hypervm/hyper/internal/vmm/firecracker/fctest"
)

// TestLifecycleFirecracker runs the same lifecycle with the Firecracker
// driver: the real setuid helper prepares the jail and execs the jailer,
// which here is the strict stand-in (no Firecracker can run on this
// machine); the stand-in firecracker validates every API request and boots
// the guest under QEMU, bridging the vsock protocol to the agent.
func TestLifecycleFirecracker(t *testing.T) {
	requireRoot(t)
	dir, err := os.MkdirTemp("", "hyper-e2e-fc-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o755))
	// The helper runs only root-owned binaries that nobody else can write.
	bins, err := fctest.Build(dir, "/usr/bin/qemu-system-x86_64")
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{bins.Firecracker, bins.Jailer} {
		must(t, os.Chown(b, 0, 0))
		must(t, os.Chmod(b, 0o755))
	}
	section := fmt.Sprintf("tools.firecracker = %q\ntools.jailer = %q\n[vmm]\ndriver = \"firecracker\"\n",
		filepath.Clean(bins.Firecracker), filepath.Clean(bins.Jailer))
	vn := newVMNode(t, section)
	vn.start()
	vn.loadBusybox(t)
	runLifecycle(t, vn)
}
