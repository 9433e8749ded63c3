package image

import (
	"archive/tar"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	xattrPAXPrefix = "SCHILY.xattr."
)

// flattener merges layer tars into one tar stream in which every path of
// the final root filesystem appears exactly once, as tar2ext4 needs: its
// writer can neither delete a file nor rewrite one whose data is written.
//
// Layers are read from the top down, so the first entry seen for a path is
// the visible one and everything a whiteout, an opaque directory or an upper
// entry hides is simply skipped. Two consequences are handled here:
//
//   - A hard link may name a target that comes later in the stream (in a
//     lower layer). Links are held back and written after everything else.
//   - A hard link's target may be hidden in the final tree (replaced or
//     deleted by a higher layer) while the link stays visible. The link then
//     needs the target's content as it was in the link's layer: the first
//     lower entry for that path carries it, and is written under the link's
//     own name. If that entry came earlier in the link's own layer, it has
//     already gone by; the layer is read again at the end (rare).
//
// Nothing is ever resolved through a symlink: an entry below a non-directory
// of its own layer, or a non-directory in a lower layer that upper entries
// were written below, is refused with ErrUnsafeEntry.
type flattener struct {
	out   *tar.Writer
	layer int // index of the layer being read, 0 = bottom

	nodes     map[string]*node
	whiteouts map[string]int // path -> highest layer whose whiteout deletes it below
	opaques   map[string]int // dir -> highest layer that made it opaque

	links   map[string]*pendingLink   // by link name, not yet written
	waiting map[string][]*pendingLink // links whose content is not yet seen, by target, in order
	order   []string                  // link names in the order seen
	skipped map[string]string         // files hidden in the current layer -> name written as, or ""
	rereads []reread
	buf     []byte // copy buffer for file contents
}

type node struct {
	layer    int
	typ      byte
	explicit bool // false for a directory made only as a parent
}

// pendingLink is a hard link held back until its target is in the tree.
type pendingLink struct {
	name, target string
	layer        int // the target is the one visible at this layer
}

// reread asks for the entry src of layer to be written as dst.
type reread struct {
	layer    int
	src, dst string
}

func newFlattener(out *tar.Writer) *flattener {
	return &flattener{
		out:       out,
		nodes:     map[string]*node{"": {layer: -1, typ: tar.TypeDir}},
		whiteouts: map[string]int{},
		opaques:   map[string]int{},
		links:     map[string]*pendingLink{},
		waiting:   map[string][]*pendingLink{},
		buf:       make([]byte, 256<<10),
	}
}

// cleanName turns a tar path into a root-relative path ("" is the root) and
// refuses absolute paths and paths that climb out with "..".
func cleanName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", errorf(ErrUnsafeEntry, "entry %q: absolute path", name)
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", errorf(ErrUnsafeEntry, "entry %q: path escapes the root", name)
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

// parent returns the parent of a cleaned path ("" for top-level entries).
func parent(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

// startLayer begins reading layer i; layers must come from the top down.
func (f *flattener) startLayer(i int) {
	f.layer = i
	f.skipped = map[string]string{}
}

// add processes one entry of the current layer; body is its content.
func (f *flattener) add(h *tar.Header, body io.Reader) error {
	switch h.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeReg, tar.TypeLink, tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo:
	default:
		return fmt.Errorf("entry %q: unsupported tar entry type %q", h.Name, h.Typeflag)
	}
	name, err := cleanName(h.Name)
	if err != nil {
		return err
	}
	if base := path.Base(name); strings.HasPrefix(base, whiteoutPrefix) {
		dir := parent(name)
		if base == opaqueMarker {
			if _, ok := f.opaques[dir]; !ok {
				f.opaques[dir] = f.layer
			}
		} else if target := path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix)); target != dir {
			if _, ok := f.whiteouts[target]; !ok {
				f.whiteouts[target] = f.layer
			}
		}
		return nil
	}

	hidden, err := f.hidden(name)
	if err != nil {
		return err
	}
	n := f.nodes[name]
	if !hidden && n != nil && n.explicit {
		if n.layer > f.layer {
			hidden = true
		} else if n.typ != tar.TypeDir || h.Typeflag != tar.TypeDir {
			return fmt.Errorf("entry %q appears twice in one layer", h.Name)
		}
	}
	if hidden {
		return f.skip(name, h, body)
	}
	if n != nil && !n.explicit && h.Typeflag != tar.TypeDir {
		return errorf(ErrUnsafeEntry, "entry %q: a %s that entries of a higher layer, or later in this one, are written through", h.Name, typeName(h.Typeflag))
	}
	if err := f.makeParents(name); err != nil {
		return err
	}

	if h.Typeflag == tar.TypeLink {
		target, err := cleanName(h.Linkname)
		if err != nil {
			return err
		}
		if target == name || target == "" {
			return fmt.Errorf("hard link %q: bad target %q", h.Name, h.Linkname)
		}
		f.nodes[name] = &node{layer: f.layer, typ: tar.TypeLink, explicit: true}
		pl := &pendingLink{name: name, target: target, layer: f.layer}
		f.links[name] = pl
		f.order = append(f.order, name)
		f.bindLinks(name, name)
		f.settle(pl)
		return nil
	}
	if err := f.emit(name, h, body); err != nil {
		return err
	}
	f.nodes[name] = &node{layer: f.layer, typ: h.Typeflag, explicit: true}
	f.bindLinks(name, name)
	return nil
}

