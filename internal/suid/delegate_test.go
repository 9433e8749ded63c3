package suid

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// otherUID owns what the caller must not be handed. Changing owners needs
// root; the tests that need it skip without.
const otherUID = 4242

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to change file owners")
	}
}

func owner(t *testing.T, path string) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid
}

// delegatee is who the tests hand cgroups to: another user as root (so
// the chown is visible), the test's own user otherwise.
func delegatee() (uid, gid int) {
	if os.Geteuid() == 0 {
		return 65534, 65534
	}
	return os.Getuid(), os.Getgid()
}

func isRefusal(err error) bool {
	var r *refusal
	return errors.As(err, &r)
}

// TestDelegateV2 runs the v2 delegation on a fake cgroup2 tree: the
// controllers are enabled at the root and in the parent, the parent and
// its three delegation files change hands and nothing else does, the
// hyperd leaf is made over too, and doing it all again changes nothing.
func TestDelegateV2(t *testing.T) {
	c, root := fakeV2(t, "cpuset cpu io memory pids")
	uid, gid := delegatee()
	for round := range 2 {
		parents, err := c.delegate("p", uid, gid)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if want := []DelegatedCgroup{{Path: filepath.Join(root, "p")}}; !slices.Equal(parents, want) {
			t.Fatalf("parents = %+v, want %+v", parents, want)
		}
		leaf, err := c.daemonLeaf("p", uid, gid)
		if err != nil {
			t.Fatalf("round %d: hyperd leaf: %v", round, err)
		}
		unix.Close(leaf)
		// Round 0 writes what is missing; the kernel then shows the
		// controllers as enabled, and round 1 must write nothing.
		wants := map[string]string{"cgroup.subtree_control": "+memory +pids", "p/cgroup.subtree_control": "+cpu +memory +pids"}
		if round == 1 {
			wants = map[string]string{"cgroup.subtree_control": "cpu memory pids", "p/cgroup.subtree_control": "cpu memory pids"}
		}
		for path, want := range wants {
			if got := readString(t, filepath.Join(root, path)); got != want {
				t.Errorf("round %d: %s = %q, want %q", round, path, got, want)
			}
			if round == 0 {
				must(t, os.WriteFile(filepath.Join(root, path), []byte("cpu memory pids"), 0o644))
			}
		}
		for _, path := range []string{"p", "p/cgroup.procs", "p/cgroup.subtree_control", "p/cgroup.threads",
			"p/hyperd", "p/hyperd/cgroup.procs", "p/hyperd/cgroup.threads", "p/hyperd/cgroup.subtree_control"} {
			if got := owner(t, filepath.Join(root, path)); got != uint32(uid) {
				t.Errorf("round %d: %s owned by %d, want %d", round, path, got, uid)
			}
		}
		// The parent's own limits stay root's: they bound everything below.
		for _, path := range []string{"p/cpu.max", "cgroup.subtree_control", "p/" + testVM} {
			if got := owner(t, filepath.Join(root, path)); got != uint32(os.Geteuid()) {
				t.Errorf("round %d: %s changed hands to %d", round, path, got)
			}
		}
	}
}

func TestDelegateV2MissingController(t *testing.T) {
	c, root := fakeV2(t, "cpu pids")
	_, err := c.delegate("p", os.Getuid(), os.Getgid())
	if err == nil || !strings.Contains(err.Error(), "memory is not available") {
		t.Fatalf("delegate without the memory controller: %v", err)
	}
	if got := readString(t, filepath.Join(root, "cgroup.subtree_control")); got != "cpu" {
		t.Errorf("root subtree_control = %q after a failure", got)
	}
}

// TestDelegateRefusals: a parent that is not plainly root's or the
// caller's is refused, and a refusal changes nothing in any hierarchy.
func TestDelegateRefusals(t *testing.T) {
	uid, gid := delegatee()
	cases := []struct {
		name  string
		root  bool // needs root to set up
		setup func(t *testing.T, root string)
		want  string
	}{
		{"parent owned by another user", true, func(t *testing.T, root string) {
			must(t, os.Chown(filepath.Join(root, "p"), otherUID, otherUID))
		}, "owned by uid 4242, neither root nor the caller"},
		{"parent writable by its group", false, func(t *testing.T, root string) {
			must(t, os.Chmod(filepath.Join(root, "p"), 0o775))
		}, "group/other-writable"},
		{"parent is a symlink", false, func(t *testing.T, root string) {
			must(t, os.Rename(filepath.Join(root, "p"), filepath.Join(root, "elsewhere")))
			must(t, os.Symlink("elsewhere", filepath.Join(root, "p")))
		}, "symlink"},
		{"parent is a file", false, func(t *testing.T, root string) {
			must(t, os.RemoveAll(filepath.Join(root, "p")))
			must(t, os.WriteFile(filepath.Join(root, "p"), nil, 0o644))
		}, "not a directory"},
		{"parent holds a cgroup that is not Hyper's", false, func(t *testing.T, root string) {
			must(t, os.Mkdir(filepath.Join(root, "p", "sshd.service"), 0o755))
		}, "holds the cgroup sshd.service, which is not Hyper's"},
		{"parent holds processes", false, func(t *testing.T, root string) {
			must(t, os.WriteFile(filepath.Join(root, "p", "cgroup.procs"), []byte("123\n456\n"), 0o644))
		}, "holds processes (123 456)"},
		{"hyperd leaf owned by another user", true, func(t *testing.T, root string) {
			must(t, os.Chown(filepath.Join(root, "p", DaemonCgroup), otherUID, otherUID))
		}, "owned by uid 4242"},
		{"hyperd leaf is a symlink", false, func(t *testing.T, root string) {
			must(t, os.RemoveAll(filepath.Join(root, "p", DaemonCgroup)))
			must(t, os.Symlink(testVM, filepath.Join(root, "p", DaemonCgroup)))
		}, "symlink"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root {
				needRoot(t)
			}
			c, root := fakeV2(t, "cpu memory pids")
			tc.setup(t, root)
			before := treeState(t, root)
			_, err := c.delegate("p", uid, gid)
			if err == nil {
				var leaf int
				if leaf, err = c.daemonLeaf("p", uid, gid); err == nil {
					unix.Close(leaf)
				}
			}
			if !isRefusal(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want a refusal containing %q", err, tc.want)
			}
			if strings.HasPrefix(tc.name, "parent") {
				if diff := diffTree(before, treeState(t, root)); len(diff) > 0 {
					t.Fatalf("a refused delegation changed the tree: %v", diff)
				}
			}
		})
	}
}

