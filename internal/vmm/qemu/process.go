package qemu

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/hypervm/hyper/internal/vmm/vmmproc"
)

// openProcess opens pid if it is the QEMU started with pidfile. It need
// not be our child: a daemonized QEMU is reparented away from us.
func openProcess(pid int, pidfile string) (*vmmproc.Process, error) {
	return vmmproc.Attach(pid, func(argv []string) error { return checkQEMU(argv, pidfile) })
}

// checkQEMU accepts the argv of the QEMU started with pidfile: argv[0] is
// a qemu-system binary and the arguments hold "-pidfile <pidfile>".
func checkQEMU(argv []string, pidfile string) error {
	if len(argv) == 0 || !strings.HasPrefix(filepath.Base(argv[0]), "qemu-system-") {
		return fmt.Errorf("is not QEMU (argv %q)", argv)
	}
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == "-pidfile" && argv[i+1] == pidfile {
			return nil
		}
	}
	return fmt.Errorf("is a QEMU of another VM (no -pidfile %s)", pidfile)
}
