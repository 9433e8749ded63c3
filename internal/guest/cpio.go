package guest

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// CPIOWriter writes a cpio archive in the "newc" format the kernel unpacks
// into its initial rootfs (Documentation/driver-api/early-userspace/
// buffer-format.rst). Every entry is owned by root with mtime 0, so the same
// inputs always give the same bytes.
type CPIOWriter struct {
	w      io.Writer
	n      int64
	ino    uint32
	closed bool
}

// NewCPIOWriter returns a writer appending an archive to w.
func NewCPIOWriter(w io.Writer) *CPIOWriter { return &CPIOWriter{w: w, ino: 1} }

// Dir adds a directory.
func (c *CPIOWriter) Dir(name string, perm fs.FileMode) error {
	return c.entry(name, 0o040000|uint32(perm.Perm()), nil, 0)
}

// CharDev adds a character device node.
func (c *CPIOWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	return c.device(name, 0o020000|uint32(perm.Perm()), major, minor)
}

// File adds a regular file whose content is size bytes read from r.
func (c *CPIOWriter) File(name string, perm fs.FileMode, r io.Reader, size int64) error {
	return c.entry(name, 0o100000|uint32(perm.Perm()), r, size)
}

// Bytes adds a regular file holding data.
func (c *CPIOWriter) Bytes(name string, perm fs.FileMode, data []byte) error {
	return c.File(name, perm, strings.NewReader(string(data)), int64(len(data)))
}

// Close writes the trailer. It does not close the underlying writer.
func (c *CPIOWriter) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	return c.header("TRAILER!!!", 0, 0, 0, 0, 0)
}

func (c *CPIOWriter) device(name string, mode, major, minor uint32) error {
	if c.closed {
		return errors.New("cpio: write after close")
	}
	name = strings.TrimPrefix(name, "/")
	if name == "" || strings.Contains(name, "\x00") {
		return fmt.Errorf("cpio: invalid entry %q", name)
	}
	c.ino++
	return c.header(name, mode, c.ino, 0, major, minor)
}

func (c *CPIOWriter) entry(name string, mode uint32, r io.Reader, size int64) error {
	if c.closed {
		return errors.New("cpio: write after close")
	}
	name = strings.TrimPrefix(name, "/")
	if name == "" || strings.Contains(name, "\x00") || size < 0 || size > 1<<32-1 {
		return fmt.Errorf("cpio: invalid entry %q (size %d)", name, size)
	}
	c.ino++
	if err := c.header(name, mode, c.ino, size, 0, 0); err != nil {
		return err
	}
	if r != nil {
		n, err := io.CopyN(c.w, r, size)
		c.n += n
		if err != nil {
			return fmt.Errorf("cpio: %s: %w", name, err)
		}
	}
	return c.pad()
}

func (c *CPIOWriter) header(name string, mode, ino uint32, size int64, rmajor, rminor uint32) error {
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize (with its NUL), check.
	h := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, rmajor, rminor, len(name)+1, 0)
	n, err := io.WriteString(c.w, h+name+"\x00")
	c.n += int64(n)
	if err != nil {
		return err
	}
	return c.pad()
}

// pad aligns to 4 bytes, as newc requires after each header+name and each
// file's data.
func (c *CPIOWriter) pad() error {
	if r := c.n % 4; r != 0 {
		n, err := c.w.Write(make([]byte, 4-r))
		c.n += int64(n)
		return err
	}
	return nil
}
