package image_test

import (
	"archive/tar"
	"path"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/hypervm/hyper/internal/image/imagetest"
)

// modelTree is what extracting the layers in order, as the OCI image spec
// describes it, produces: the reference the ext4 is compared against. It is
// deliberately the naive algorithm (bottom-up, deleting what whiteouts
// name), independent of the loader's top-down one.
type modelTree map[string]*modelFile

type modelFile struct {
	hdr  tar.Header
	body string
	id   *int // shared by hard links
}

func (m modelTree) removeTree(p string) {
	for q := range m {
		if q == p || strings.HasPrefix(q, p+"/") {
			delete(m, q)
		}
	}
}

func (m modelTree) mkdirs(p string) {
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		if _, ok := m[d]; !ok {
			m[d] = &modelFile{hdr: tar.Header{Typeflag: tar.TypeDir, Mode: 0o755}}
		}
	}
}

// modelFlatten applies layers (bottom first) to an empty tree.
func modelFlatten(layers ...[]imagetest.Entry) modelTree {
	m := modelTree{}
	next := 0
	for _, layer := range layers {
		// Whiteouts apply to the lower layers only.
		for _, e := range layer {
			p := "/" + path.Clean(e.Name)
			dir, base := path.Split(p)
			switch {
			case base == ".wh..wh..opq":
				for q := range m {
					if strings.HasPrefix(q, dir) && q != path.Clean(dir) {
						delete(m, q)
					}
				}
			case strings.HasPrefix(base, ".wh."):
				m.removeTree(path.Join(dir, strings.TrimPrefix(base, ".wh.")))
			}
		}
		for _, e := range layer {
			p := "/" + path.Clean(e.Name)
			if strings.HasPrefix(path.Base(p), ".wh.") {
				continue
			}
			m.mkdirs(p)
			switch e.Typeflag {
			case tar.TypeDir:
				if old, ok := m[p]; ok && old.hdr.Typeflag == tar.TypeDir {
					old.hdr = e.Header
					continue
				}
				m.removeTree(p)
				m[p] = &modelFile{hdr: e.Header}
			case tar.TypeLink:
				target := m["/"+path.Clean(e.Linkname)]
				m.removeTree(p)
				m[p] = target
			default:
				m.removeTree(p)
				next++
				id := next
				m[p] = &modelFile{hdr: e.Header, body: string(e.Body), id: &id}
			}
		}
	}
	return m
}

// entries converts the model to what readTree reports.
func (m modelTree) entries() map[string]*fsEntry {
	out := map[string]*fsEntry{}
	var paths []string
	for p := range m {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	first := map[*int]string{}
	for _, p := range paths {
		f := m[p]
		h := f.hdr
		e := &fsEntry{Mode: uint32(h.Mode & 0o7777), UID: h.Uid, GID: h.Gid, Xattrs: map[string]string{}}
		switch h.Typeflag {
		case tar.TypeDir:
			e.Type = "dir"
		case tar.TypeReg:
			e.Type, e.Content = "reg", f.body
		case tar.TypeSymlink:
			e.Type, e.Target, e.Mode = "symlink", h.Linkname, 0o777
		case tar.TypeChar:
			e.Type, e.Major, e.Minor = "char", int(h.Devmajor), int(h.Devminor)
		case tar.TypeBlock:
			e.Type, e.Major, e.Minor = "block", int(h.Devmajor), int(h.Devminor)
		case tar.TypeFifo:
			e.Type = "fifo"
		}
		for k, v := range h.PAXRecords {
			if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				e.Xattrs[name] = v
			}
		}
		if f.id != nil {
			if fp, ok := first[f.id]; ok {
				e.Group = fp
				out[fp].Group = fp
			} else {
				first[f.id] = p
			}
		}
		out[p] = e
	}
	return out
}

// checkTree compares the ext4 at img with the model of layers.
func checkTree(t *testing.T, img string, layers ...[]imagetest.Entry) {
	t.Helper()
	want := describe(modelFlatten(layers...).entries())
	got := describe(readTree(t, img))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ext4 tree differs from the flattened layers (-want +got):\n%s", diff)
	}
}

func describe(tree map[string]*fsEntry) map[string]string {
	out := make(map[string]string, len(tree))
	for p, e := range tree {
		out[p] = e.String()
	}
	return out
}
