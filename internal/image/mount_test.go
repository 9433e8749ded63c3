package image_test

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// mountRO mounts an ext4 image read-only on a loop device, as a guest's
// kernel would, and returns the mount point. It needs root.
func mountRO(t *testing.T, img string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting on a loop device needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "ext4", "-o", "ro,loop", img, dir).CombinedOutput(); err != nil {
		t.Skipf("mount -o ro,loop: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// readMounted reads a mounted tree through the kernel, in readTree's terms.
func readMounted(t *testing.T, root string) map[string]*fsEntry {
	t.Helper()
	tree := map[string]*fsEntry{}
	first := map[uint64]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(p, root)
		if rel == "" {
			return nil
		}
		if rel == "/lost+found" {
			return filepath.SkipDir
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := &fsEntry{Mode: st.Mode & 0o7777, UID: int(st.Uid), GID: int(st.Gid), Xattrs: map[string]string{}}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			e.Type = "dir"
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.Type, e.Content = "reg", string(data)
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.Type, e.Target = "symlink", target
		case unix.S_IFCHR, unix.S_IFBLK:
			e.Type = map[uint32]string{unix.S_IFCHR: "char", unix.S_IFBLK: "block"}[st.Mode&unix.S_IFMT]
			e.Major, e.Minor = int(unix.Major(st.Rdev)), int(unix.Minor(st.Rdev))
		case unix.S_IFIFO:
			e.Type = "fifo"
		}
		buf := make([]byte, 4096)
		n, err := unix.Llistxattr(p, buf)
		if err != nil && err != syscall.ENOTSUP {
			return err
		}
		for _, name := range bytes.Split(buf[:n], []byte{0}) {
			if len(name) == 0 {
				continue
			}
			v := make([]byte, 4096)
			m, err := unix.Lgetxattr(p, string(name), v)
			if err != nil {
				return err
			}
			e.Xattrs[string(name)] = string(v[:m])
		}
		if e.Type != "dir" {
			if f, ok := first[st.Ino]; ok {
				e.Group = f
				tree[f].Group = f
			} else {
				first[st.Ino] = rel
			}
		}
		tree[rel] = e
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return tree
}

// TestKernelReadsWhatDebugfsReads mounts the rich image and compares the
// kernel's view with e2fsprogs' view and with the model.
func TestKernelReadsWhatDebugfsReads(t *testing.T) {
	e := newEnv(t, "x86_64")
	src := richImage(t, "amd64")
	img, _ := e.mustLoad(t, "oci:"+writeLayoutFor(t, src))
	mnt := mountRO(t, img.Path)
	kernel := describe(readMounted(t, mnt))
	if diff := cmp.Diff(describe(modelFlatten(richLayers()...).entries()), kernel); diff != "" {
		t.Errorf("mounted tree differs from the flattened layers (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(describe(readTree(t, img.Path)), kernel); diff != "" {
		t.Errorf("mounted tree differs from debugfs's (-debugfs +kernel):\n%s", diff)
	}
}