// hidden reports whether name in the current layer is deleted or replaced
// by a higher layer, and refuses writing through a non-directory of the
// same layer.
func (f *flattener) hidden(name string) (bool, error) {
	if name == "" {
		return false, nil
	}
	if w, ok := f.whiteouts[name]; ok && w > f.layer {
		return true, nil
	}
	for p := parent(name); ; p = parent(p) {
		if w, ok := f.whiteouts[p]; ok && w > f.layer && p != "" {
			return true, nil
		}
		if o, ok := f.opaques[p]; ok && o > f.layer {
			return true, nil
		}
		if n := f.nodes[p]; n != nil && n.explicit && n.typ != tar.TypeDir {
			if n.layer > f.layer {
				return true, nil
			}
			return false, errorf(ErrUnsafeEntry, "entry %q: written through the %s %q", name, typeName(n.typ), p)
		}
		if p == "" {
			return false, nil
		}
	}
}

// skip handles an entry hidden from the final tree. It may still be the
// content a visible hard link of a higher layer refers to.
func (f *flattener) skip(name string, h *tar.Header, body io.Reader) error {
	// Extracting the layers in order would have made the entry's parents
	// even though a higher layer deletes the entry itself.
	if hidden, err := f.hidden(parent(name)); err != nil {
		return err
	} else if !hidden && name != "" {
		if err := f.makeParents(name); err != nil {
			return err
		}
	}
	if h.Typeflag == tar.TypeDir {
		return nil
	}
	if h.Typeflag == tar.TypeLink {
		// A hidden link hands what it links to on to the links that want it.
		target, err := cleanName(h.Linkname)
		if err != nil {
			return err
		}
		waiting := f.waiting[name]
		delete(f.waiting, name)
		for _, pl := range waiting {
			pl.target, pl.layer = target, f.layer
			f.settle(pl)
		}
		return nil
	}
	waiting := f.waiting[name]
	if len(waiting) == 0 {
		f.skipped[name] = ""
		return nil
	}
	// The first link waiting for this content gets it; the others link to
	// that one.
	first := waiting[0]
	if err := f.emit(first.name, h, body); err != nil {
		return err
	}
	delete(f.links, first.name)
	f.nodes[first.name].typ = h.Typeflag
	f.skipped[name] = first.name
	delete(f.waiting, name)
	for _, pl := range waiting[1:] {
		pl.target = first.name
	}
	return nil
}

// settle binds a link whose target, as of the link's layer, was already
// seen in the current layer: written to the tree, written under another
// name, or gone by hidden (then it is read again at the end). Other links
// wait for their target in a lower layer or in the final tree.
func (f *flattener) settle(pl *pendingLink) {
	if pl.layer == f.layer {
		if as, ok := f.skipped[pl.target]; ok {
			if as != "" {
				pl.target = as
			} else {
				f.rereads = append(f.rereads, reread{layer: f.layer, src: pl.target, dst: pl.name})
			}
			return
		}
		if n := f.nodes[pl.target]; n != nil && n.explicit && n.layer == f.layer {
			return
		}
	}
	f.waiting[pl.target] = append(f.waiting[pl.target], pl)
}

// bindLinks settles the links waiting for target: the content they refer to
// is now in the tree as final (a file, or a link resolved in turn).
func (f *flattener) bindLinks(target, final string) {
	for _, pl := range f.waiting[target] {
		pl.target = final
	}
	delete(f.waiting, target)
}

