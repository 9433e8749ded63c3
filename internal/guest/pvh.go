package guest

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
)

// xenElfnotePhys32Entry is the ELF note (owner "Xen") holding a kernel's
// 32-bit PVH entry point. QEMU boots an ELF kernel that has one directly,
// with no bzImage decompression first.
const xenElfnotePhys32Entry = 18

// HasPVHEntry reports whether the ELF kernel at path has a PVH entry point.
func HasPVHEntry(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, fmt.Errorf("pvh entry of %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(io.LimitReader(p.Open(), 1<<20))
		if err != nil {
			return false, fmt.Errorf("pvh entry of %s: read notes: %w", path, err)
		}
		if hasNote(data, f.ByteOrder, "Xen", xenElfnotePhys32Entry) {
			return true, nil
		}
	}
	return false, nil
}

// hasNote reports whether an ELF note segment holds a note of owner name
// and type typ. Each note is namesz, descsz and type (4 bytes each), then
// the name and the descriptor, each padded to 4 bytes.
func hasNote(data []byte, order binary.ByteOrder, name string, typ uint32) bool {
	pad := func(n uint32) uint64 { return (uint64(n) + 3) &^ 3 }
	for len(data) >= 12 {
		namesz, descsz, t := order.Uint32(data), order.Uint32(data[4:]), order.Uint32(data[8:])
		data = data[12:]
		if pad(namesz)+pad(descsz) > uint64(len(data)) {
			return false
		}
		n := bytes.TrimRight(data[:namesz], "\x00")
		if t == typ && string(n) == name {
			return true
		}
		data = data[pad(namesz)+pad(descsz):]
	}
	return false
}
