package guestcfg

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestConfigDiskRoundTrip(t *testing.T) {
	vm := &VM{ID: "vm-1", Image: Image{Cmd: []string{"sh", "-c", "echo hi"}, Env: []string{"A=b c", "PATH=/bin"}, WorkingDir: "/w", User: "1:2"}}
	path := filepath.Join(t.TempDir(), "config.img")
	if err := WriteDisk(path, vm); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size()%diskBlock != 0 || fi.Mode().Perm() != 0o644 {
		t.Errorf("config disk: size %d mode %v, want a multiple of %d and 0644", fi.Size(), fi.Mode().Perm(), diskBlock)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := DecodeDisk(f)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(vm, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if err := WriteDisk(path, vm); err == nil {
		t.Error("WriteDisk over an existing file succeeded")
	}
}

func TestDecodeDiskRefusals(t *testing.T) {
	good, err := EncodeDisk(&VM{ID: "v"})
	if err != nil {
		t.Fatal(err)
	}
	truncated := good[:diskHeader+3]
	huge := bytes.Clone(good)
	huge[len(diskMagic)+3] = 0x7f
	badJSON := bytes.Clone(good)
	badJSON[diskHeader] = '['
	for name, c := range map[string]struct {
		data []byte
		want string
	}{
		"empty":       {nil, "header"},
		"ext4 disk":   {make([]byte, 4096), ErrNotConfigDisk.Error()},
		"truncated":   {truncated, "read config disk"},
		"huge length": {huge, "exceeds"},
		"bad json":    {badJSON, "config disk:"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeDisk(bytes.NewReader(c.data))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("DecodeDisk = %v, want an error containing %q", err, c.want)
			}
		})
	}
	if _, err := DecodeDisk(bytes.NewReader(make([]byte, 64))); !errors.Is(err, ErrNotConfigDisk) {
		t.Errorf("zeros: %v, want ErrNotConfigDisk", err)
	}
}

func TestEncodeDiskTooLarge(t *testing.T) {
	_, err := EncodeDisk(&VM{ID: "v", Image: Image{Env: []string{"X=" + strings.Repeat("y", MaxConfigSize)}}})
	if err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("EncodeDisk of a 1 MiB env = %v, want a size error", err)
	}
}
