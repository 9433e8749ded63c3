// Package imagetest builds small OCI images for tests: tar layers from a
// list of entries, single- and multi-platform images, OCI layouts, and a
// busybox image made from the host's Debian busybox-static binary, which is
// small enough for every guest test and real enough to run a shell.
//
// Everything is built in memory and written under directories the caller
// owns (normally t.TempDir()); nothing touches the network.
package imagetest

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BusyboxPath is the host binary BusyboxLayout packs (Debian's
// busybox-static installs it there).
const BusyboxPath = "/bin/busybox"

// BusyboxCmd is the Cmd of the busybox image.
var BusyboxCmd = []string{"/bin/sh", "-c", "echo hello from busybox"}

// RefNameAnnotation is the OCI annotation naming a manifest's tag in a
// layout's index.json; the images written here are tagged "latest".
const RefNameAnnotation = "org.opencontainers.image.ref.name"

// epoch is the modification time of every entry built here, so that the same
// input always gives the same layer digests.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Entry is one member of a layer tar: a header and, for regular files, the
// body. Size, ModTime and Format are filled in by Tar when left zero.
type Entry struct {
	tar.Header
	Body []byte
}

// Dir returns a directory entry owned by root.
func Dir(name string, mode int64) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode}}
}

// File returns a regular file owned by root.
func File(name string, mode int64, body string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, Body: []byte(body)}
}

// Symlink returns a symbolic link name -> target.
func Symlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

// Hardlink returns a hard link name -> target (a path in the image).
func Hardlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644}}
}

// Whiteout returns the OCI whiteout entry that deletes path in lower layers.
func Whiteout(path string) Entry {
	dir, base := splitPath(path)
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: dir + ".wh." + base, Mode: 0o644}}
}

// Opaque returns the OCI entry that hides the lower layers' contents of dir.
func Opaque(dir string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimSuffix(dir, "/") + "/.wh..wh..opq", Mode: 0o644}}
}

func splitPath(p string) (dir, base string) {
	i := strings.LastIndexByte(p, '/')
	return p[:i+1], p[i+1:]
}

// Tar encodes entries, in order, as an uncompressed tar stream. Xattrs go in
// PAX SCHILY.xattr records, as container tools write them.
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Header
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if h.ModTime.IsZero() {
			h.ModTime = epoch
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("imagetest: tar header %s: %v", h.Name, err)
		}
		if _, err := tw.Write(e.Body); err != nil {
			t.Fatalf("imagetest: tar body %s: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatalf("imagetest: close tar: %v", err)
	}
	return buf.Bytes()
}

// Layer returns a gzip-compressed OCI layer holding entries.
func Layer(t testing.TB, entries ...Entry) v1.Layer {
	t.Helper()
	return LayerFromTar(t, Tar(t, entries...))
}

// LayerFromTar returns a gzip-compressed OCI layer of an uncompressed tar.
func LayerFromTar(t testing.TB, tarBytes []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarBytes)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatalf("imagetest: layer: %v", err)
	}
	return l
}

// GoArch returns the Go architecture name of a Hyper node architecture
// ("x86_64" -> "amd64", "aarch64" -> "arm64"); other names pass through.
func GoArch(arch string) string {
	switch arch {
	case "x86_64":
		return "amd64"
	case "aarch64":
		return "arm64"
	}
	return arch
}

// HostArch returns the host's architecture in Hyper's spelling.
func HostArch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	}
	return runtime.GOARCH
}

// Image returns an OCI image for linux/<goarch> with the given runtime config
// and layers, bottom first.
func Image(t testing.TB, goarch string, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatalf("imagetest: append layers: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatalf("imagetest: config: %v", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = goarch
	cf.Created = v1.Time{Time: epoch}
	cf.Config = cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatalf("imagetest: set config: %v", err)
	}
	return img
}

// Index returns a multi-platform OCI index of images; each image's platform
// is read from its config.
func Index(t testing.TB, images ...v1.Image) v1.ImageIndex {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, img := range images {
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatalf("imagetest: config: %v", err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add: img,
			Descriptor: v1.Descriptor{
				Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant},
			},
		})
	}
	return idx
}

// WriteLayout writes img as an OCI image layout in dir, tagged tag, and
// returns dir. Load it as "oci:<dir>" or "oci:<dir>:<tag>".
func WriteLayout(t testing.TB, dir string, img v1.Image, tag string) string {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatalf("imagetest: layout %s: %v", dir, err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{RefNameAnnotation: tag})); err != nil {
		t.Fatalf("imagetest: write image to layout %s: %v", dir, err)
	}
	return dir
}

// BusyboxImage returns a one-layer image for the host architecture holding
// the host's static busybox: /bin/busybox, a symlink to it for every applet
// at the path busybox lists, /etc/os-release, /etc/passwd, /etc/group, /root
// and a sticky /tmp, with Cmd BusyboxCmd. It skips the test when
// /bin/busybox is missing (Debian package busybox-static).
func BusyboxImage(t testing.TB) v1.Image {
	t.Helper()
	bin, err := os.ReadFile(BusyboxPath)
	if err != nil {
		t.Skipf("imagetest: busybox image needs %s (Debian package busybox-static): %v", BusyboxPath, err)
	}
	out, err := exec.Command(BusyboxPath, "--list-full").Output()
	if err != nil {
		t.Skipf("imagetest: %s --list-full: %v (need Debian's busybox-static)", BusyboxPath, err)
	}

	dirs := map[string]bool{"bin": true, "etc": true, "root": true, "tmp": true, "proc": true, "sys": true, "dev": true, "run": true, "var": true}
	var applets []string
	for _, line := range strings.Fields(string(out)) {
		// Applets at the top level (linuxrc) and busybox itself need no link.
		if !strings.Contains(line, "/") || line == "bin/busybox" {
			continue
		}
		applets = append(applets, line)
		for d := path.Dir(line); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	sort.Strings(applets)
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList)

	var entries []Entry
	for _, d := range dirList {
		switch d {
		case "tmp":
			entries = append(entries, Dir(d, 0o1777))
		case "root":
			entries = append(entries, Dir(d, 0o700))
		default:
			entries = append(entries, Dir(d, 0o755))
		}
	}
	entries = append(entries,
		Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, Body: bin},
		File("etc/os-release", 0o644, "NAME=\"Hyper busybox\"\nID=busybox\nPRETTY_NAME=\"Hyper test image (Debian busybox-static)\"\n"),
		File("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
		File("etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n"),
		File("etc/hostname", 0o644, "busybox\n"),
	)
	for _, a := range applets {
		entries = append(entries, Symlink(a, "/bin/busybox"))
	}
	return Image(t, GoArch(HostArch()), v1.Config{
		Cmd:        BusyboxCmd,
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		WorkingDir: "/",
	}, Layer(t, entries...))
}

// BusyboxLayout writes BusyboxImage as an OCI image layout in dir (created if
// missing; normally t.TempDir()), tagged "latest", and returns the layout's
// path: load it as "oci:<path>". It skips the test when /bin/busybox is
// missing.
func BusyboxLayout(t testing.TB, dir string) (layoutPath string) {
	t.Helper()
	return WriteLayout(t, dir, BusyboxImage(t), "latest")
}
