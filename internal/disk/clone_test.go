package disk_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hypervm/hyper/internal/disk"
	"github.com/hypervm/hyper/internal/disk/internal/loopfs"
)

func TestProbe(t *testing.T) {
	for _, tc := range []struct {
		typ     loopfs.Type
		fsType  string
		reflink bool
	}{
		{loopfs.XFS, "xfs", true},
		{loopfs.XFSNoReflink, "xfs", false},
		{loopfs.Ext4, "ext4", false},
	} {
		t.Run(string(tc.typ), func(t *testing.T) {
			dir := loopDir(t, tc.typ)
			caps, err := disk.Probe(dir)
			if err != nil {
				t.Fatal(err)
			}
			want := disk.Caps{Dir: dir, FSType: tc.fsType, Reflink: tc.reflink}
			if caps != want {
				t.Errorf("Probe(%s) = %+v, want %+v", tc.typ, caps, want)
			}
			if names := dirNames(t, dir); len(names) != 0 {
				t.Errorf("Probe left %v behind", names)
			}
		})
	}
	t.Run("tempdir", func(t *testing.T) {
		dir := t.TempDir()
		caps, err := disk.Probe(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("t.TempDir(): %+v", caps)
		if (caps.FSType == "ext4" || caps.FSType == "tmpfs") && caps.Reflink {
			t.Errorf("Probe says %s has reflinks", caps.FSType)
		}
		if names := dirNames(t, dir); len(names) != 0 {
			t.Errorf("Probe left %v behind", names)
		}
	})
	t.Run("missing", func(t *testing.T) {
		if _, err := disk.Probe(filepath.Join(t.TempDir(), "nope")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Probe of a missing directory: err = %v, want ErrNotExist", err)
		}
	})
}

func TestNewCloner(t *testing.T) {
	withReflink := disk.Caps{Dir: "/x", FSType: "xfs", Reflink: true}
	without := disk.Caps{Dir: "/y", FSType: "ext4"}
	for _, tc := range []struct {
		mode    string
		caps    disk.Caps
		want    disk.Method
		wantErr string
	}{
		{disk.ModeAuto, withReflink, disk.Reflink, ""},
		{disk.ModeAuto, without, disk.Copy, ""},
		{disk.ModeReflink, withReflink, disk.Reflink, ""},
		{disk.ModeReflink, without, 0, `disk.clone = "reflink", but /y (ext4) does not support reflinks`},
		{disk.ModeCopy, withReflink, disk.Copy, ""},
		{disk.ModeCopy, without, disk.Copy, ""},
		{"fast", without, 0, `disk.clone: must be auto, reflink or copy (got "fast")`},
		{"", without, 0, `disk.clone: must be`},
	} {
		c, err := disk.NewCloner(tc.mode, tc.caps)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("NewCloner(%q, %+v): err = %v, want one containing %q", tc.mode, tc.caps, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("NewCloner(%q, %+v): %v", tc.mode, tc.caps, err)
			continue
		}
		if c.Method() != tc.want {
			t.Errorf("NewCloner(%q, %+v).Method() = %v, want %v", tc.mode, tc.caps, c.Method(), tc.want)
		}
	}
}

// TestClone checks the clone contract on every filesystem and method:
// same size and contents, sparse, private mode, nothing else left in the
// directory, and later writes to either side not seen by the other.
func TestClone(t *testing.T) {
	for _, fsys := range filesystems {
		t.Run(fsys.name, func(t *testing.T) {
			dir := fsys.dir(t)
			caps, err := disk.Probe(dir)
			if err != nil {
				t.Fatal(err)
			}
			auto := fsys.want
			if auto == 0 {
				auto = disk.Copy
				if caps.Reflink {
					auto = disk.Reflink
				}
			}
			for _, tc := range []struct {
				mode string
				want disk.Method
			}{{disk.ModeAuto, auto}, {disk.ModeCopy, disk.Copy}} {
				t.Run(tc.mode, func(t *testing.T) {
					c, err := disk.NewCloner(tc.mode, caps)
					if err != nil {
						t.Fatal(err)
					}
					for _, f := range cloneFuncs(c) {
						t.Run(f.name, func(t *testing.T) {
							sub, err := os.MkdirTemp(dir, tc.mode+"-")
							if err != nil {
								t.Fatal(err)
							}
							testCloneContract(t, f.clone, sub, tc.want)
						})
					}
				})
			}
		})
	}
}

// cloneFunc is Cloner.Clone or Cloner.CloneScratch: they differ only in
// durability, which a test cannot observe without crashing the host.
type cloneFunc func(ctx context.Context, src, dst string) (disk.Method, error)

func cloneFuncs(c *disk.Cloner) []struct {
	name  string
	clone cloneFunc
} {
	return []struct {
		name  string
		clone cloneFunc
	}{{"Clone", c.Clone}, {"CloneScratch", c.CloneScratch}}
}

func testCloneContract(t *testing.T, clone cloneFunc, dir string, want disk.Method) {
	const (
		size    = 256 << 20
		chunk   = 1 << 20
		written = 16 * chunk
	)
	src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	offs := writeScatter(t, src, size, chunk, written/chunk, 1)
	srcSum := digest(t, src)
	freeBefore := freeBytes(t, dir)

	got, err := clone(context.Background(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("Clone used %v, want %v", got, want)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size || fi.Mode().Perm() != 0o600 {
		t.Errorf("clone: size %d mode %v, want %d and 0600", fi.Size(), fi.Mode().Perm(), size)
	}
	if sum := digest(t, dst); sum != srcSum {
		t.Errorf("clone's contents differ from the source's")
	}
	if a := allocated(t, dst); a < written || a > written+1<<20 {
		t.Errorf("clone has %d bytes allocated, want about the %d written (the disk is %d)", a, written, size)
	}
	if got == disk.Reflink {
		if used := freeBefore - freeBytes(t, dir); used > 4<<20 {
			t.Errorf("reflink used %d bytes of free space, want the data shared", used)
		}
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{"dst.img", "src.img"}) {
		t.Errorf("directory holds %v, want only dst.img and src.img", names)
	}

	// A write to the clone, over data and into a hole, leaves the source
	// alone, and a later write to the source leaves the clone alone.
	writeAt(t, dst, offs[0]+100, []byte("child over data"))
	hole := int64(0)
	for slices.Contains(offs, hole) {
		hole += chunk
	}
	writeAt(t, dst, hole+7, []byte("child in a hole"))
	if sum := digest(t, src); sum != srcSum {
		t.Errorf("a write to the clone changed the source")
	}
	dstSum := digest(t, dst)
	if dstSum == srcSum {
		t.Fatalf("the writes to the clone changed nothing")
	}
	writeAt(t, src, offs[1], []byte("parent"))
	if sum := digest(t, dst); sum != dstSum {
		t.Errorf("a write to the source changed the clone")
	}
}

// TestCloneLargeSparseDisk: on the copy path, cloning a 32 GiB disk with
// 1 MiB written costs what the 1 MiB costs.
func TestCloneLargeSparseDisk(t *testing.T) {
	for _, fsys := range filesystems[:2] {
		t.Run(fsys.name, func(t *testing.T) {
			dir := fsys.dir(t)
			c, err := disk.NewCloner(disk.ModeCopy, disk.Caps{})
			if err != nil {
				t.Fatal(err)
			}
			src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
			writeScatter(t, src, 32<<30, 1<<20, 1, 2)
			start := time.Now()
			if _, err := c.Clone(context.Background(), src, dst); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			t.Logf("32 GiB disk with 1 MiB written: sparse copy in %v", took)
			if took > time.Second {
				t.Errorf("sparse copy of a 32 GiB disk with 1 MiB written took %v, want well under a second", took)
			}
			if a := allocated(t, dst); a > 2<<20 {
				t.Errorf("clone has %d bytes allocated, want about 1 MiB", a)
			}
			if digest(t, dst) != digest(t, src) {
				t.Errorf("clone's contents differ from the source's")
			}
		})
	}
}

func TestCloneRefusesExistingDestination(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	writeScatter(t, src, 8<<20, 1<<20, 2, 3)
	if err := os.WriteFile(dst, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{disk.ModeAuto, disk.ModeCopy} {
		c, err := disk.NewCloner(mode, disk.Caps{})
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range cloneFuncs(c) {
			if _, err := f.clone(context.Background(), src, dst); !errors.Is(err, fs.ErrExist) {
				t.Errorf("%s: %s onto an existing file: err = %v, want ErrExist", mode, f.name, err)
			}
		}
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "precious" {
		t.Errorf("existing destination now holds %q (err %v)", b, err)
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{"dst.img", "src.img"}) {
		t.Errorf("directory holds %v, want only dst.img and src.img", names)
	}
}

// countdownCtx is cancelled after its Err has been asked n times, which
// cancels a copy at a known point instead of at a racy time.
type countdownCtx struct {
	context.Context
	n     atomic.Int64
	calls atomic.Int64
}

func (c *countdownCtx) Err() error {
	c.calls.Add(1)
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

func TestCloneCancelled(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.img"), filepath.Join(dir, "dst.img")
	writeScatter(t, src, 64<<20, 1<<20, 8, 4)
	c, err := disk.NewCloner(disk.ModeCopy, disk.Caps{})
	if err != nil {
		t.Fatal(err)
	}

	for _, f := range cloneFuncs(c) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := f.clone(ctx, src, dst); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: err = %v, want Canceled", f.name, err)
		}
		if names := dirNames(t, dir); !slices.Equal(names, []string{"src.img"}) {
			t.Errorf("cancelled %s left %v", f.name, names)
		}

		for _, after := range []int64{2, 5, 9} {
			ctx := &countdownCtx{Context: context.Background()}
			ctx.n.Store(after)
			if _, err := f.clone(ctx, src, dst); !errors.Is(err, context.Canceled) {
				t.Errorf("%s cancelled after %d checks: err = %v, want Canceled", f.name, after, err)
			}
			if ctx.calls.Load() <= after {
				t.Errorf("%s finished after %d checks, before the cancellation at %d", f.name, ctx.calls.Load(), after)
			}
			if names := dirNames(t, dir); !slices.Equal(names, []string{"src.img"}) {
				t.Errorf("%s cancelled after %d checks left %v", f.name, after, names)
			}
		}
	}
}

func TestCloneBadSource(t *testing.T) {
	dir := t.TempDir()
	dst := filepath.Join(dir, "dst.img")
	if _, err := disk.Clone(context.Background(), filepath.Join(dir, "missing.img"), dst); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Clone of a missing source: err = %v, want ErrNotExist", err)
	}
	if _, err := disk.Clone(context.Background(), dir, dst); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Clone of a directory: err = %v, want 'not a regular file'", err)
	}
	if names := dirNames(t, dir); len(names) != 0 {
		t.Errorf("failed clones left %v", names)
	}
}

// TestCloneAcrossFilesystems: a source the destination cannot share extents
// with is copied in mode auto (through a buffer: copy_file_range refuses
// XFS to ext4), and refused when reflinks were demanded.
func TestCloneAcrossFilesystems(t *testing.T) {
	srcDir, dstDir := loopDir(t, loopfs.Ext4), loopDir(t, loopfs.XFS)
	src, dst := filepath.Join(srcDir, "src.img"), filepath.Join(dstDir, "dst.img")
	writeScatter(t, src, 64<<20, 1<<20, 4, 5)
	caps, err := disk.Probe(dstDir)
	if err != nil {
		t.Fatal(err)
	}

	strict, err := disk.NewCloner(disk.ModeReflink, caps)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := strict.Clone(context.Background(), src, dst); err == nil || !strings.Contains(err.Error(), "FICLONE") {
		t.Errorf("reflink-only clone across filesystems: err = %v, want a FICLONE error", err)
	}
	if names := dirNames(t, dstDir); len(names) != 0 {
		t.Errorf("refused clone left %v", names)
	}

	auto, err := disk.NewCloner(disk.ModeAuto, caps)
	if err != nil {
		t.Fatal(err)
	}
	got, err := auto.Clone(context.Background(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	if got != disk.Copy {
		t.Errorf("clone across filesystems used %v, want copy", got)
	}
	if digest(t, dst) != digest(t, src) {
		t.Errorf("clone's contents differ from the source's")
	}
	if a := allocated(t, dst); a > 5<<20 {
		t.Errorf("clone has %d bytes allocated, want about the 4 MiB written", a)
	}
}

func TestRemove(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.img")
	writeScatter(t, p, 4<<20, 1<<20, 1, 6)
	for i := range 2 { // the second time the disk is already gone
		if err := disk.Remove(p); err != nil {
			t.Errorf("Remove #%d: %v", i+1, err)
		}
	}
	if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("disk still there after Remove: %v", err)
	}
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := disk.Remove(dir); err == nil {
		t.Errorf("Remove of a non-empty directory succeeded")
	}
}

func TestRemoveTemp(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"a.img", ".a.img.hyper-tmp-0123456789abcdef", "b.img"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := disk.RemoveTemp(dir); err != nil {
		t.Fatal(err)
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{"a.img", "b.img"}) {
		t.Errorf("RemoveTemp left %v, want a.img and b.img", names)
	}
}

func TestAllocated(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "disk.img")
	writeScatter(t, p, 1<<30, 1<<20, 3, 7)
	if a := allocated(t, p); a < 3<<20 || a > 4<<20 {
		t.Errorf("Allocated = %d for 3 MiB written into a 1 GiB sparse file", a)
	}
	if _, err := disk.Allocated(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Allocated of a missing file: err = %v, want ErrNotExist", err)
	}
}

func TestMove(t *testing.T) {
	dir := t.TempDir()
	src, dst, other := filepath.Join(dir, "a"), filepath.Join(dir, "sub", "b"), filepath.Join(dir, "c")
	if err := os.Mkdir(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{src, other} {
		if err := os.WriteFile(p, []byte(p), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := disk.Move(src, dst); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != src {
		t.Fatalf("moved disk: %q, %v", b, err)
	}
	if _, err := os.Stat(src); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the source is still there: %v", err)
	}
	if err := disk.Move(other, dst); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("move onto an existing disk: %v; want ErrExist", err)
	}
	if b, _ := os.ReadFile(dst); string(b) != src {
		t.Fatalf("a refused move replaced the disk: %q", b)
	}
}
