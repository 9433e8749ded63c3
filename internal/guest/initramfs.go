package guest

import (
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
)

// Initramfs is a built shared initramfs: /init (hyper-agent), the kernel
// modules the guest loads and their modules.dep, and nothing else.
type Initramfs struct {
	// Path is the archive; Key identifies its inputs (kernel modules and
	// agent binary).
	Path string
	Key  string
}

// InitramfsOptions tune BuildInitramfs.
type InitramfsOptions struct {
	// Modules overrides GuestModules.
	Modules []string
	// Gzip compresses the shared archive. Off by default: QEMU and
	// Firecracker copy the initrd into guest memory at memory speed, while
	// gunzip in the guest costs far more than the saved copy, most of all
	// under TCG.
	Gzip bool
}

// InitramfsDir is the provider's cache of built archives, below its
// directory (kernel.dir). The setuid helper takes a Firecracker VM's
// initramfs from there (suid.InitramfsDir must match).
const InitramfsDir = "initramfs"

// Initramfs returns the shared initramfs for k and the agent binary at
// agent, cached under the provider's directory.
func (p *Provider) Initramfs(k *Kernel, agent string, opt InitramfsOptions) (*Initramfs, error) {
	return BuildInitramfs(filepath.Join(p.Dir, InitramfsDir), k, agent, opt)
}

// BuildInitramfs returns the shared initramfs for k and agent from cacheDir,
// building it there first if no archive with the same inputs exists.
func BuildInitramfs(cacheDir string, k *Kernel, agent string, opt InitramfsOptions) (*Initramfs, error) {
	want := opt.Modules
	if want == nil {
		want = GuestModules
	}
	mods, err := ResolveModules(k.Modules, want)
	if err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	agentSum, err := fileSHA256(agent)
	if err != nil {
		return nil, fmt.Errorf("build initramfs: agent binary: %w", err)
	}
	key, err := initramfsKey(k, mods, agentSum, opt.Gzip)
	if err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	out := filepath.Join(cacheDir, key+".cpio")
	if _, err := os.Stat(out); err == nil {
		return &Initramfs{Path: out, Key: key}, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	tmp, err := os.CreateTemp(cacheDir, ".build-*")
	if err != nil {
		return nil, fmt.Errorf("build initramfs: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := writeShared(tmp, k, mods, agent, opt.Gzip); err != nil {
		return nil, fmt.Errorf("build initramfs %s: %w", out, err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("build initramfs %s: %w", out, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return nil, fmt.Errorf("build initramfs %s: %w", out, err)
	}
	return &Initramfs{Path: out, Key: key}, nil
}

// initramfsKey hashes every input of the archive, so a changed module, agent
// or layout never reuses a stale build.
func initramfsKey(k *Kernel, mods []Module, agentSum string, gz bool) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "hyper-initramfs v4\nrelease %s\ngzip %t\nagent %s\n", k.Release, gz, agentSum)
	for _, m := range mods {
		sum, err := fileSHA256(filepath.Join(k.Modules, m.Path))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "module %s %s\n", m.Path, sum)
	}
	return hex.EncodeToString(h.Sum(nil))[:32], nil
}

func writeShared(f *os.File, k *Kernel, mods []Module, agent string, gz bool) error {
	bw := bufio.NewWriterSize(f, 1<<20)
	var w io.Writer = bw
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(bw)
		w = zw
	}
	c := NewCPIOWriter(w)
	modRoot := path.Join("lib/modules", k.Release)
	dirs := map[string]bool{}
	var mkdirs func(string) error
	mkdirs = func(d string) error {
		if d == "." || d == "/" || dirs[d] {
			return nil
		}
		if err := mkdirs(path.Dir(d)); err != nil {
			return err
		}
		dirs[d] = true
		return c.Dir(d, 0o755)
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "newroot"} {
		if err := mkdirs(d); err != nil {
			return err
		}
	}
	// The kernel opens /dev/console for init's stdio before /init runs,
	// and devtmpfs is not mounted in an initramfs yet.
	if err := c.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := addFile(c, "init", 0o755, agent); err != nil {
		return err
	}
	for _, m := range mods {
		name := path.Join(modRoot, filepath.ToSlash(m.Path))
		if err := mkdirs(path.Dir(name)); err != nil {
			return err
		}
		if err := addFile(c, name, 0o644, filepath.Join(k.Modules, m.Path)); err != nil {
			return err
		}
	}
	if err := c.Bytes(path.Join(modRoot, "modules.dep"), 0o644, ModulesDep(mods)); err != nil {
		return err
	}
	if err := c.Bytes(path.Join(modRoot, "modules.alias"), 0o644, ModulesAlias(mods)); err != nil {
		return err
	}
	if err := c.Close(); err != nil {
		return err
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return padTo4(f)
}

func addFile(c *CPIOWriter, name string, perm os.FileMode, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	return c.File(name, perm, f, fi.Size())
}

// padTo4 zero-pads f to a multiple of 4 bytes: the kernel looks for an
// appended uncompressed archive only at 4-byte aligned offsets and skips
// the zeros before it.
func padTo4(f *os.File) error {
	off, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	if r := off % 4; r != 0 {
		_, err = f.Write(make([]byte, 4-r))
	}
	return err
}
