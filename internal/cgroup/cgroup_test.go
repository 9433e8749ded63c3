package cgroup

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const testVM = "vabcdefghijklmnop"

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// fakeTree lays out parents of plain directories, one per controller
// ("" for v2). With files, the VM cgroup exists with the files the kernel
// would show in it, as a cgroup left by an earlier attempt.
func fakeTree(t *testing.T, version int, files bool) (*Tree, string) {
	t.Helper()
	root := t.TempDir()
	ctrls := []string{""}
	if version == 1 {
		ctrls = v1Controllers
	}
	var parents []Parent
	for _, c := range ctrls {
		p := filepath.Join(root, c, "hyper")
		must(t, os.MkdirAll(p, 0o755))
		parents = append(parents, Parent{Controller: c, Path: p})
		if !files {
			continue
		}
		names := map[string][]string{
			"": {"cpu.max", "memory.max", "cgroup.procs"}, "cpu": {"cpu.cfs_period_us", "cpu.cfs_quota_us", "cgroup.procs"},
			"memory": {"memory.limit_in_bytes", "cgroup.procs"}, "freezer": {"cgroup.procs"}, "pids": {"cgroup.procs"},
		}[c]
		must(t, os.Mkdir(filepath.Join(p, testVM), 0o755))
		for _, n := range names {
			must(t, os.WriteFile(filepath.Join(p, testVM, n), nil, 0o644))
		}
	}
	tr, err := newTree(version, parents)
	must(t, err)
	return tr, root
}

func TestCreateWritesLimits(t *testing.T) {
	for _, c := range []struct {
		version int
		want    map[string]string
	}{
		{1, map[string]string{"cpu/hyper/" + testVM + "/cpu.cfs_period_us": "100000", "cpu/hyper/" + testVM + "/cpu.cfs_quota_us": "150000",
			"memory/hyper/" + testVM + "/memory.limit_in_bytes": "268435456"}},
		{2, map[string]string{"hyper/" + testVM + "/cpu.max": "150000 100000", "hyper/" + testVM + "/memory.max": "268435456"}},
	} {
		t.Run("v"+strconv.Itoa(c.version), func(t *testing.T) {
			tr, root := fakeTree(t, c.version, true)
			must(t, tr.Create(testVM, 1500, 256<<20))
			for path, want := range c.want {
				if got := readString(t, filepath.Join(root, path)); got != want {
					t.Errorf("%s = %q, want %q", path, got, want)
				}
			}
			must(t, tr.Attach(testVM, 4242))
			for _, p := range tr.Parents() {
				if got := readString(t, filepath.Join(p.Path, testVM, "cgroup.procs")); got != "4242" {
					t.Errorf("%s cgroup.procs = %q", p.Controller, got)
				}
			}
		})
	}
}

// TestCreateUndo: a limit file that cannot be written (here: missing, as
// when a controller is not enabled) fails the create, and every cgroup it
// made is removed, while one that was there before stays.
func TestCreateUndo(t *testing.T) {
	tr, root := fakeTree(t, 1, false)
	kept := filepath.Join(root, "freezer", "hyper", testVM)
	must(t, os.Mkdir(kept, 0o755))
	err := tr.Create(testVM, 1000, 1<<30)
	if err == nil || !strings.Contains(err.Error(), "cpu.cfs_period_us") {
		t.Fatalf("create with no limit files: %v", err)
	}
	for _, c := range v1Controllers {
		dir := filepath.Join(root, c, "hyper", testVM)
		_, err := os.Stat(dir)
		if exists := err == nil; exists != (dir == kept) {
			t.Errorf("%s exists = %v after a failed create", dir, exists)
		}
	}
}

func TestBadInput(t *testing.T) {
	tr, root := fakeTree(t, 2, false)
	for _, c := range []struct {
		name string
		err  error
		want string
	}{
		{"bad id", tr.Create("v../../etc", 1000, 1<<30), "invalid vm id"},
		{"id with a slash", tr.Create("vabcdefghijklmn/p", 1000, 1<<30), "invalid vm id"},
		{"no cpu", tr.Create(testVM, 0, 1<<30), "cpu limit 0"},
		{"cpu below the kernel's minimum quota", tr.Create(testVM, 9, 1<<30), "cpu limit 9"},
		{"too many cpus", tr.Create(testVM, MaxMilliCPU+1, 1<<30), "cpu limit"},
		{"memory below 1MiB", tr.Create(testVM, 1000, 4096), "memory limit 4096"},
		{"attach pid 0 (the writer itself)", tr.Attach(testVM, 0), "invalid pid 0"},
		{"attach init", tr.Attach(testVM, 1), "invalid pid 1"},
		{"attach to a bad id", tr.Attach("..", 42), "invalid vm id"},
		{"attach to a missing cgroup", tr.Attach(testVM, 42), "no such file"},
	} {
		if c.err == nil || !strings.Contains(c.err.Error(), c.want) {
			t.Errorf("%s: %v; want an error containing %q", c.name, c.err, c.want)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "hyper")); len(entries) != 0 {
		t.Errorf("bad input left %v", entries)
	}
}

