package guest

import (
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// ManifestFile is the manifest's path relative to the repository root; error
// messages name it so an operator knows where a pin lives.
const ManifestFile = "internal/guest/kernels.json"

// RepinTarget is the make target that re-pins the manifest to the kernel the
// Debian mirror serves now.
const RepinTarget = "make repin-kernel"

//go:embed kernels.json
var manifestJSON []byte

// Manifest is the set of pinned guest kernels, one per architecture.
type Manifest struct {
	Comment string `json:"comment,omitempty"`
	Kernels []Pin  `json:"kernels"`
}

// Pin is one pinned Debian kernel package.
type Pin struct {
	// Arch is the Go architecture name (runtime.GOARCH).
	Arch string `json:"arch"`
	// MetaPackage is the unversioned package that tracks the current kernel
	// (linux-image-cloud-amd64); re-pinning follows its dependency.
	MetaPackage string `json:"meta_package"`
	// Package and Version name the exact .deb; SHA256 is its digest.
	Package string `json:"package"`
	Version string `json:"version"`
	SHA256  string `json:"sha256"`
	// Release is the kernel release (uname -r), the name of its modules
	// directory.
	Release string `json:"release"`
}

// DefaultManifest is the manifest compiled into the binary.
func DefaultManifest() (*Manifest, error) {
	return ParseManifest(manifestJSON)
}

// ParseManifest decodes and validates a manifest.
func ParseManifest(data []byte) (*Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("kernel manifest %s: %w", ManifestFile, err)
	}
	seen := map[string]bool{}
	for i, p := range m.Kernels {
		if err := p.validate(); err != nil {
			return nil, fmt.Errorf("kernel manifest %s: kernels[%d]: %w", ManifestFile, i, err)
		}
		if seen[p.Arch] {
			return nil, fmt.Errorf("kernel manifest %s: kernels[%d]: arch %q pinned twice", ManifestFile, i, p.Arch)
		}
		seen[p.Arch] = true
	}
	return &m, nil
}

// For returns the pin for arch.
func (m *Manifest) For(arch string) (Pin, error) {
	for _, p := range m.Kernels {
		if p.Arch == arch {
			return p, nil
		}
	}
	return Pin{}, fmt.Errorf("kernel manifest %s: no kernel pinned for arch %q; set [kernel] vmlinuz, vmlinux and modules in the config", ManifestFile, arch)
}

// Encode renders the manifest as the file `make repin-kernel` writes.
func (m *Manifest) Encode() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// WriteFile atomically replaces path with the encoded manifest.
func (m *Manifest) WriteFile(path string) error {
	b, err := m.Encode()
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func (p Pin) validate() error {
	switch {
	case p.Arch == "":
		return fmt.Errorf("arch is empty")
	case !validDebName(p.Package):
		return fmt.Errorf("package %q is not a Debian package name", p.Package)
	case !validDebName(p.MetaPackage):
		return fmt.Errorf("meta_package %q is not a Debian package name", p.MetaPackage)
	case !validDebVersion(p.Version):
		return fmt.Errorf("version %q is not a Debian version", p.Version)
	case p.Release == "" || strings.ContainsAny(p.Release, "/ ") || p.Release == "." || p.Release == "..":
		return fmt.Errorf("release %q is not a kernel release name", p.Release)
	}
	if b, err := hex.DecodeString(p.SHA256); err != nil || len(b) != 32 {
		return fmt.Errorf("sha256 %q is not 64 hex digits", p.SHA256)
	}
	return nil
}

// Debian policy 5.6.1: lower-case alphanumerics and + - . , at least two
// characters, starting with an alphanumeric.
func validDebName(s string) bool {
	if len(s) < 2 || !isAlnumLower(s[0]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnumLower(c) && c != '+' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

// Debian policy 5.6.12, loosely: [epoch:]upstream[-revision] from a safe
// alphabet. It is passed to apt-get as one argv element, never to a shell.
func validDebVersion(s string) bool {
	if s == "" || !(s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isAlnumLower(c) && !(c >= 'A' && c <= 'Z') && !strings.ContainsRune(".+-~:", rune(c)) {
			return false
		}
	}
	return true
}

func isAlnumLower(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

// DebFileName is the file name `apt-get download` gives the pinned package
// (an epoch's colon is escaped as %3a).
func (p Pin) DebFileName() string {
	return fmt.Sprintf("%s_%s_%s.deb", p.Package, strings.ReplaceAll(p.Version, ":", "%3a"), p.Arch)
}