// makeParents writes any missing parent directory of name. It gets the
// defaults of a fresh directory (root, 0755) until a lower layer's entry for
// it supplies the real metadata.
func (f *flattener) makeParents(name string) error {
	if name == "" {
		return nil
	}
	p := parent(name)
	if f.nodes[p] != nil {
		return nil
	}
	if err := f.makeParents(p); err != nil {
		return err
	}
	if err := f.out.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: p, Mode: 0o755, Format: tar.FormatPAX}); err != nil {
		return fmt.Errorf("write directory %s: %w", p, err)
	}
	f.nodes[p] = &node{layer: f.layer, typ: tar.TypeDir}
	return nil
}

// emit writes one entry under name with only what the ext4 keeps: type,
// mode, owner, times, device numbers, link target, xattrs and content.
func (f *flattener) emit(name string, h *tar.Header, body io.Reader) error {
	out := &tar.Header{
		Typeflag:   h.Typeflag,
		Name:       name,
		Linkname:   h.Linkname,
		Mode:       h.Mode & 0o7777,
		Uid:        h.Uid,
		Gid:        h.Gid,
		ModTime:    h.ModTime,
		AccessTime: h.AccessTime,
		ChangeTime: h.ChangeTime,
		Devmajor:   h.Devmajor,
		Devminor:   h.Devminor,
		Format:     tar.FormatPAX,
	}
	if name == "" {
		out.Name = "."
	}
	if h.Typeflag == tar.TypeReg {
		out.Size = h.Size
	}
	for k, v := range h.PAXRecords {
		if strings.HasPrefix(k, xattrPAXPrefix) {
			if out.PAXRecords == nil {
				out.PAXRecords = map[string]string{}
			}
			out.PAXRecords[k] = v
		}
	}
	// PAX stores times exactly; tar2ext4 keeps whole seconds.
	out.ModTime = out.ModTime.Truncate(time.Second)
	out.AccessTime = out.AccessTime.Truncate(time.Second)
	out.ChangeTime = out.ChangeTime.Truncate(time.Second)
	if err := f.out.WriteHeader(out); err != nil {
		return fmt.Errorf("write entry %s: %w", name, err)
	}
	if out.Size > 0 {
		// Neither tar type exposes a fast path to io.Copy, which would
		// allocate a buffer for every file.
		if _, err := io.CopyBuffer(f.out, body, f.buf); err != nil {
			return fmt.Errorf("copy %s: %w", name, err)
		}
	}
	return nil
}

// rereadWanted lists what must be fetched again from layer i.
func (f *flattener) rereadWanted(i int) map[string][]string {
	want := map[string][]string{}
	for _, r := range f.rereads {
		if r.layer == i {
			want[r.src] = append(want[r.src], r.dst)
		}
	}
	return want
}

// addReread writes a re-read entry of layer i under the names that want it;
// the first gets the content, the others become links to it.
func (f *flattener) addReread(dsts []string, h *tar.Header, body io.Reader) error {
	first := dsts[0]
	if f.links[first] != nil {
		if err := f.emit(first, h, body); err != nil {
			return err
		}
		delete(f.links, first)
		f.nodes[first].typ = h.Typeflag
	}
	for _, d := range dsts[1:] {
		if pl := f.links[d]; pl != nil {
			pl.target = first
		}
	}
	return nil
}

// finish writes the held-back hard links, each to the final path holding
// its content.
func (f *flattener) finish() error {
	for _, ln := range f.order {
		pl := f.links[ln]
		if pl == nil {
			continue
		}
		target, err := f.resolveLink(pl)
		if err != nil {
			return err
		}
		if err := f.out.WriteHeader(&tar.Header{Typeflag: tar.TypeLink, Name: pl.name, Linkname: target, Format: tar.FormatPAX}); err != nil {
			return fmt.Errorf("write hard link %s: %w", pl.name, err)
		}
	}
	return nil
}

// resolveLink follows a link's target through other held-back links to the
// file that holds the content.
func (f *flattener) resolveLink(pl *pendingLink) (string, error) {
	target := pl.target
	for range len(f.links) + 1 {
		if next := f.links[target]; next != nil {
			target = next.target
			continue
		}
		n := f.nodes[target]
		if n == nil || !n.explicit || n.typ == tar.TypeDir || n.typ == tar.TypeLink {
			return "", fmt.Errorf("hard link %q: target %q is not a file in the image", pl.name, pl.target)
		}
		return target, nil
	}
	return "", fmt.Errorf("hard link %q: links form a cycle", pl.name)
}

func typeName(t byte) string {
	switch t {
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeLink:
		return "hard link"
	case tar.TypeReg:
		return "file"
	case tar.TypeChar, tar.TypeBlock:
		return "device"
	case tar.TypeFifo:
		return "fifo"
	case tar.TypeDir:
		return "directory"
	}
	return fmt.Sprintf("entry of type %q", t)
}