func TestNewRefuses(t *testing.T) {
	dir := t.TempDir()
	v1 := func(ctrls ...string) []Parent {
		var ps []Parent
		for _, c := range ctrls {
			ps = append(ps, Parent{Controller: c, Path: "/sys/fs/cgroup/" + c + "/hyper"})
		}
		return ps
	}
	for _, c := range []struct {
		name    string
		version int
		parents []Parent
		want    string
	}{
		{"version 3", 3, v1("cpu", "memory"), "cgroup version 3"},
		{"v2 with two parents", 2, []Parent{{Path: "/a"}, {Path: "/b"}}, "one hierarchy"},
		{"v2 with a controller", 2, []Parent{{Controller: "cpu", Path: "/a"}}, "one hierarchy"},
		{"v1 without memory", 1, v1("cpu", "freezer"), "no memory hierarchy"},
		{"v1 unknown controller", 1, v1("cpu", "memory", "cpuset"), `unknown v1 controller "cpuset"`},
		{"v1 controller twice", 1, v1("cpu", "memory", "cpu"), "given twice"},
		{"relative path", 2, []Parent{{Path: "sys/fs/cgroup/hyper"}}, "absolute, clean"},
		{"unclean path", 2, []Parent{{Path: "/sys/fs/cgroup/../hyper"}}, "absolute, clean"},
		{"root", 2, []Parent{{Path: "/"}}, "absolute, clean"},
		{"not a cgroup file system", 2, []Parent{{Path: dir}}, "not on a cgroup v2 file system"},
		{"missing parent", 2, []Parent{{Path: filepath.Join(dir, "missing")}}, "no such file"},
	} {
		if _, err := New(c.version, c.parents); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error containing %q", c.name, err, c.want)
		}
	}
}

// realParents makes a parent cgroup as the helper's delegation would (as
// root here) in every hierarchy of this machine that has the cpu and
// memory controllers, and removes it afterwards.
func realParents(t *testing.T) (int, []Parent) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a parent cgroup")
	}
	name := "hyper-cgroup-test-" + strconv.Itoa(os.Getpid())
	var version int
	var parents []Parent
	var fs unix.Statfs_t
	must(t, unix.Statfs("/sys/fs/cgroup", &fs))
	switch fs.Type {
	case unix.CGROUP2_SUPER_MAGIC:
		version = 2
		ctrls, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
		must(t, err)
		if !strings.Contains(string(ctrls), "cpu") || !strings.Contains(string(ctrls), "memory") {
			t.Skipf("cgroup v2 without the cpu and memory controllers: %q", ctrls)
		}
		must(t, os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+cpu +memory"), 0))
		parents = []Parent{{Path: filepath.Join("/sys/fs/cgroup", name)}}
	case unix.TMPFS_MAGIC:
		version = 1
		for _, c := range v1Controllers {
			parents = append(parents, Parent{Controller: c, Path: filepath.Join("/sys/fs/cgroup", c, name)})
		}
	default:
		t.Skip("no cgroup file system at /sys/fs/cgroup")
	}
	for _, p := range parents {
		must(t, os.Mkdir(p.Path, 0o755))
		t.Cleanup(func() {
			entries, _ := os.ReadDir(p.Path)
			for _, e := range entries {
				if e.IsDir() {
					os.Remove(filepath.Join(p.Path, e.Name()))
				}
			}
			if err := os.Remove(p.Path); err != nil {
				t.Errorf("remove test cgroup: %v", err)
			}
		})
	}
	if version == 2 {
		must(t, os.WriteFile(filepath.Join(parents[0].Path, "cgroup.subtree_control"), []byte("+cpu +memory"), 0))
	}
	return version, parents
}

// sleeper starts a child that the test kills and reaps at cleanup.
func sleeper(t *testing.T) int {
	cmd := exec.Command("sleep", "1000")
	must(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd.Process.Pid
}

// TestReal creates a VM cgroup on this machine's cgroups (v1 here, v2 on
// most hosts), checks the limits the kernel took, moves a process in, and
// checks that the parent's limit bounds what a VM cgroup may ask for: a
// refused limit leaves no cgroup behind in any hierarchy.
func TestReal(t *testing.T) {
	version, parents := realParents(t)
	tr, err := New(version, parents)
	must(t, err)
	must(t, tr.Create(testVM, 500, 64<<20))
	want := map[string]string{"cpu.max": "50000 100000", "memory.max": "67108864",
		"cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000", "memory.limit_in_bytes": "67108864"}
	for _, p := range parents {
		for file, value := range want {
			path := filepath.Join(p.Path, testVM, file)
			if _, err := os.Stat(path); err == nil {
				if got := readString(t, path); got != value {
					t.Errorf("%s = %q, want %q", path, got, value)
				}
			}
		}
	}
	pid := sleeper(t)
	must(t, tr.Attach(testVM, pid))
	cg := readString(t, "/proc/"+strconv.Itoa(pid)+"/cgroup")
	for _, p := range parents {
		suffix := "/" + filepath.Base(p.Path) + "/" + testVM
		found := false
		for _, line := range strings.Split(cg, "\n") {
			f := strings.SplitN(line, ":", 3)
			if len(f) == 3 && strings.HasSuffix(f[2], suffix) && (p.Controller == "" || strings.Contains(","+f[1]+",", ","+p.Controller+",")) {
				found = true
			}
		}
		if !found {
			t.Errorf("process not in %s/%s:\n%s", p.Path, testVM, cg)
		}
	}
	// Creating it again reuses it.
	must(t, tr.Create(testVM, 500, 64<<20))

	// A parent limited to half a CPU: the kernel refuses a VM asking for
	// one (v1; v2 takes the lower of the two), and nothing is left.
	if version == 1 {
		cpu := parents[0].Path
		must(t, os.WriteFile(filepath.Join(cpu, "cpu.cfs_quota_us"), []byte("50000"), 0))
		other := "vqrstuvwxyzabcdef"
		err := tr.Create(other, 1000, 64<<20)
		if err == nil || !strings.Contains(err.Error(), "cpu.cfs_quota_us") {
			t.Fatalf("create above the parent's quota: %v", err)
		}
		for _, p := range parents {
			if _, err := os.Stat(filepath.Join(p.Path, other)); !os.IsNotExist(err) {
				t.Errorf("refused create left %s/%s: %v", p.Path, other, err)
			}
		}
	}
}
