package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/hypervm/hyper/internal/units"
)

// The sizes a writable disk may have: the range of the instance types.
const (
	MinSize = 2 * units.GiB
	MaxSize = 2 * units.TiB
)

// Label is the ext4 label of every writable disk.
const Label = "hyper-rw"

// Maker makes VM writable disks: sparse files holding an empty ext4
// filesystem, which the guest's init mounts as the upper layer of its
// overlay root (it creates upper/ and work/ in the root directory).
//
// A disk is a clone of a template: an empty filesystem of the same size,
// made with mke2fs once per size and kept in a cache directory. `make
// bench-disk` decided it; medians in ms on loop filesystems, page cache
// cold / warm:
//
//	        XFS: reflinked template   mke2fs     ext4: copied template   mke2fs
//	2 GiB        2.0 / 0.9            18 / 9.0         4.1 / 2.4         19 / 6.5
//	32 GiB       6.0 / 1.0            18 / 9.1         6.4 / 2.5         16 / 7.1
//	2 TiB        3.3 / 3.9            44 / 29          70 / 20           64 / 43
//
// The template is faster everywhere but in a cold copy at 2 TiB, where the
// two tie: a reflink copies nothing, and a copy has little to copy (0.3 MiB
// at 32 GiB, 21 MiB at 2 TiB).
//
// Disks cloned from one template share its filesystem UUID, which nothing
// relies on: the guest finds its disks by device name.
type Maker struct {
	mke2fs   string
	args     []string // mke2fs's arguments before the file name
	cacheDir string
	cloner   *Cloner
	key      string // names the templates of this mke2fs and these arguments

	mu    sync.Mutex
	locks map[units.Size]chan struct{} // one template build per size at a time
}

// NewMaker returns a Maker that runs the mke2fs at path mke2fs (config
// tools.mke2fs), keeps templates in cacheDir and clones them with cloner.
// cacheDir should be on the filesystem of the VMs' disks, so that the
// templates can be reflinked where that filesystem allows it. Templates made
// by another version of mke2fs or of this package are removed.
func NewMaker(ctx context.Context, mke2fs, cacheDir string, cloner *Cloner) (*Maker, error) {
	if !filepath.IsAbs(mke2fs) {
		return nil, fmt.Errorf("tools.mke2fs: must be an absolute path (got %q)", mke2fs)
	}
	if cloner == nil {
		return nil, errors.New("disk maker: no cloner")
	}
	version, prezeroed, err := mke2fsVersion(ctx, mke2fs)
	if err != nil {
		return nil, err
	}
	m := &Maker{
		mke2fs:   mke2fs,
		args:     mke2fsArgs(prezeroed),
		cacheDir: cacheDir,
		cloner:   cloner,
		locks:    make(map[units.Size]chan struct{}),
	}
	sum := sha256.Sum256([]byte(version + "\x00" + strings.Join(m.args, "\x00")))
	m.key = hex.EncodeToString(sum[:6])
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return nil, fmt.Errorf("disk template cache: %w", err)
	}
	if err := m.removeStale(); err != nil {
		return nil, err
	}
	return m, nil
}

// mke2fsArgs are the flags every writable disk is made with, chosen for
// speed and for a file that stays sparse:
//   - nodiscard: a new sparse file has nothing to discard;
//   - lazy_itable_init, lazy_journal_init: do not write the inode tables
//     and the journal, which on a file means allocating them;
//   - assume_storage_prezeroed (1.47+): mark the inode tables zeroed (a
//     hole reads as zeros), so the guest's kernel does not zero them in the
//     background either, which would allocate up to 32 GiB of a 2 TiB disk;
//   - root_owner=0:0: the guest's root owns the root directory (0755),
//     whoever ran mke2fs;
//   - -m 0: the instance type's disk size is all the guest's;
//   - -b 4096: blocks match the host's, so holes and reflinks line up;
//   - -O ^resize_inode: no blocks reserved for growing the filesystem
//     (4 MiB of a 32 GiB disk, copied by every fork; the kernel can still
//     grow it online by switching to meta_bg);
//   - -G 256: the bitmaps of 256 groups (32 GiB) lie together, so a new
//     disk's metadata is a few extents (14 instead of 31 at 32 GiB) and
//     clones of disks of different sizes cost about the same.
func mke2fsArgs(prezeroed bool) []string {
	ext := "nodiscard,lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0"
	if prezeroed {
		ext += ",assume_storage_prezeroed=1"
	}
	return []string{"-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-O", "^resize_inode", "-G", "256", "-L", Label, "-E", ext}
}

var mke2fsVersionRE = regexp.MustCompile(`mke2fs (\d+)\.(\d+)`)

