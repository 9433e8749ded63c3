package suid

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// escapeTree builds a directory with symlinks that lead out of it (absolute,
// relative, to a directory, to a file) and returns it with a descriptor.
func escapeTree(t testing.TB) (string, int) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	for _, d := range []string{"root/a/b", "outside"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"root/a/b/file", "outside/secret"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{
		"root/abs": "/etc", "root/up": "..", "root/a/out": "../../outside", "root/a/b/secret": "../../../outside/secret",
		"root/a/self": ".", "root/a/b/loop": "loop",
	} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return root, fd
}

func TestOpenBeneathRefusesEveryEscape(t *testing.T) {
	root, fd := escapeTree(t)
	for _, rel := range []string{"abs", "abs/passwd", "up", "up/outside/secret", "a/out/secret", "a/b/secret",
		"a/self/b/file", "a/b/loop", "../outside/secret", "/etc/passwd", "a/../../outside/secret"} {
		got, err := openBeneath(fd, rel, rel, unix.O_RDONLY, 0)
		if err == nil {
			unix.Close(got)
			t.Errorf("openBeneath(%q) followed its way out", rel)
			continue
		}
		var r *refusal
		if !errors.As(err, &r) && !notExist(err) {
			t.Errorf("openBeneath(%q): %v is neither a refusal nor not-exist", rel, err)
		}
	}
	got, err := openBeneath(fd, "a/b/file", "a/b/file", unix.O_RDONLY, 0)
	if err != nil {
		t.Fatalf("plain path refused: %v", err)
	}
	defer unix.Close(got)
	if p, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(got)); p != filepath.Join(root, "a/b/file") {
		t.Fatalf("opened %s", p)
	}
}

// FuzzOpenBeneath: whatever relative path is asked for, openBeneath either
// fails or opens exactly the lexical path below the root, which proves it
// followed no symlink and did not leave the tree.
func FuzzOpenBeneath(f *testing.F) {
	for _, s := range []string{"a/b/file", "abs/passwd", "up/outside/secret", "a/out/secret", "a/self/b/file",
		"a/b/../b/file", "../outside/secret", "/etc/passwd", "a//b/file", ".", "", "a/b/loop"} {
		f.Add(s)
	}
	root, fd := escapeTree(f)
	f.Fuzz(func(t *testing.T, rel string) {
		got, err := openBeneath(fd, rel, rel, unix.O_PATH, 0)
		if err != nil {
			return
		}
		defer unix.Close(got)
		p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(got))
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(root, rel); p != want {
			t.Fatalf("openBeneath(%q) opened %s, want %s", rel, p, want)
		}
	})
}

func TestRemoveTreeNeverFollowsLinks(t *testing.T) {
	root, fd := escapeTree(t)
	outside := filepath.Join(filepath.Dir(root), "outside")
	if err := removeTree(fd, "a", filepath.Join(root, "a")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(root, "a")); !os.IsNotExist(err) {
		t.Fatalf("a survived: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "secret")); err != nil {
		t.Fatalf("removal followed a link out of the tree: %v", err)
	}
	if err := removeTree(fd, "a", "a"); err != nil {
		t.Fatalf("removing a missing tree: %v", err)
	}
}

func TestCheckBinary(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make root-owned binaries")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "jailer")
	os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755)
	if err := checkBinary("tools.jailer", bin, "jailer"); err != nil {
		t.Fatalf("good binary refused: %v", err)
	}
	userDir := filepath.Join(dir, "user")
	os.Mkdir(userDir, 0o755)
	os.WriteFile(filepath.Join(userDir, "jailer"), []byte("x"), 0o755)
	os.Chown(userDir, 12345, 12345)
	os.Symlink(bin, filepath.Join(dir, "link"))
	os.Mkdir(filepath.Join(dir, "l"), 0o755)
	os.Symlink(bin, filepath.Join(dir, "l", "jailer"))
	for _, c := range []struct{ path, mode, want string }{
		{"", "", "not configured"},
		{"jailer", "", "absolute"},
		{filepath.Join(dir, "jailer-v1.16.0"), "", "basename"},
		{filepath.Join(dir, "l", "jailer"), "", "symlink"},
		{filepath.Join(userDir, "jailer"), "", "not owned by root or is writable"},
		{bin, "chown", "not owned by root"},
		{bin, "g+w", "group/other-writable"},
		{bin, "o+w", "group/other-writable"},
		{bin, "noexec", "not executable"},
	} {
		os.Chown(bin, 0, 0)
		os.Chmod(bin, 0o755)
		switch c.mode {
		case "chown":
			os.Chown(bin, 12345, 0)
		case "g+w":
			os.Chmod(bin, 0o775)
		case "o+w":
			os.Chmod(bin, 0o757)
		case "noexec":
			os.Chmod(bin, 0o644)
		}
		err := checkBinary("tools.jailer", c.path, "jailer")
		var r *refusal
		if !errors.As(err, &r) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("checkBinary(%q, %s) = %v, want a refusal with %q", c.path, c.mode, err, c.want)
		}
	}
}

func TestCheckShared(t *testing.T) {
	caller = ids{1000, 1000}
	ok := unix.Stat_t{Mode: unix.S_IFREG | 0o644}
	if err := checkShared(ok, "f", 900001, 900001); err != nil {
		t.Fatalf("root 0644 refused: %v", err)
	}
	mine := ok
	mine.Uid, mine.Gid = 1000, 1000
	if err := checkShared(mine, "f", 900001, 900001); err != nil {
		t.Fatalf("caller's 0644 refused: %v", err)
	}
	for name, st := range map[string]unix.Stat_t{
		"dir":            {Mode: unix.S_IFDIR | 0o755},
		"fifo":           {Mode: unix.S_IFIFO | 0o644},
		"group-writable": {Mode: unix.S_IFREG | 0o664},
		"world-writable": {Mode: unix.S_IFREG | 0o646},
		"unreadable":     {Mode: unix.S_IFREG | 0o640},
		"vm-owned":       {Mode: unix.S_IFREG | 0o644, Uid: 900001},
		"vm-group":       {Mode: unix.S_IFREG | 0o644, Gid: 900001},
		"other-user":     {Mode: unix.S_IFREG | 0o644, Uid: 4242},
	} {
		if err := checkShared(st, name, 900001, 900001); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func TestIDInDB(t *testing.T) {
	p := filepath.Join(t.TempDir(), "passwd")
	os.WriteFile(p, []byte("root:x:0:0::/root:/bin/sh\nbad line\nhyper:x:900010:900010::/:/bin/false\n"), 0o644)
	for id, want := range map[uint32]string{0: "root", 900010: "hyper", 900011: ""} {
		if got, err := idInDB(p, id); err != nil || got != want {
			t.Errorf("idInDB(%d) = %q, %v; want %q", id, got, err, want)
		}
	}
	if _, err := idInDB(filepath.Join(t.TempDir(), "missing"), 1); err == nil {
		t.Error("a missing database must fail closed")
	}
}
