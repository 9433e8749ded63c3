package guestd

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestResolveUser(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte(
		"# comment\nroot:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbroken\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte(
		"root:x:0:\napp:x:1000:\nwheel:x:10:app,other\nstaff:x:50:other\n"), 0o644)
	for _, tc := range []struct {
		spec string
		want identity
		err  bool
	}{
		{"", identity{0, 0, []uint32{0}, "/root"}, false},
		{"root", identity{0, 0, []uint32{0}, "/root"}, false},
		{"app", identity{1000, 1000, []uint32{1000, 10}, "/home/app"}, false},
		{"1000", identity{1000, 1000, []uint32{1000, 10}, "/home/app"}, false},
		{"app:staff", identity{1000, 50, []uint32{50, 10}, "/home/app"}, false},
		{"app:7", identity{1000, 7, []uint32{7, 10}, "/home/app"}, false},
		{"4242", identity{4242, 0, []uint32{0}, "/"}, false},
		{"4242:4343", identity{4242, 4343, []uint32{4343}, "/"}, false},
		{"ghost", identity{}, true},
		{"app:ghosts", identity{}, true},
		{"app:", identity{}, true},
		{":1", identity{}, true},
	} {
		got, err := resolveUser(root, tc.spec)
		if (err != nil) != tc.err {
			t.Errorf("%q: error %v, want error %v", tc.spec, err, tc.err)
			continue
		}
		if err == nil && (got.uid != tc.want.uid || got.gid != tc.want.gid || got.home != tc.want.home || !slices.Equal(got.groups, tc.want.groups)) {
			t.Errorf("%q: %+v, want %+v", tc.spec, got, tc.want)
		}
	}
	if _, err := resolveUser(root, "ghost"); !errors.Is(err, errUnknownUser) {
		t.Errorf("unknown user: %v, want errUnknownUser", err)
	}
	// An image without /etc/passwd runs numeric users only.
	if id, err := resolveUser(t.TempDir(), "5:6"); err != nil || id.uid != 5 || id.gid != 6 {
		t.Errorf("no passwd: %+v %v", id, err)
	}
}

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"A=1", "PATH=/x", "B=2", "=bad"}, map[string]string{"B": "3", "C": "4"}, "/home/u", true)
	want := []string{"A=1", "PATH=/x", "B=3", "C=4", "HOME=/home/u", "TERM=xterm"}
	if !slices.Equal(got, want) {
		t.Errorf("mergeEnv = %q, want %q", got, want)
	}
	got = mergeEnv(nil, nil, "/", false)
	if want := []string{"PATH=" + defaultPath, "HOME=/"}; !slices.Equal(got, want) {
		t.Errorf("mergeEnv of nothing = %q, want %q", got, want)
	}
}

func TestSignalByName(t *testing.T) {
	for in, want := range map[string]string{"SIGTERM": "SIGTERM", "term": "SIGTERM", "INT": "SIGINT", "9": "SIGKILL", " hup ": "SIGHUP"} {
		s, err := signalByName(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if unix.SignalName(s) != want {
			t.Errorf("%q = %v, want %s", in, s, want)
		}
	}
	for _, bad := range []string{"", "SIGNOPE", "0", "99", "-1"} {
		if _, err := signalByName(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
