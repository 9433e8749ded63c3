package imagetest_test

import (
	"archive/tar"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/hypervm/hyper/internal/image/imagetest"
)

func TestBusyboxLayout(t *testing.T) {
	dir := imagetest.BusyboxLayout(t, t.TempDir())

	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatalf("read layout: %v", err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatalf("index: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatalf("index manifest: %v", err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations[imagetest.RefNameAnnotation] != "latest" {
		t.Fatalf("index.json manifests = %+v, want one tagged latest", im.Manifests)
	}
	img, err := p.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatalf("image: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	if cf.Architecture != imagetest.GoArch(imagetest.HostArch()) || !slices.Equal(cf.Config.Cmd, imagetest.BusyboxCmd) {
		t.Errorf("config arch=%q cmd=%q", cf.Architecture, cf.Config.Cmd)
	}

	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatalf("uncompressed: %v", err)
	}
	defer rc.Close()
	got := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read layer: %v", err)
		}
		got[h.Name] = h
	}
	for _, name := range []string{"bin/sh", "bin/echo", "bin/cat", "bin/uname", "bin/sleep"} {
		if h := got[name]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "/bin/busybox" {
			t.Errorf("%s = %+v, want symlink to /bin/busybox", name, h)
		}
	}
	if h := got["bin/busybox"]; h == nil || h.Typeflag != tar.TypeReg || h.Mode != 0o755 || h.Size < 100<<10 {
		t.Errorf("bin/busybox = %+v, want a 0755 binary", h)
	}
	if h := got["tmp"]; h == nil || h.Mode != 0o1777 {
		t.Errorf("tmp = %+v, want mode 1777", h)
	}
	for _, name := range []string{"etc/os-release", "etc/passwd", "etc/group"} {
		if got[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
}
