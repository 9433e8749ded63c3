package disk_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/disk"
	"github.com/hypervm/hyper/internal/disk/internal/loopfs"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(unprivEnv); dir != "" {
		os.Exit(unprivilegedChild(dir))
	}
	code := m.Run()
	if err := closeLoopFilesystems(); err != nil {
		fmt.Fprintln(os.Stderr, "cleanup:", err)
		code = 1
	}
	os.Exit(code)
}

// Loop filesystems are mounted once per test binary, on first use, and
// unmounted by TestMain: a mount costs about half a second.
var loops struct {
	sync.Mutex
	fs   map[loopfs.Type]*loopfs.FS
	dirs []string
}

// loopDir returns a fresh directory on a loop filesystem of type t, or skips
// the test if this machine cannot mount one.
func loopDir(t *testing.T, typ loopfs.Type) string {
	t.Helper()
	if why := loopfs.Unavailable(typ); why != "" {
		t.Skipf("%s loop filesystem: %s", typ, why)
	}
	loops.Lock()
	defer loops.Unlock()
	fs := loops.fs[typ]
	if fs == nil {
		work, err := os.MkdirTemp("", "hyper-disk-loop-")
		if err != nil {
			t.Fatal(err)
		}
		loops.dirs = append(loops.dirs, work)
		if fs, err = loopfs.Mount(context.Background(), work, typ, 2<<30); err != nil {
			t.Fatalf("mount %s loop filesystem: %v", typ, err)
		}
		if loops.fs == nil {
			loops.fs = make(map[loopfs.Type]*loopfs.FS)
		}
		loops.fs[typ] = fs
	}
	name := strings.ReplaceAll(t.Name(), "/", "_")
	dir, err := os.MkdirTemp(fs.Dir, name[:min(len(name), 40)]+"-")
	if err != nil {
		t.Fatal(err)
	}
	dir = filepath.Clean(dir)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func closeLoopFilesystems() error {
	loops.Lock()
	defer loops.Unlock()
	var errs []error
	for _, fs := range loops.fs {
		errs = append(errs, fs.Close())
	}
	for _, d := range loops.dirs {
		errs = append(errs, os.RemoveAll(d))
	}
	return errors.Join(errs...)
}

// testFS is a directory to clone in and what cloning there should do.
type testFS struct {
	name string
	dir  func(t *testing.T) string
	want disk.Method // the method of a Cloner in mode auto
}

// filesystems are the places both clone paths are tested on.
var filesystems = []testFS{
	{"tempdir", func(t *testing.T) string { return t.TempDir() }, 0}, // 0: whatever Probe says
	{"ext4", func(t *testing.T) string { return loopDir(t, loopfs.Ext4) }, disk.Copy},
	{"xfs-reflink", func(t *testing.T) string { return loopDir(t, loopfs.XFS) }, disk.Reflink},
}

// writeScatter makes a sparse file of the given size with n chunks of
// random data at distinct random chunk-aligned offsets, and returns the
// offsets.
func writeScatter(t *testing.T, path string, size, chunk int64, n int, seed uint64) []int64 {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	slots := rng.Perm(int(size / chunk))[:n]
	offs := make([]int64, n)
	for i, s := range slots {
		offs[i] = int64(s) * chunk
	}
	slices.Sort(offs)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, chunk)
	for _, off := range offs {
		fillRandom(rng, buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return offs
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
}

// digest hashes a file's logical contents: its size and every non-zero 4 KiB
// block with its offset. Files with equal contents have equal digests
// whatever their holes, and a 32 GiB sparse file is hashed without reading
// 32 GiB of zeros.
func digest(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	binary.Write(h, binary.LittleEndian, fi.Size())
	zero := make([]byte, 4096)
	buf := make([]byte, 1<<20)
	fd := int(f.Fd())
	for off := int64(0); off < fi.Size(); {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		// Extents need not start on 4 KiB boundaries; hash whole blocks.
		for pos := data &^ 4095; pos < hole; pos += int64(len(buf)) {
			n, err := f.ReadAt(buf, pos)
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			for i := 0; i < n; i += 4096 {
				blk := buf[i:min(i+4096, n)]
				if !bytes.Equal(blk, zero[:len(blk)]) {
					binary.Write(h, binary.LittleEndian, pos+int64(i))
					h.Write(blk)
				}
			}
		}
		off = hole
	}
	return hex.EncodeToString(h.Sum(nil))
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	n, err := disk.Allocated(path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// dirNames lists dir, to check that nothing was left behind.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bfree) * st.Bsize
}
