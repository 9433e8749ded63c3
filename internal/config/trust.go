package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrUntrusted is wrapped by every trust failure.
var ErrUntrusted = errors.New("untrusted config")

// maxConfigSize bounds what we read from a config file.
const maxConfigSize = 1 << 20

// ReadTrusted reads the config file at path if, and only if, it can be
// trusted to steer root: an absolute path with no "." or ".." components, a
// regular file (a symlink at the last component is refused, not followed),
// owned by root:root, not writable by group or others. The checks run on the
// opened descriptor, so the bytes returned are those of the file checked.
//
// An absent file returns (nil, false, nil): the caller uses the built-in
// defaults. Any other failure is fatal and names the rule broken.
func ReadTrusted(path string) (data []byte, present bool, err error) {
	untrusted := func(format string, args ...any) error {
		return fmt.Errorf("%w %s: %s", ErrUntrusted, path, fmt.Sprintf(format, args...))
	}
	if !filepath.IsAbs(path) || strings.Contains(path, "//") || filepath.Clean(path) != path {
		return nil, false, untrusted("path must be absolute with no empty, . or .. components")
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, false, nil
	case errors.Is(err, unix.ELOOP):
		return nil, true, untrusted("is a symlink; refusing to follow it")
	case err != nil:
		return nil, true, untrusted("open: %v", err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, true, untrusted("fstat: %v", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, true, untrusted("not a regular file")
	}
	if st.Uid != 0 || st.Gid != 0 {
		return nil, true, untrusted("not owned by root:root (owner %d:%d); run chown root:root %s", st.Uid, st.Gid, path)
	}
	if st.Mode&0o022 != 0 {
		return nil, true, untrusted("group- or world-writable (mode %04o); run chmod go-w %s", st.Mode&0o7777, path)
	}
	data, err = io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, true, untrusted("read: %v", err)
	}
	if len(data) > maxConfigSize {
		return nil, true, untrusted("larger than %d bytes", maxConfigSize)
	}
	return data, true, nil
}

// Load reads path under the trust rules and parses it. An absent file
// yields the defaults.
func Load(path string) (*Config, error) {
	data, present, err := ReadTrusted(path)
	if err != nil {
		return nil, err
	}
	if !present {
		return Default(), nil
	}
	return Parse(path, data)
}
