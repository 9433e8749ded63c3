// Package guest provides what every microVM boots: the guest kernel, fetched
// from a pinned Debian package and verified against its sha256, and the
// initramfs that carries hyper-agent and the kernel modules the guest needs.
//
// The kernel is cached under a directory keyed by release and version. The
// initramfs is built once per (kernel modules, agent binary) and shared by
// every VM; a VM's own configuration travels on its config disk (guestcfg).
package guest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/hypervm/hyper/internal/config"
)

// Kernel is a guest kernel ready to boot.
type Kernel struct {
	// Release is the kernel release (uname -r).
	Release string
	// Vmlinuz is the bzImage QEMU boots; Vmlinux is the ELF kernel inside
	// it, which Firecracker boots.
	Vmlinuz string
	Vmlinux string
	// Modules is the kernel's modules directory (lib/modules/<release>).
	Modules string
}

// Provider hands out the node's guest kernel: the operator's files when the
// config names them, the pinned Debian kernel otherwise.
type Provider struct {
	// Dir caches fetched kernels and built initramfs archives.
	Dir string
	// Pin is the kernel to fetch; ignored when Override is set.
	Pin Pin
	// Override is the operator's own kernel ([kernel] vmlinuz, vmlinux,
	// modules).
	Override *Kernel
	// Apt fetches packages.
	Apt Apt
}

// NewProvider returns the provider for the host's architecture configured by
// c ([kernel] in config.toml).
func NewProvider(c config.Kernel) (*Provider, error) {
	p := &Provider{Dir: c.Dir}
	if c.Vmlinuz != "" || c.Vmlinux != "" || c.Modules != "" {
		if c.Vmlinuz == "" || c.Modules == "" {
			return nil, fmt.Errorf("config key kernel.vmlinuz and kernel.modules must be set together (vmlinux is needed only for Firecracker)")
		}
		p.Override = &Kernel{Vmlinuz: c.Vmlinuz, Vmlinux: c.Vmlinux, Modules: c.Modules, Release: filepath.Base(c.Modules)}
		return p, nil
	}
	m, err := DefaultManifest()
	if err != nil {
		return nil, err
	}
	if p.Pin, err = m.For(runtime.GOARCH); err != nil {
		return nil, err
	}
	return p, nil
}

// Kernel returns the kernel, fetching and verifying the pinned package into
// the cache when it is not there yet. A cached kernel is re-verified on every
// call: the package against its pinned sha256, each extracted file against
// the digest recorded when it was extracted.
func (p *Provider) Kernel(ctx context.Context) (*Kernel, error) {
	if p.Override != nil {
		return p.override()
	}
	dir := p.kernelDir()
	k, err := p.verifyCached(dir)
	if err == nil {
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err := p.fetch(ctx, dir); err != nil {
		return nil, err
	}
	return p.verifyCached(dir)
}

func (p *Provider) override() (*Kernel, error) {
	k := *p.Override
	for key, path := range map[string]string{"kernel.vmlinuz": k.Vmlinuz, "kernel.vmlinux": k.Vmlinux} {
		if path == "" {
			continue
		}
		if fi, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("guest kernel (config key %s): %w", key, err)
		} else if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("guest kernel (config key %s): %s is not a regular file", key, path)
		}
	}
	if fi, err := os.Stat(k.Modules); err != nil {
		return nil, fmt.Errorf("guest kernel modules (config key kernel.modules): %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("guest kernel modules (config key kernel.modules): %s is not a directory", k.Modules)
	}
	return &k, nil
}

func (p *Provider) kernelDir() string {
	return filepath.Join(p.Dir, p.Pin.Release+"_"+p.Pin.Version)
}

// stamp records what extraction produced, written last so that its presence
// means the directory is complete.
type stamp struct {
	Package string            `json:"package"`
	Version string            `json:"version"`
	SHA256  string            `json:"sha256"`
	Files   map[string]string `json:"files"` // relative path -> sha256
}

const (
	stampFile   = "kernel.json"
	debFile     = "kernel.deb"
	vmlinuzFile = "vmlinuz"
	vmlinuxFile = "vmlinux"
	modulesDir  = "modules"
)

