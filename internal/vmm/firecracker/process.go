package firecracker

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/hypervm/hyper/internal/vmm/vmmproc"
)

// attachProcess opens pid if it is the Firecracker of VM id.
func attachProcess(pid int, id string) (*vmmproc.Process, error) {
	return vmmproc.Attach(pid, func(argv []string) error {
		if !isFirecrackerOf(argv, id) {
			return fmt.Errorf("is not the firecracker of vm %s (argv %q)", id, argv)
		}
		return nil
	})
}

// isFirecrackerOf reports whether argv is that of the Firecracker of VM
// id: argv[0] names firecracker and it carries --id <id> (or --id=<id>),
// which the jailer passes.
func isFirecrackerOf(argv []string, id string) bool {
	if len(argv) == 0 || !strings.Contains(filepath.Base(argv[0]), "firecracker") {
		return false
	}
	for i, a := range argv[1:] {
		if a == "--id="+id || a == "--id" && i+2 < len(argv) && argv[i+2] == id {
			return true
		}
	}
	return false
}
