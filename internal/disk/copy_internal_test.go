package disk

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestSparseCopyBuffered covers the buffered path that takes over where
// copy_file_range is refused (which no filesystem of a test machine does
// between two files of one directory).
func TestSparseCopyBuffered(t *testing.T) {
	dir := t.TempDir()
	want := make([]byte, 5<<20+123) // not a whole number of buffers or blocks
	for i := range want {
		want[i] = byte(i*7 + i>>12)
	}
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, want, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d, err := os.Create(filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c := rangeCopier{dst: d, src: s, buf: make([]byte, 1<<20)}
	for off := int64(0); off < int64(len(want)); {
		n, err := c.copy(off, int64(len(want))-off)
		if err != nil {
			t.Fatal(err)
		}
		off += n
	}
	got, err := os.ReadFile(d.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("buffered copy differs from the source")
	}
	if _, err := c.copy(int64(len(want)), 10); err == nil {
		t.Errorf("copy past the end of the source succeeded")
	}
}
