package guest

import (
	"encoding/binary"
	"testing"
)

func TestHasNote(t *testing.T) {
	note := func(name string, typ uint32, desc []byte) []byte {
		n := append([]byte(name), 0)
		b := binary.LittleEndian.AppendUint32(nil, uint32(len(n)))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(desc)))
		b = binary.LittleEndian.AppendUint32(b, typ)
		b = append(b, n...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		b = append(b, desc...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	le := binary.LittleEndian
	seg := append(note("GNU", 3, []byte{1, 2, 3, 4, 5}), note("Xen", 18, []byte{0x50, 8, 0, 1, 0, 0, 0, 0})...)
	for _, c := range []struct {
		name string
		data []byte
		want bool
	}{
		{"second note", seg, true},
		{"other owner", note("Linux", 18, []byte{1}), false},
		{"other type", note("Xen", 6, []byte("linux")), false},
		{"truncated", seg[:len(seg)-4], false},
		{"empty", nil, false},
	} {
		if got := hasNote(c.data, le, "Xen", 18); got != c.want {
			t.Errorf("%s: hasNote = %v, want %v", c.name, got, c.want)
		}
	}
}
