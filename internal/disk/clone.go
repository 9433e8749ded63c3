package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Method is how a disk was cloned.
type Method int

const (
	// Reflink is FICLONE: the clone shares the source's extents and the
	// filesystem copies a block only when either side writes it. It copies
	// no data; its cost grows with the number of extents only.
	Reflink Method = iota + 1
	// Copy is a sparse copy of the source's data extents: proportional to
	// the bytes written, never to the disk's size.
	Copy
)

func (m Method) String() string {
	switch m {
	case Reflink:
		return "reflink"
	case Copy:
		return "copy"
	default:
		return fmt.Sprintf("Method(%d)", int(m))
	}
}

// The values of config disk.clone.
const (
	ModeAuto    = "auto"    // reflink where the filesystem has it, else copy
	ModeReflink = "reflink" // reflink or fail
	ModeCopy    = "copy"    // always a sparse copy
)

// Caps is what a directory's filesystem can do for disks.
type Caps struct {
	Dir     string
	FSType  string // "xfs", "ext4", "btrfs", ... or the magic number in hex
	Reflink bool   // FICLONE works between two files of the directory
}

// Probe finds out whether files in dir can be reflinked, by cloning one
// temporary file into another there. Call it once at start: the answer does
// not change while the filesystem stays mounted.
func Probe(dir string) (Caps, error) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		return Caps{}, fmt.Errorf("probe %s: %w", dir, err)
	}
	caps := Caps{Dir: dir, FSType: fsTypeName(sfs.Type)}
	ok, err := probeReflink(dir)
	if err != nil {
		return Caps{}, fmt.Errorf("probe %s: %w", dir, err)
	}
	caps.Reflink = ok
	return caps, nil
}

func probeReflink(dir string) (bool, error) {
	var files [2]*os.File
	for i := range files {
		f, err := createTemp(filepath.Join(dir, "probe"))
		if err != nil {
			return false, err
		}
		defer os.Remove(f.Name())
		defer f.Close()
		files[i] = f
	}
	// A whole filesystem block, so the clone has an extent to share.
	if _, err := files[0].Write(make([]byte, 4096)); err != nil {
		return false, err
	}
	err := unix.IoctlFileClone(int(files[1].Fd()), int(files[0].Fd()))
	if err != nil && !reflinkUnsupported(err) {
		return false, fmt.Errorf("FICLONE: %w", err)
	}
	return err == nil, nil
}

// reflinkUnsupported reports whether a FICLONE error means "not here" (no
// reflink on this filesystem, or source and destination on different
// filesystems) rather than a real failure.
func reflinkUnsupported(err error) bool {
	for _, e := range []unix.Errno{unix.EOPNOTSUPP, unix.ENOTTY, unix.EXDEV, unix.EINVAL, unix.ENOSYS} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func fsTypeName(magic int64) string {
	switch magic {
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.EXT4_SUPER_MAGIC: // ext2 and ext3 share it
		return "ext4"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlay"
	default:
		return fmt.Sprintf("0x%x", magic)
	}
}

// Cloner clones disks into the directory it was made for, with the method
// chosen once at start from the configuration and the directory's Caps.
type Cloner struct {
	method Method
	// strict forbids falling back to a copy when a reflink fails; set when
	// the configuration demands reflinks.
	strict bool
}

// NewCloner returns the Cloner for a directory with caps under config
// disk.clone = mode. Demanding reflinks of a filesystem without them is an
// error here, at start, rather than at the first fork.
func NewCloner(mode string, caps Caps) (*Cloner, error) {
	switch mode {
	case ModeAuto:
		if caps.Reflink {
			return &Cloner{method: Reflink}, nil
		}
		return &Cloner{method: Copy}, nil
	case ModeReflink:
		if !caps.Reflink {
			return nil, fmt.Errorf("disk.clone = %q, but %s (%s) does not support reflinks: use XFS with reflink=1 or btrfs there, or set disk.clone to %q",
				mode, caps.Dir, caps.FSType, ModeAuto)
		}
		return &Cloner{method: Reflink, strict: true}, nil
	case ModeCopy:
		return &Cloner{method: Copy}, nil
	default:
		return nil, fmt.Errorf("disk.clone: must be %s, %s or %s (got %q)", ModeAuto, ModeReflink, ModeCopy, mode)
	}
}

// Method is the method the Cloner uses for sources on its own filesystem.
func (c *Cloner) Method() Method { return c.method }

// Clone makes dst a copy of the disk src: same size, same contents, later
// writes to either not seen by the other. dst must not exist; it appears
// complete and synced, or not at all (a failure or a cancelled ctx leaves
// nothing behind). With the Reflink method, a source on a filesystem the
// destination cannot share extents with is copied instead, unless the
// configuration demanded reflinks. Clone returns the method it used.
func (c *Cloner) Clone(ctx context.Context, src, dst string) (Method, error) {
	used, err := c.clone(ctx, src, dst, writeAtomic)
	if err != nil {
		return 0, fmt.Errorf("clone disk %s to %s: %w", src, dst, err)
	}
	return used, nil
}

// CloneScratch is Clone for a disk that need not outlive the host: a new
// VM's writable disk. It writes dst in place and syncs nothing, which saves
// two fsyncs (most of the cost of cloning a fresh disk's template on a
// filesystem without reflinks). That is safe because a host crash ends the
// VM too (its VMM dies, the node frees its disk on restart), and the guest
// flushes what it writes itself. On failure dst is removed.
func (c *Cloner) CloneScratch(ctx context.Context, src, dst string) (Method, error) {
	used, err := c.clone(ctx, src, dst, writeScratch)
	if err != nil {
		return 0, fmt.Errorf("clone disk %s to %s: %w", src, dst, err)
	}
	return used, nil
}

func (c *Cloner) clone(ctx context.Context, src, dst string, write func(string, func(*os.File) error) error) (Method, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	fi, err := s.Stat()
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("%s is not a regular file", src)
	}
	var used Method
	err = write(dst, func(d *os.File) error {
		if c.method == Reflink {
			err := unix.IoctlFileClone(int(d.Fd()), int(s.Fd()))
			if err == nil {
				used = Reflink
				return nil
			}
			if c.strict || !reflinkUnsupported(err) {
				return fmt.Errorf("FICLONE: %w", err)
			}
		}
		used = Copy
		return sparseCopy(ctx, d, s, fi.Size())
	})
	return used, err
}

