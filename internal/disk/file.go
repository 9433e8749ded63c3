package disk

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/fsync"
)

// diskMode is the permission of every disk file this package makes. The
// helper hands a VM's disk to its jail by changing the owner, so nobody but
// the owner ever needs access.
const diskMode = 0o600

// tmpMarker is part of every temporary name this package uses, so that
// leftovers of a killed daemon can be recognised and removed (RemoveTemp).
const tmpMarker = ".hyper-tmp-"

// Allocated returns the bytes the filesystem has allocated to path
// (st_blocks * 512): what a sparse disk really costs, as opposed to its size.
// Blocks a reflinked file shares with another file count for each of them.
func Allocated(path string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Blocks * 512, nil
}

// Remove deletes the disk at path. A disk that is already gone is not an
// error, so reclaiming a half-torn-down VM can simply call it again.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove disk: %w", err)
	}
	return nil
}

// Move renames the disk at old to new, which must not exist (fs.ErrExist
// otherwise), and syncs new's directory so that the rename outlives a
// crash. Both must be on one filesystem.
func Move(old, new string) error {
	if err := renameNoReplace(old, new); err != nil {
		return err
	}
	return fsync.Dir(filepath.Dir(new))
}

// RemoveTemp deletes the temporary files a killed process left in dir while
// it was creating or cloning disks there. Only call it on a directory no
// other process is creating disks in at the same time.
func RemoveTemp(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("remove temporary disks: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if e.Type().IsRegular() && strings.Contains(e.Name(), tmpMarker) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove temporary disks: %w", err)
	}
	return nil
}

// writeAtomic makes the file dst appear complete or not at all: fill writes
// a new temporary file next to dst, which is synced and then renamed to dst
// without ever replacing an existing file. On any error, including a
// cancelled fill, the temporary file is removed and dst does not exist.
func writeAtomic(dst string, fill func(f *os.File) error) (err error) {
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("%s: %w", dst, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := createTemp(dst)
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := fill(f); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := renameNoReplace(tmp, dst); err != nil {
		return err
	}
	if err := fsync.Dir(filepath.Dir(dst)); err != nil {
		os.Remove(dst)
		return err
	}
	return nil
}

// writeScratch makes the file dst with fill, in place and unsynced; on any
// error dst is removed. Only for files a host crash makes worthless anyway
// (see Cloner.CloneScratch).
func writeScratch(dst string, fill func(f *os.File) error) error {
	f, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, diskMode)
	if err != nil {
		return err
	}
	if err := fill(f); err != nil {
		f.Close()
		os.Remove(dst)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(dst)
		return fmt.Errorf("close %s: %w", dst, err)
	}
	return nil
}

// createTemp creates an empty file with a fresh random name in dst's
// directory, with O_EXCL so that it is never someone else's file.
func createTemp(dst string) (*os.File, error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	dir, base := filepath.Split(dst)
	name := filepath.Join(dir, "."+base+tmpMarker+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, diskMode)
	if err != nil {
		return nil, fmt.Errorf("create temporary file: %w", err)
	}
	return f, nil
}

// renameNoReplace renames old to new, failing with fs.ErrExist if new
// exists. Filesystems without RENAME_NOREPLACE get link + unlink, which
// gives the same guarantee.
func renameNoReplace(old, new string) error {
	err := unix.Renameat2(unix.AT_FDCWD, old, unix.AT_FDCWD, new, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if err = os.Link(old, new); err == nil {
			err = os.Remove(old)
		}
	}
	if err != nil {
		return fmt.Errorf("rename %s to %s: %w", old, new, err)
	}
	return nil
}