// TestOpenCgroupsRefusesOtherFilesystems: a hierarchy must be on a cgroup
// file system of the expected version; the delegated parent is opened
// below it without crossing a mount, so it can be on nothing else.
func TestOpenCgroupsRefusesOtherFilesystems(t *testing.T) {
	dir := t.TempDir()
	must(t, os.Mkdir(filepath.Join(dir, "cpu"), 0o755))
	if _, err := openHierarchies(1, dir, unix.CGROUP_SUPER_MAGIC, "cpu"); err == nil || !strings.Contains(err.Error(), "not a cgroup v1 hierarchy") {
		t.Errorf("v1 hierarchy on %s: %v", dir, err)
	}
	if _, err := openHierarchies(2, dir, unix.CGROUP2_SUPER_MAGIC, ""); err == nil || !strings.Contains(err.Error(), "not a cgroup v2 hierarchy") {
		t.Errorf("v2 hierarchy on %s: %v", dir, err)
	}
	var fs unix.Statfs_t
	if unix.Statfs(dir, &fs) == nil && fs.Type != unix.TMPFS_MAGIC && fs.Type != unix.CGROUP2_SUPER_MAGIC {
		if _, err := openCgroups(dir); err == nil || !strings.Contains(err.Error(), "neither cgroup2 nor") {
			t.Errorf("cgroups at %s: %v", dir, err)
		}
	}
}

// TestPinParent: the process the v2 delegation moves is the helper's
// parent, and only while that parent runs as the caller.
func TestPinParent(t *testing.T) {
	defer func(saved ids) { caller = saved }(caller)
	caller = ids{os.Getuid(), os.Getgid()}
	p, err := pinParent()
	if err != nil {
		t.Fatalf("parent of the test (uid %d): %v", os.Getuid(), err)
	}
	c, root := fakeV2(t, "cpu memory pids")
	leaf, err := c.daemonLeaf("p", os.Getuid(), os.Getgid())
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(leaf)
	if err := p.moveInto(leaf, "p/hyperd"); err != nil {
		t.Fatal(err)
	}
	p.close()
	if got := readString(t, filepath.Join(root, "p", DaemonCgroup, "cgroup.procs")); got != strconv.Itoa(os.Getppid()) {
		t.Errorf("moved %q, want the parent %d", got, os.Getppid())
	}

	caller.uid = os.Getuid() + 1
	if _, err := pinParent(); !isRefusal(err) || !strings.Contains(err.Error(), "not as the caller") {
		t.Fatalf("parent running as another user than the caller: %v", err)
	}
}

// TestDelegateReal hands this machine's cgroups (v1 here, v2 on most
// hosts) to another user, twice, then refuses once the parent belongs to
// a third.
func TestDelegateReal(t *testing.T) {
	needRoot(t)
	c, err := openCgroups(cgroupRoot)
	if err != nil {
		t.Skipf("no usable cgroups: %v", err)
	}
	parent := realCgroups(t, c)
	uid, gid := delegatee()
	for round := range 2 {
		parents, err := c.delegate(parent, uid, gid)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if len(parents) != len(c.hier) {
			t.Fatalf("parents = %+v", parents)
		}
		for i, p := range parents {
			if p.Controller != c.hier[i].ctrl || p.Path != filepath.Join(c.hier[i].path, parent) {
				t.Errorf("parent %d = %+v", i, p)
			}
			if got := owner(t, p.Path); got != uint32(uid) {
				t.Errorf("%s owned by %d, want %d", p.Path, got, uid)
			}
			if got := owner(t, filepath.Join(p.Path, "cgroup.procs")); c.version == 1 && got != 0 {
				t.Errorf("v1 %s/cgroup.procs handed over: %d", p.Path, got)
			}
		}
	}
	must(t, os.Chown(filepath.Join(c.hier[len(c.hier)-1].path, parent), otherUID, otherUID))
	if _, err := c.delegate(parent, uid, gid); !isRefusal(err) || !strings.Contains(err.Error(), "owned by uid 4242") {
		t.Fatalf("delegate of a parent owned by another user: %v", err)
	}
	if got := owner(t, filepath.Join(c.hier[0].path, parent)); got != uint32(uid) {
		t.Errorf("the refusal changed %s", c.hier[0].path)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type nodeState struct {
	mode, uid uint32
	data      string
}

// treeState records every file's type, mode, owner and content below root.
func treeState(t *testing.T, root string) map[string]nodeState {
	t.Helper()
	out := map[string]nodeState{}
	err := filepath.Walk(root, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		s := nodeState{mode: st.Mode, uid: st.Uid}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			s.data = string(b)
		}
		out[path] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diffTree(before, after map[string]nodeState) []string {
	var d []string
	for p, b := range before {
		if a, ok := after[p]; !ok || a != b {
			d = append(d, p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			d = append(d, p)
		}
	}
	return d
}
