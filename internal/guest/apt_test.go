package guest

import (
	"bytes"
	"testing"
)

func TestPickVersionPrefersPointRelease(t *testing.T) {
	madison := map[string]string{"madison": `linux-image-cloud-amd64 |  6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-image-cloud-amd64 |  6.1.176-1 | http://deb.debian.org/debian bookworm/main amd64 Packages
linux-image-cloud-amd64 |  6.1.176-1 | http://deb.debian.org/debian bookworm/main arm64 Packages
`}
	if got := pickVersion(madison, "amd64"); got != "6.1.176-1" {
		t.Fatalf("pickVersion = %q, want the point release 6.1.176-1", got)
	}
	onlySecurity := map[string]string{"madison": `linux-image-cloud-amd64 |  6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages`}
	if got := pickVersion(onlySecurity, "amd64"); got != "6.1.192-2" {
		t.Fatalf("pickVersion = %q, want the only version offered", got)
	}
	if got := pickVersion(madison, "riscv64"); got != "" {
		t.Fatalf("pickVersion(riscv64) = %q", got)
	}
}

func TestVersionedDependency(t *testing.T) {
	dep := "linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1), initramfs-tools | linux-initramfs-tool"
	if got := versionedDependency(dep, "6.1.176-1"); got != "linux-image-6.1.0-50-cloud-amd64" {
		t.Fatalf("got %q", got)
	}
	if got := versionedDependency(dep, "6.1.192-2"); got != "" {
		t.Fatalf("dependency on another version accepted: %q", got)
	}
}

func TestDecodeLZ4Block(t *testing.T) {
	// "abcabcabcabcX": 3 literals, then a match of 9 at offset 3 (an
	// overlapping copy), then 1 literal.
	block := []byte{0x35, 'a', 'b', 'c', 3, 0, 0x10, 'X'}
	got, err := decodeLZ4Block(nil, block, 1<<20)
	if err != nil || string(got) != "abcabcabcabcX" {
		t.Fatalf("decode = %q, %v", got, err)
	}
	for name, bad := range map[string][]byte{
		"offset before block": {0x10, 'a', 5, 0, 0x00},
		"zero offset":         {0x10, 'a', 0, 0},
		"literals overrun":    {0x50, 'a'},
	} {
		if _, err := decodeLZ4Block(nil, bad, 1<<20); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
	if _, err := decodeLZ4Block(nil, block, 4); err == nil {
		t.Error("block past its limit decoded")
	}
	frame := append(append([]byte{}, lz4LegacyMagic...), 8, 0, 0, 0)
	frame = append(frame, block...)
	frame = append(frame, 13, 0, 0, 0)
	if out, err := decodeLZ4Legacy(frame); err != nil || !bytes.Equal(out, []byte("abcabcabcabcX")) {
		t.Fatalf("legacy frame = %q, %v", out, err)
	}
	frame[len(frame)-4] = 14
	if _, err := decodeLZ4Legacy(frame); err == nil {
		t.Fatal("wrong size trailer accepted")
	}
}