// mke2fsVersion returns mke2fs's version line and whether it knows
// assume_storage_prezeroed. Versions before 1.43 are refused: they give the
// root directory to whoever runs them.
func mke2fsVersion(ctx context.Context, mke2fs string) (string, bool, error) {
	cmd := exec.CommandContext(ctx, mke2fs, "-V")
	cmd.Env = []string{}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", false, fmt.Errorf("tools.mke2fs: run %s -V: %w", mke2fs, err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	m := mke2fsVersionRE.FindStringSubmatch(line)
	if m == nil {
		return "", false, fmt.Errorf("tools.mke2fs: %s -V printed %q, not an mke2fs version", mke2fs, line)
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	if major < 1 || major == 1 && minor < 43 {
		return "", false, fmt.Errorf("tools.mke2fs: %s is %s; need 1.43 or newer", mke2fs, line)
	}
	return line, major > 1 || minor >= 47, nil
}

func checkSize(size units.Size) error {
	if size < MinSize || size > MaxSize {
		return fmt.Errorf("disk size %s: must be between %s and %s", size, MinSize, MaxSize)
	}
	if size%units.MiB != 0 {
		return fmt.Errorf("disk size %s: must be a whole number of MiB", size)
	}
	return nil
}

// Create makes the writable disk path, of the given size, as a clone of the
// template for that size (made first if needed). path must not exist; on
// any failure, or if ctx is cancelled, nothing is left at path. The disk is
// not synced (Cloner.CloneScratch): it does not outlive a host crash, and
// neither does its VM.
func (m *Maker) Create(ctx context.Context, path string, size units.Size) error {
	if err := checkSize(size); err != nil {
		return fmt.Errorf("create writable disk %s: %w", path, err)
	}
	tmpl, err := m.Template(ctx, size)
	if err != nil {
		return fmt.Errorf("create writable disk %s: %w", path, err)
	}
	if _, err := m.cloner.CloneScratch(ctx, tmpl, path); err != nil {
		return fmt.Errorf("create writable disk: %w", err)
	}
	return nil
}

// Template returns the path of the template for disks of the given size,
// making it if it does not exist yet. Calling it at start for the sizes in
// use takes mke2fs off the first VM's path.
func (m *Maker) Template(ctx context.Context, size units.Size) (string, error) {
	if err := checkSize(size); err != nil {
		return "", fmt.Errorf("disk template: %w", err)
	}
	path := filepath.Join(m.cacheDir, fmt.Sprintf("ext4-%s-%s.img", size, m.key))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	unlock, err := m.lock(ctx, size)
	if err != nil {
		return "", fmt.Errorf("disk template %s: %w", size, err)
	}
	defer unlock()
	// Someone else may have made it while this call waited for the lock.
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := m.format(ctx, path, size, 0o400); err != nil {
		return "", fmt.Errorf("disk template %s: %w", size, err)
	}
	return path, nil
}

// Format makes the writable disk path by running mke2fs on a new sparse
// file, without a template: what Create does, the slow way. path must not exist; on any failure, or if ctx
// is cancelled, nothing is left at path.
func (m *Maker) Format(ctx context.Context, path string, size units.Size) error {
	if err := checkSize(size); err != nil {
		return fmt.Errorf("format writable disk %s: %w", path, err)
	}
	if err := m.format(ctx, path, size, diskMode); err != nil {
		return fmt.Errorf("format writable disk %s: %w", path, err)
	}
	return nil
}

func (m *Maker) format(ctx context.Context, path string, size units.Size, mode os.FileMode) error {
	return writeAtomic(path, func(f *os.File) error {
		if err := f.Truncate(size.Bytes()); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, m.mke2fs, slices.Concat(m.args, []string{f.Name()})...)
		cmd.Env = []string{}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%s: %w: %s", m.mke2fs, err, strings.TrimSpace(out.String()))
		}
		return f.Chmod(mode)
	})
}

func (m *Maker) lock(ctx context.Context, size units.Size) (unlock func(), err error) {
	m.mu.Lock()
	l, ok := m.locks[size]
	if !ok {
		l = make(chan struct{}, 1)
		m.locks[size] = l
	}
	m.mu.Unlock()
	select {
	case l <- struct{}{}:
		return func() { <-l }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// removeStale removes templates of other mke2fs versions or arguments, and
// temporary files a killed daemon left behind.
func (m *Maker) removeStale() error {
	if err := RemoveTemp(m.cacheDir); err != nil {
		return err
	}
	entries, err := os.ReadDir(m.cacheDir)
	if err != nil {
		return fmt.Errorf("disk template cache: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "ext4-") && strings.HasSuffix(name, ".img") && !strings.HasSuffix(name, "-"+m.key+".img") {
			if err := os.Remove(filepath.Join(m.cacheDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("disk template cache: remove stale templates: %w", err)
	}
	return nil
}
