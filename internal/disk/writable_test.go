package disk_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hypervm/hyper/internal/config"
	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/disk"
	"github.com/hypervm/hyper/internal/disk/internal/loopfs"
	"github.com/hypervm/hyper/internal/units"
)

// mke2fsPath returns config's default mke2fs, or skips the test.
func mke2fsPath(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(config.DefaultMke2fs); err != nil {
		t.Skipf("%s: %v (install the Debian package e2fsprogs)", config.DefaultMke2fs, err)
	}
	return config.DefaultMke2fs
}

// newMaker returns a Maker for disks in dir, with its template cache there.
func newMaker(t *testing.T, dir string) *disk.Maker {
	t.Helper()
	caps, err := disk.Probe(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, err := disk.NewCloner(disk.ModeAuto, caps)
	if err != nil {
		t.Fatal(err)
	}
	m, err := disk.NewMaker(context.Background(), mke2fsPath(t), filepath.Join(dir, "cache"), c)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// e2fsTool runs one of e2fsprogs' tools next to mke2fs and returns its
// output.
func e2fsTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(filepath.Dir(config.DefaultMke2fs), name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// checkWritableDisk checks that path is a writable disk as the guest needs
// it: the right size, sparse, a clean ext4 with our label and flags (no
// reserved blocks, 4 KiB blocks, no resize inode), a root directory owned
// by root with mode 0755 (the guest makes upper/ and work/ there), and
// inode tables marked zeroed so that the guest's kernel does not write
// them.
func checkWritableDisk(t *testing.T, path string, size units.Size) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size.Bytes() || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: size %d mode %v, want %d and 0600", path, fi.Size(), fi.Mode().Perm(), size.Bytes())
	}
	if a := allocated(t, path); a > 2<<20 {
		t.Errorf("%s: %d bytes allocated, want a few MiB", path, a)
	}
	e2fsTool(t, "e2fsck", "-fn", path)
	sb := e2fsTool(t, "dumpe2fs", "-h", path)
	for _, re := range []string{
		`(?m)^Filesystem volume name:\s+` + disk.Label + `$`,
		`(?m)^Reserved block count:\s+0$`,
		`(?m)^Block size:\s+4096$`,
		`(?m)^Filesystem features:.*\bextent\b`,
		`(?m)^Filesystem features:.*\bhas_journal\b`,
		`(?m)^Flex block group size:\s+256$`,
	} {
		if !regexp.MustCompile(re).MatchString(sb) {
			t.Errorf("%s: superblock does not match %s:\n%s", path, re, sb)
		}
	}
	if regexp.MustCompile(`(?m)^Filesystem features:.*\bresize_inode\b`).MatchString(sb) {
		t.Errorf("%s: has resize_inode:\n%s", path, sb)
	}
	root := e2fsTool(t, "debugfs", "-R", "stat /", path)
	if !regexp.MustCompile(`Mode:\s+0755`).MatchString(root) || !regexp.MustCompile(`User:\s+0\s+Group:\s+0\b`).MatchString(root) {
		t.Errorf("%s: root directory is not 0755 root:root:\n%s", path, root)
	}
	if mke2fsAtLeast147(t) {
		groups := e2fsTool(t, "dumpe2fs", path)
		all := regexp.MustCompile(`(?m)^Group \d+:.*$`).FindAllString(groups, -1)
		if len(all) == 0 {
			t.Fatalf("%s: dumpe2fs lists no groups", path)
		}
		for _, g := range all {
			if !strings.Contains(g, "ITABLE_ZEROED") {
				t.Errorf("%s: inode table not marked zeroed: %s", path, g)
				break
			}
		}
	}
}

func mke2fsAtLeast147(t *testing.T) bool {
	out := e2fsTool(t, "mke2fs", "-V")
	m := regexp.MustCompile(`mke2fs 1\.(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("mke2fs -V printed %q", out)
	}
	minor, _ := strconv.Atoi(m[1])
	return minor >= 47
}

func TestCreate(t *testing.T) {
	for _, fsys := range filesystems {
		t.Run(fsys.name, func(t *testing.T) {
			dir := fsys.dir(t)
			m := newMaker(t, dir)
			for _, size := range []units.Size{2 * units.GiB, 32 * units.GiB} {
				p := filepath.Join(dir, "vm-"+size.String()+".img")
				if err := m.Create(context.Background(), p, size); err != nil {
					t.Fatal(err)
				}
				checkWritableDisk(t, p, size)
			}
			// The template now exists: on XFS another disk costs no space.
			free := freeBytes(t, dir)
			p := filepath.Join(dir, "vm-again.img")
			if err := m.Create(context.Background(), p, 2*units.GiB); err != nil {
				t.Fatal(err)
			}
			checkWritableDisk(t, p, 2*units.GiB)
			if fsys.want == disk.Reflink {
				if used := free - freeBytes(t, dir); used > 1<<20 {
					t.Errorf("a disk reflinked from its template used %d bytes", used)
				}
			}
			cache := filepath.Join(dir, "cache")
			names := dirNames(t, cache)
			if len(names) != 2 || !strings.HasPrefix(names[0], "ext4-2GiB-") || !strings.HasPrefix(names[1], "ext4-32GiB-") {
				t.Errorf("template cache holds %v, want one 2 GiB and one 32 GiB template", names)
			}
			for _, n := range names {
				if fi, err := os.Stat(filepath.Join(cache, n)); err != nil || fi.Mode().Perm() != 0o400 {
					t.Errorf("template %s: mode %v (err %v), want 0400", n, fi.Mode().Perm(), err)
				}
			}
		})
	}
}

func TestFormat(t *testing.T) {
	dir := t.TempDir()
	m := newMaker(t, dir)
	p := filepath.Join(dir, "vm.img")
	if err := m.Format(context.Background(), p, 4*units.GiB); err != nil {
		t.Fatal(err)
	}
	checkWritableDisk(t, p, 4*units.GiB)
	if names := dirNames(t, filepath.Join(dir, "cache")); len(names) != 0 {
		t.Errorf("Format made templates: %v", names)
	}
}

func TestCreateBadSize(t *testing.T) {
	dir := t.TempDir()
	m := newMaker(t, dir)
	for _, size := range []units.Size{0, -units.GiB, units.GiB, 2*units.GiB + 4096, 4 * units.TiB} {
		p := filepath.Join(dir, "vm.img")
		err := m.Create(context.Background(), p, size)
		if err == nil || !strings.Contains(err.Error(), "disk size") {
			t.Errorf("Create of %s: err = %v, want a disk size error", size, err)
		}
		if err := m.Format(context.Background(), p, size); err == nil {
			t.Errorf("Format of %s succeeded", size)
		}
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{"cache"}) {
		t.Errorf("bad sizes left %v", names)
	}
}

func TestCreateExisting(t *testing.T) {
	dir := t.TempDir()
	m := newMaker(t, dir)
	p := filepath.Join(dir, "vm.img")
	if err := os.WriteFile(p, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.Create(context.Background(), p, disk.MinSize); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Create over an existing file: err = %v, want ErrExist", err)
	}
	if err := m.Format(context.Background(), p, disk.MinSize); !errors.Is(err, fs.ErrExist) {
		t.Errorf("Format over an existing file: err = %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "precious" {
		t.Errorf("existing file now holds %q", b)
	}
}

// fakeMke2fs writes a script that answers -V like mke2fs 1.47.0 and runs
// body for anything else.
func fakeMke2fs(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mke2fs")
	script := "#!/bin/sh\nif [ \"$1\" = -V ]; then echo 'mke2fs 1.47.0 (5-Feb-2023)' >&2; exit 0; fi\n" + body + "\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func makerWith(t *testing.T, mke2fs, dir string) *disk.Maker {
	t.Helper()
	c, err := disk.NewCloner(disk.ModeCopy, disk.Caps{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := disk.NewMaker(context.Background(), mke2fs, filepath.Join(dir, "cache"), c)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// withMaker calls f with each way a Maker makes a disk: Create (through a
// template) and Format.
func withMaker(t *testing.T, mke2fs string, f func(t *testing.T, mk func(ctx context.Context, dir string) error)) {
	t.Run("Create", func(t *testing.T) {
		f(t, func(ctx context.Context, dir string) error {
			return makerWith(t, mke2fs, dir).Create(ctx, filepath.Join(dir, "vm.img"), disk.MinSize)
		})
	})
	t.Run("Format", func(t *testing.T) {
		f(t, func(ctx context.Context, dir string) error {
			return makerWith(t, mke2fs, dir).Format(ctx, filepath.Join(dir, "vm.img"), disk.MinSize)
		})
	})
}

func TestCreateMke2fsFails(t *testing.T) {
	withMaker(t, fakeMke2fs(t, "echo 'disk on fire' >&2; exit 1"), func(t *testing.T, mk func(context.Context, string) error) {
		dir := t.TempDir()
		if err := mk(context.Background(), dir); err == nil || !strings.Contains(err.Error(), "disk on fire") {
			t.Errorf("failing mke2fs: err = %v, want mke2fs's message", err)
		}
		checkNothingLeft(t, dir)
	})
}

func TestCreateCancelled(t *testing.T) {
	withMaker(t, fakeMke2fs(t, "exec sleep 30"), func(t *testing.T, mk func(context.Context, string) error) {
		dir := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := mk(ctx, dir); !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled context: err = %v, want Canceled", err)
		}
		checkNothingLeft(t, dir)

		ctx, cancel = context.WithCancel(context.Background())
		time.AfterFunc(200*time.Millisecond, cancel)
		start := time.Now()
		if err := mk(ctx, dir); !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled while mke2fs runs: err = %v, want Canceled", err)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("cancelled call returned after %v: mke2fs was not killed", took)
		}
		checkNothingLeft(t, dir)
	})
}

func checkNothingLeft(t *testing.T, dir string) {
	t.Helper()
	if names := dirNames(t, dir); !slices.Equal(names, []string{"cache"}) {
		t.Errorf("left %v", names)
	}
	if names := dirNames(t, filepath.Join(dir, "cache")); len(names) != 0 {
		t.Errorf("left %v in the template cache", names)
	}
}

// TestCreateConcurrent: concurrent disks of one size make one template.
func TestCreateConcurrent(t *testing.T) {
	dir := t.TempDir()
	m := newMaker(t, dir)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			errs[i] = m.Create(context.Background(), filepath.Join(dir, fmt.Sprintf("vm%d.img", i)), disk.MinSize)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Create #%d: %v", i, err)
		}
	}
	if names := dirNames(t, filepath.Join(dir, "cache")); len(names) != 1 {
		t.Errorf("template cache holds %v, want one template", names)
	}
	checkWritableDisk(t, filepath.Join(dir, "vm3.img"), disk.MinSize)
}

func TestNewMakerRemovesStaleTemplates(t *testing.T) {
	dir := t.TempDir()
	m := newMaker(t, dir)
	current, err := m.Template(context.Background(), disk.MinSize)
	if err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(dir, "cache")
	for _, name := range []string{"ext4-2GiB-000000000000.img", ".vm.img.hyper-tmp-0011223344556677", "notes.txt"} {
		if err := os.WriteFile(filepath.Join(cache, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	newMaker(t, dir)
	if names := dirNames(t, cache); !slices.Equal(names, []string{filepath.Base(current), "notes.txt"}) {
		t.Errorf("template cache holds %v, want the current template and notes.txt", names)
	}
}

func TestNewMakerBadTool(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "cache")
	old := fakeMke2fs(t, "exit 0")
	if err := os.WriteFile(old, []byte("#!/bin/sh\necho 'mke2fs 1.42.9 (28-Dec-2013)' >&2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cloner, err := disk.NewCloner(disk.ModeCopy, disk.Caps{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{"mke2fs", "tools.mke2fs: must be an absolute path"},
		{"/nonexistent/mke2fs", "tools.mke2fs: run /nonexistent/mke2fs -V"},
		{"/bin/true", "not an mke2fs version"},
		{old, "need 1.43 or newer"},
	} {
		_, err := disk.NewMaker(context.Background(), tc.path, cache, cloner)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewMaker(%q): err = %v, want one containing %q", tc.path, err, tc.want)
		}
	}
}

// unprivEnv makes the test binary, run as an unprivileged user by
// TestCreateUnprivileged, create a disk in the directory it names.
const unprivEnv = "HYPER_DISK_TEST_UNPRIVILEGED_DIR"

const nobody = 65534

func unprivilegedChild(dir string) int {
	ctx := context.Background()
	err := func() error {
		caps, err := disk.Probe(dir)
		if err != nil {
			return err
		}
		c, err := disk.NewCloner(disk.ModeAuto, caps)
		if err != nil {
			return err
		}
		m, err := disk.NewMaker(ctx, config.DefaultMke2fs, filepath.Join(dir, "cache"), c)
		if err != nil {
			return err
		}
		if err := m.Create(ctx, filepath.Join(dir, "vm.img"), disk.MinSize); err != nil {
			return err
		}
		if _, err := c.Clone(ctx, filepath.Join(dir, "vm.img"), filepath.Join(dir, "fork.img")); err != nil {
			return err
		}
		return m.Format(ctx, filepath.Join(dir, "formatted.img"), disk.MinSize)
	}()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestCreateUnprivileged makes disks (from a template and with mke2fs) and
// clones one as a user with no privileges: as root it runs this test
// binary again as nobody.
func TestCreateUnprivileged(t *testing.T) {
	mke2fsPath(t)
	dir := t.TempDir()
	uid := os.Geteuid()
	if uid != 0 {
		if code := unprivilegedChild(dir); code != 0 {
			t.Fatalf("creating disks as uid %d failed", uid)
		}
	} else {
		uid = nobody
		// nobody must be able to reach and run a copy of this binary and
		// to write in dir.
		bin := filepath.Join(t.TempDir(), "disk.test")
		copyExecutable(t, bin)
		// Both are t.TempDir()s: <test root>/00N, made 0700.
		for _, d := range []string{filepath.Dir(dir), filepath.Dir(bin)} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chown(dir, nobody, nobody); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = []string{unprivEnv + "=" + dir}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("creating disks as nobody: %v\n%s", err, out)
		}
	}
	for _, name := range []string{"vm.img", "fork.img", "formatted.img"} {
		p := filepath.Join(dir, name)
		checkWritableDisk(t, p, disk.MinSize)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if owner := fi.Sys().(*syscall.Stat_t).Uid; int(owner) != uid {
			t.Errorf("%s is owned by uid %d, want %d", name, owner, uid)
		}
	}
}

func copyExecutable(t *testing.T, dst string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestWritableDiskIsAnOverlayUpper does with a new disk what the guest's
// init does: mounts it, makes upper/ and work/ in it, stacks it over a
// read-only lower directory as an overlay, and writes through the overlay.
// The write lands on the disk, which stays clean and sparse.
func TestWritableDiskIsAnOverlayUpper(t *testing.T) {
	if why := loopfs.Unavailable(loopfs.Ext4); why != "" {
		t.Skip(why)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "vm.img")
	if err := newMaker(t, dir).Create(context.Background(), p, 32*units.GiB); err != nil {
		t.Fatal(err)
	}
	dev, err := loopfs.Attach(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := loopfs.Detach(dev); err != nil {
			t.Error(err)
		}
	})
	lower, writable, root := filepath.Join(dir, "lower"), filepath.Join(dir, "writable"), filepath.Join(dir, "root")
	for _, d := range []string{lower, writable, root} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(lower, "from-image"), []byte("base\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, writable, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { loopfs.Unmount(writable) })
	for _, d := range []string{"upper", "work"} {
		if err := os.Mkdir(filepath.Join(writable, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, writable, writable)
	if err := unix.Mount("overlay", root, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay %s: %v", opts, err)
	}
	t.Cleanup(func() { loopfs.Unmount(root) })
	if b, err := os.ReadFile(filepath.Join(root, "from-image")); err != nil || string(b) != "base\n" {
		t.Fatalf("lower file through the overlay: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(root, "from-guest"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{root, writable} {
		if err := loopfs.Unmount(d); err != nil {
			t.Fatal(err)
		}
	}
	checkWritableDisk(t, p, 32*units.GiB)
	if got := e2fsTool(t, "debugfs", "-R", "cat /upper/from-guest", p); !strings.Contains(got, "hello\n") {
		t.Errorf("the guest's file is not on the disk: %q", got)
	}
	if _, err := os.Stat(filepath.Join(lower, "from-guest")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the guest's write reached the lower directory: %v", err)
	}
}