func (p *Provider) verifyCached(dir string) (*Kernel, error) {
	data, err := os.ReadFile(filepath.Join(dir, stampFile))
	if err != nil {
		return nil, err
	}
	var st stamp
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("guest kernel cache %s: %w (remove the directory to refetch)", dir, err)
	}
	deb := filepath.Join(dir, debFile)
	if err := verifyFile(deb, p.Pin.SHA256); err != nil {
		return nil, fmt.Errorf("guest kernel %s=%s (pinned in %s): %w", p.Pin.Package, p.Pin.Version, ManifestFile, err)
	}
	for rel, sum := range st.Files {
		if err := verifyFile(filepath.Join(dir, rel), sum); err != nil {
			return nil, fmt.Errorf("guest kernel cache %s: %w (remove the directory to refetch)", dir, err)
		}
	}
	return &Kernel{
		Release: p.Pin.Release,
		Vmlinuz: filepath.Join(dir, vmlinuzFile),
		Vmlinux: filepath.Join(dir, vmlinuxFile),
		Modules: filepath.Join(dir, modulesDir, p.Pin.Release),
	}, nil
}

// MismatchError is a file whose content is not the expected one.
type MismatchError struct {
	Path, Got, Want string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("%s: sha256 is %s, expected %s", e.Path, e.Got, e.Want)
}

func verifyFile(path, want string) error {
	got, err := fileSHA256(path)
	if err != nil {
		return err
	}
	if got != want {
		return &MismatchError{Path: path, Got: got, Want: want}
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fetch downloads, verifies and unpacks the pinned package into dir, building
// it in a sibling temporary directory renamed into place at the end so a
// crash never leaves a half-extracted kernel that looks complete.
func (p *Provider) fetch(ctx context.Context, dir string) error {
	if err := os.MkdirAll(p.Dir, 0o755); err != nil {
		return fmt.Errorf("guest kernel cache: %w", err)
	}
	tmp, err := os.MkdirTemp(p.Dir, ".fetch-")
	if err != nil {
		return fmt.Errorf("guest kernel cache: %w", err)
	}
	defer os.RemoveAll(tmp)

	deb, err := p.Apt.Download(ctx, p.Pin.Package, p.Pin.Version, tmp)
	if err != nil {
		return fmt.Errorf("fetch guest kernel: %w", err)
	}
	if err := verifyFile(deb, p.Pin.SHA256); err != nil {
		return fmt.Errorf("fetch guest kernel %s=%s (pinned in %s): %w; if Debian rebuilt the package, run `%s`",
			p.Pin.Package, p.Pin.Version, ManifestFile, err, RepinTarget)
	}
	out := filepath.Join(tmp, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return err
	}
	if err := os.Rename(deb, filepath.Join(out, debFile)); err != nil {
		return err
	}
	root := filepath.Join(tmp, "root")
	if err := extractDeb(ctx, filepath.Join(out, debFile), root); err != nil {
		return fmt.Errorf("fetch guest kernel: %w", err)
	}
	vmlinuz := filepath.Join(root, "boot", "vmlinuz-"+p.Pin.Release)
	if err := os.Rename(vmlinuz, filepath.Join(out, vmlinuzFile)); err != nil {
		return fmt.Errorf("fetch guest kernel: package %s has no boot/vmlinuz-%s: %w", p.Pin.Package, p.Pin.Release, err)
	}
	if err := ExtractVmlinux(filepath.Join(out, vmlinuzFile), filepath.Join(out, vmlinuxFile)); err != nil {
		return fmt.Errorf("fetch guest kernel: %w", err)
	}
	if err := os.Mkdir(filepath.Join(out, modulesDir), 0o755); err != nil {
		return err
	}
	mods := filepath.Join(root, "lib", "modules", p.Pin.Release)
	if _, err := os.Stat(mods); err != nil {
		mods = filepath.Join(root, "usr", "lib", "modules", p.Pin.Release)
	}
	if err := os.Rename(mods, filepath.Join(out, modulesDir, p.Pin.Release)); err != nil {
		return fmt.Errorf("fetch guest kernel: package %s has no modules for %s: %w", p.Pin.Package, p.Pin.Release, err)
	}

	st := stamp{Package: p.Pin.Package, Version: p.Pin.Version, SHA256: p.Pin.SHA256, Files: map[string]string{}}
	for _, rel := range []string{vmlinuzFile, vmlinuxFile} {
		sum, err := fileSHA256(filepath.Join(out, rel))
		if err != nil {
			return err
		}
		st.Files[rel] = sum
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, stampFile), data, 0o644); err != nil {
		return err
	}
	// A concurrent fetch may have won; its result is as good as ours.
	if err := os.Rename(out, dir); err != nil {
		if _, serr := os.Stat(filepath.Join(dir, stampFile)); serr == nil {
			return nil
		}
		return fmt.Errorf("guest kernel cache: %w", err)
	}
	return nil
}