// Clone clones src to dst as a Cloner in mode auto does: a reflink where
// the filesystem allows it, a sparse copy otherwise.
func Clone(ctx context.Context, src, dst string) (Method, error) {
	return (&Cloner{method: Reflink}).Clone(ctx, src, dst)
}

// copyChunk bounds one copy_file_range call, so cancellation is noticed
// within a few tens of milliseconds.
const copyChunk = 32 << 20

// sparseCopy copies the data extents of src (size bytes long) into the empty
// file dst, leaving holes where src has holes. `make bench-fork` times it
// against cp --sparse=always.
func sparseCopy(ctx context.Context, dst, src *os.File, size int64) error {
	if err := dst.Truncate(size); err != nil {
		return err
	}
	c := rangeCopier{dst: dst, src: src}
	sfd, dfd := int(src.Fd()), int(dst.Fd())
	ra := readahead{fd: sfd, size: size}
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("seek data at %d: %w", off, err)
		}
		hole, err := unix.Seek(sfd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole at %d: %w", data, err)
		}
		// The source may have grown since its size was read; what lies
		// beyond that size is not part of the disk.
		hole = min(hole, size)
		for data < hole {
			if err := ctx.Err(); err != nil {
				return err
			}
			ra.advance(data + readaheadWindow)
			n, err := c.copy(data, min(hole-data, copyChunk))
			if err != nil {
				return err
			}
			// Start writing the copied range back now, so the writes
			// overlap the reads instead of all waiting for the final fsync.
			// Advice too: the fsync catches whatever this does not.
			unix.SyncFileRange(dfd, data, n, unix.SYNC_FILE_RANGE_WRITE)
			data += n
		}
		off = hole
	}
	return nil
}

// readaheadWindow is how far ahead of the copy the source is read.
const readaheadWindow = 64 << 20

// readahead asks the kernel to read the source's data extents ahead of the
// copy. Without it, a copy of many small extents from a cold cache waits
// for each extent's read in turn; with it, the reads overlap each other and
// the copying (with the early writeback, it more than halved the time of a
// cold copy of 1 GiB in 1 MiB extents, which had been 1.3x cp's).
type readahead struct {
	fd   int
	size int64
	pos  int64 // everything before pos has been asked for
}

// advance asks for the data between the last call's end and end. It is
// only advice: on an error it stops advising, and the copy reads what it
// needs anyway.
func (r *readahead) advance(end int64) {
	end = min(end, r.size)
	for r.pos < end {
		data, err := unix.Seek(r.fd, r.pos, unix.SEEK_DATA)
		if err != nil { // ENXIO: no data left
			r.pos = r.size
			return
		}
		if data >= end {
			r.pos = end
			return
		}
		hole, err := unix.Seek(r.fd, data, unix.SEEK_HOLE)
		if err != nil {
			r.pos = r.size
			return
		}
		stop := min(hole, end)
		unix.Fadvise(r.fd, data, stop-data, unix.FADV_WILLNEED)
		r.pos = stop
	}
}

// rangeCopier copies byte ranges between two files at the same offsets,
// in the kernel with copy_file_range where the filesystems allow it and
// through a buffer where they do not.
type rangeCopier struct {
	dst, src *os.File
	buf      []byte // non-nil once copy_file_range has been found unusable
}

func (c *rangeCopier) copy(off, n int64) (int64, error) {
	if c.buf == nil {
		var m int
		var err error
		for {
			roff, woff := off, off
			m, err = unix.CopyFileRange(int(c.src.Fd()), &roff, int(c.dst.Fd()), &woff, int(n), 0)
			if !errors.Is(err, unix.EINTR) {
				break
			}
		}
		switch {
		case err == nil && m > 0:
			return int64(m), nil
		// Some filesystems answer 0 instead of an error when they cannot
		// copy in the kernel; the buffered copy then tells a real end of
		// file apart.
		case err == nil, errors.Is(err, unix.EXDEV), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EINVAL):
			c.buf = make([]byte, 1<<20)
		default:
			return 0, fmt.Errorf("copy_file_range at %d: %w", off, err)
		}
	}
	b := c.buf[:min(n, int64(len(c.buf)))]
	m, err := c.src.ReadAt(b, off)
	if m > 0 {
		if _, werr := c.dst.WriteAt(b[:m], off); werr != nil {
			return 0, werr
		}
		return int64(m), nil
	}
	if err == io.EOF {
		err = fmt.Errorf("source ended early: %w", io.ErrUnexpectedEOF)
	}
	return 0, fmt.Errorf("copy at %d: %w", off, err)
}
