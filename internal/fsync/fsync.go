// Package fsync makes renames durable. Packages that publish a file by
// renaming it into place (disk, image) must also fsync the directory, or
// a crash can lose the new name even though the file's data reached the
// disk; this is the one place that does it, below every such package.
package fsync

import (
	"fmt"
	"os"
)

// Dir fsyncs the directory dir, so that the entries created, renamed or
// removed in it so far survive a crash.
func Dir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
