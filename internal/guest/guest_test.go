package guest_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hypervm/hyper/internal/config"
	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/guest/guesttest"
)

// entry is one member of a newc archive, as a test reads it back.
type entry struct {
	Name  string
	Mode  uint32
	Data  string
	Rdev  [2]uint32
	Align bool // header started at a 4-byte aligned offset
}

// readNewc parses concatenated newc archives (gzip-compressed or not),
// as the kernel's initramfs unpacker does, skipping zero padding between
// them.
func readNewc(t *testing.T, data []byte) []entry {
	t.Helper()
	var out []entry
	off := 0
	for off < len(data) {
		if data[off] == 0 {
			off++
			continue
		}
		if bytes.HasPrefix(data[off:], []byte{0x1f, 0x8b}) {
			// A bytes.Reader is an io.ByteReader, so gzip reads exactly
			// one member and no further.
			br := bytes.NewReader(data[off:])
			zr, err := gzip.NewReader(br)
			if err != nil {
				t.Fatal(err)
			}
			zr.Multistream(false)
			plain, err := io.ReadAll(zr)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, readNewc(t, plain)...)
			off += len(data[off:]) - br.Len()
			continue
		}
		if string(data[off:off+6]) != "070701" {
			t.Fatalf("offset %d: bad magic %q", off, data[off:off+6])
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(data[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(v)
		}
		mode, size, rmaj, rmin, namesize := field(1), field(6), field(9), field(10), field(11)
		nameStart := off + 110
		name := string(data[nameStart : nameStart+int(namesize)-1])
		dataStart := align4(nameStart + int(namesize))
		e := entry{Name: name, Mode: mode, Rdev: [2]uint32{rmaj, rmin}, Align: off%4 == 0,
			Data: string(data[dataStart : dataStart+int(size)])}
		off = align4(dataStart + int(size))
		if name == "TRAILER!!!" {
			continue
		}
		out = append(out, e)
	}
	return out
}

func align4(n int) int { return (n + 3) &^ 3 }

func TestCPIOWriterLayout(t *testing.T) {
	var b bytes.Buffer
	w := guest.NewCPIOWriter(&b)
	must(t, w.Dir("/etc", 0o755))
	must(t, w.Bytes("etc/a", 0o644, []byte("abc")))
	must(t, w.Bytes("etc/empty", 0o600, nil))
	must(t, w.CharDev("dev/console", 0o600, 5, 1))
	must(t, w.Close())
	if b.Len()%4 != 0 {
		t.Fatalf("archive is %d bytes, not 4-aligned", b.Len())
	}
	got := readNewc(t, b.Bytes())
	want := []entry{
		{Name: "etc", Mode: 0o040755, Align: true},
		{Name: "etc/a", Mode: 0o100644, Data: "abc", Align: true},
		{Name: "etc/empty", Mode: 0o100600, Align: true},
		{Name: "dev/console", Mode: 0o020600, Rdev: [2]uint32{5, 1}, Align: true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("archive (-want +got):\n%s", diff)
	}
	if err := w.Bytes("late", 0o644, nil); err == nil {
		t.Fatal("write after Close succeeded")
	}
	if err := guest.NewCPIOWriter(io.Discard).Bytes("", 0o644, nil); err == nil {
		t.Fatal("empty name accepted")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestDefaultManifestPinsAmd64(t *testing.T) {
	m, err := guest.DefaultManifest()
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.For("amd64")
	if err != nil {
		t.Fatal(err)
	}
	if p.MetaPackage != "linux-image-cloud-amd64" || !strings.HasPrefix(p.Package, "linux-image-") || p.Release != strings.TrimPrefix(p.Package, "linux-image-") {
		t.Fatalf("unexpected pin %+v", p)
	}
	if _, err := m.For("riscv64"); err == nil || !strings.Contains(err.Error(), "[kernel]") {
		t.Fatalf("For(riscv64) = %v, want an error pointing at [kernel]", err)
	}
}

func TestParseManifestRejects(t *testing.T) {
	good := `{"arch":"amd64","meta_package":"linux-image-cloud-amd64","package":"linux-image-6.1.0-50-cloud-amd64","version":"6.1.176-1","release":"6.1.0-50-cloud-amd64","sha256":"` + strings.Repeat("ab", 32) + `"}`
	for name, tc := range map[string]struct{ json, want string }{
		"unknown field": {`{"kernels":[],"extra":1}`, "unknown field"},
		"short sha":     {`{"kernels":[` + strings.Replace(good, strings.Repeat("ab", 32), "abc", 1) + `]}`, "sha256"},
		"bad version":   {`{"kernels":[` + strings.Replace(good, "6.1.176-1", "6.1;rm -rf", 1) + `]}`, "version"},
		"bad release":   {`{"kernels":[` + strings.Replace(good, `"release":"6.1.0-50-cloud-amd64"`, `"release":"../x"`, 1) + `]}`, "release"},
		"arch twice":    {`{"kernels":[` + good + `,` + good + `]}`, "twice"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := guest.ParseManifest([]byte(tc.json))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := guest.ParseManifest([]byte(`{"kernels":[` + good + `]}`)); err != nil {
		t.Fatal(err)
	}
}

func TestResolveModulesDebianKernel(t *testing.T) {
	k := guesttest.Kernel(t)
	mods, err := guest.ResolveModules(k.Modules, guest.GuestModules)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	byName := map[string]guest.Module{}
	for _, m := range mods {
		names = append(names, m.Name)
		byName[m.Name] = m
	}
	sort.Strings(names)
	// ext4 is built into Debian's cloud kernel; the rest are modules.
	want := []string{"failover", "net_failover", "overlay", "virtio", "virtio_blk", "virtio_console",
		"virtio_mmio", "virtio_net", "virtio_ring", "vmw_vsock_virtio_transport",
		"vmw_vsock_virtio_transport_common", "vsock"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Fatalf("modules (-want +got):\n%s", diff)
	}
	if deps := byName["virtio_mmio"].Deps; !contains(deps, "virtio") || !contains(deps, "virtio_ring") {
		t.Fatalf("virtio_mmio deps = %v", deps)
	}
	dep := string(guest.ModulesDep(mods))
	if !strings.Contains(dep, "kernel/drivers/virtio/virtio_mmio.ko: ") {
		t.Fatalf("modules.dep lacks virtio_mmio:\n%s", dep)
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// partialModules copies k's modules directory except the named .ko files.
func partialModules(t *testing.T, k *guest.Kernel, omit ...string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), k.Release)
	err := filepath.Walk(k.Modules, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(k.Modules, p)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if !strings.HasSuffix(p, ".ko") && !strings.HasPrefix(rel, "modules.builtin") {
			return nil
		}
		if contains(omit, strings.TrimSuffix(filepath.Base(p), ".ko")) {
			return nil
		}
		if !strings.Contains(rel, "virtio") && !strings.Contains(rel, "vsock") && !strings.Contains(rel, "overlay") &&
			!strings.Contains(rel, "failover") && !strings.HasPrefix(rel, "modules.builtin") {
			return nil
		}
		return os.Link(p, filepath.Join(dst, rel))
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestMissingModuleIsAClearError(t *testing.T) {
	k := guesttest.Kernel(t)
	mods := partialModules(t, k, "virtio_blk")
	kk := *k
	kk.Modules = mods
	cache := t.TempDir()
	_, err := guest.BuildInitramfs(cache, &kk, os.Args[0], guest.InitramfsOptions{})
	if err == nil {
		t.Fatal("initramfs built without virtio_blk.ko")
	}
	for _, want := range []string{"virtio_blk", mods, "not built in"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// A missing dependency names the module that needs it.
	_, err = guest.ResolveModules(partialModules(t, k, "virtio_ring"), []string{"virtio_mmio"})
	if err == nil || !strings.Contains(err.Error(), "virtio_ring (needed by virtio") {
		t.Errorf("missing dependency: err = %v", err)
	}
	if entries, _ := os.ReadDir(cache); len(entries) != 0 {
		t.Errorf("failed build left %d files in the cache", len(entries))
	}
}

func TestInitramfsAndInitrd(t *testing.T) {
	k := guesttest.Kernel(t)
	cache := t.TempDir()
	agent := filepath.Join(t.TempDir(), "agent")
	must(t, os.WriteFile(agent, []byte("#!agent v1"), 0o755))

	fs1, err := guest.BuildInitramfs(cache, k, agent, guest.InitramfsOptions{})
	must(t, err)
	fi1, err := os.Stat(fs1.Path)
	must(t, err)
	again, err := guest.BuildInitramfs(cache, k, agent, guest.InitramfsOptions{})
	must(t, err)
	fi2, _ := os.Stat(again.Path)
	if again.Path != fs1.Path || !os.SameFile(fi1, fi2) || !fi1.ModTime().Equal(fi2.ModTime()) {
		t.Fatal("second build with the same inputs did not reuse the cached archive")
	}
	must(t, os.WriteFile(agent, []byte("#!agent v2"), 0o755))
	fs2, err := guest.BuildInitramfs(cache, k, agent, guest.InitramfsOptions{})
	must(t, err)
	if fs2.Key == fs1.Key {
		t.Fatal("a new agent binary reused the old archive")
	}

	data, err := os.ReadFile(fs2.Path)
	must(t, err)
	files := map[string]entry{}
	for _, e := range readNewc(t, data) {
		if !e.Align {
			t.Errorf("%s: header not 4-byte aligned", e.Name)
		}
		files[e.Name] = e
	}
	if files["init"].Data != "#!agent v2" || files["init"].Mode != 0o100755 {
		t.Errorf("init = %+v", files["init"])
	}
	if c := files["dev/console"]; c.Mode != 0o020600 || c.Rdev != [2]uint32{5, 1} {
		t.Errorf("dev/console = %+v", c)
	}
	dep := files["lib/modules/"+k.Release+"/modules.dep"].Data
	for _, line := range strings.Split(strings.TrimSpace(dep), "\n") {
		ko, _, _ := strings.Cut(line, ":")
		if _, ok := files["lib/modules/"+k.Release+"/"+ko]; !ok {
			t.Errorf("modules.dep lists %s, which the archive lacks", ko)
		}
	}
}

func TestProviderRejectsMismatchedKernel(t *testing.T) {
	guesttest.Kernel(t) // ensures apt and the package lists work
	m, err := guest.DefaultManifest()
	must(t, err)
	pin, err := m.For("amd64")
	must(t, err)
	pin.SHA256 = strings.Repeat("0", 64)
	dir := t.TempDir()
	p := &guest.Provider{Dir: dir, Pin: pin}
	_, err = p.Kernel(context.Background())
	var mm *guest.MismatchError
	if !errors.As(err, &mm) || mm.Want != pin.SHA256 || !strings.Contains(err.Error(), pin.SHA256) {
		t.Fatalf("err = %v, want a mismatch naming the expected hash", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("failed fetch left %v in the cache", entries)
	}
}

func TestProviderRejectsTamperedCache(t *testing.T) {
	k := guesttest.Kernel(t)
	p, err := guest.NewProvider(config.Kernel{Dir: guesttest.CacheDir()})
	must(t, err)
	// A copy of the real cache with one byte of vmlinuz changed.
	dir := t.TempDir()
	src := filepath.Dir(k.Vmlinuz)
	dst := filepath.Join(dir, filepath.Base(src))
	must(t, os.MkdirAll(dst, 0o755))
	for _, f := range []string{"kernel.json", "kernel.deb", "vmlinux", "modules"} {
		must(t, os.Symlink(filepath.Join(src, f), filepath.Join(dst, f)))
	}
	data, err := os.ReadFile(k.Vmlinuz)
	must(t, err)
	data[len(data)/2] ^= 1
	must(t, os.WriteFile(filepath.Join(dst, "vmlinuz"), data, 0o644))
	p.Dir = dir
	_, err = p.Kernel(context.Background())
	var mm *guest.MismatchError
	if !errors.As(err, &mm) || mm.Path != filepath.Join(dst, "vmlinuz") {
		t.Fatalf("err = %v, want a mismatch naming %s", err, filepath.Join(dst, "vmlinuz"))
	}
}

func TestProviderVersionNotServed(t *testing.T) {
	guesttest.Kernel(t)
	m, err := guest.DefaultManifest()
	must(t, err)
	pin, _ := m.For("amd64")
	pin.Version = "0.0.1-1"
	p := &guest.Provider{Dir: t.TempDir(), Pin: pin}
	_, err = p.Kernel(context.Background())
	if !errors.Is(err, guest.ErrNotServed) || !strings.Contains(err.Error(), guest.RepinTarget) {
		t.Fatalf("err = %v, want ErrNotServed naming %q", err, guest.RepinTarget)
	}
}

func TestProviderOverride(t *testing.T) {
	_, err := guest.NewProvider(config.Kernel{Vmlinuz: "/x/vmlinuz"})
	if err == nil || !strings.Contains(err.Error(), "kernel.modules") {
		t.Fatalf("vmlinuz without modules: %v", err)
	}
	mods := t.TempDir()
	p, err := guest.NewProvider(config.Kernel{Vmlinuz: "/nonexistent/vmlinuz", Modules: mods})
	must(t, err)
	_, err = p.Kernel(context.Background())
	if err == nil || !strings.Contains(err.Error(), "kernel.vmlinuz") || !strings.Contains(err.Error(), "/nonexistent/vmlinuz") {
		t.Fatalf("missing override: %v", err)
	}
	vmlinuz := filepath.Join(t.TempDir(), "vmlinuz")
	must(t, os.WriteFile(vmlinuz, nil, 0o644))
	p, _ = guest.NewProvider(config.Kernel{Vmlinuz: vmlinuz, Modules: mods})
	k, err := p.Kernel(context.Background())
	must(t, err)
	if k.Vmlinuz != vmlinuz || k.Modules != mods || k.Release != filepath.Base(mods) {
		t.Fatalf("override kernel = %+v", k)
	}
}
