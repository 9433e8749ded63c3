package fakejailer

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func fixture(t *testing.T) (exe, base string) {
	t.Helper()
	dir := t.TempDir()
	exe = filepath.Join(dir, "firecracker")
	if err := os.WriteFile(exe, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "qemu"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	return exe, t.TempDir()
}

func TestParseValid(t *testing.T) {
	exe, base := fixture(t)
	a, err := Parse([]string{"--id", "vabcdefghijklmnop", "--exec-file", exe, "--uid", "900001", "--gid=900001",
		"--chroot-base-dir", base, "--cgroup-version", "2", "--parent-cgroup", "hyper",
		"--cgroup", "memory.max=268435456", "--cgroup", "cpu.max=50000 100000",
		"--resource-limit", "no-file=1024", "--", "--api-sock", "/api.socket"})
	if err != nil {
		t.Fatal(err)
	}
	if a.ID != "vabcdefghijklmnop" || a.UID != 900001 || a.GID != 900001 || a.ChrootBase != base ||
		a.CgroupVersion != 2 || a.ParentCgroup != "hyper" || len(a.Cgroups) != 2 || a.ResourceLimits["no-file"] != 1024 {
		t.Errorf("parsed %+v", a)
	}
	if !slices.Equal(a.Forward, []string{"--api-sock", "/api.socket"}) {
		t.Errorf("forward %q", a.Forward)
	}
	// Defaults are the real jailer's.
	a, err = Parse([]string{"--id", "a-1", "--exec-file", exe, "--uid", "1", "--gid", "1"})
	if err != nil {
		t.Fatal(err)
	}
	if a.ChrootBase != "/srv/jailer" || a.CgroupVersion != 1 || a.ParentCgroup != "firecracker" {
		t.Errorf("defaults %+v", a)
	}
}

func TestParseRejects(t *testing.T) {
	exe, base := fixture(t)
	notFC := filepath.Join(filepath.Dir(exe), "qemu")
	valid := map[string]string{"--id": "vm-1", "--exec-file": exe, "--uid": "900001", "--gid": "900001",
		"--chroot-base-dir": base, "--cgroup-version": "2"}
	argv := func(over map[string]string, extra ...string) []string {
		var out []string
		for _, k := range []string{"--id", "--exec-file", "--uid", "--gid", "--chroot-base-dir", "--cgroup-version"} {
			v, ok := valid[k]
			if o, set := over[k]; set {
				v, ok = o, o != "\x00drop"
			}
			if ok {
				out = append(out, k, v)
			}
		}
		return append(out, extra...)
	}
	drop := "\x00drop"
	cases := []struct {
		name string
		argv []string
		want string
	}{
		{"missing id", argv(map[string]string{"--id": drop}), "missing required argument --id"},
		{"missing exec-file", argv(map[string]string{"--exec-file": drop}), "missing required argument --exec-file"},
		{"missing uid", argv(map[string]string{"--uid": drop}), "missing required argument --uid"},
		{"missing gid", argv(map[string]string{"--gid": drop}), "missing required argument --gid"},
		{"empty id", argv(map[string]string{"--id": ""}), "invalid --id"},
		{"underscore in id", argv(map[string]string{"--id": "vm_1"}), "invalid --id"},
		{"dot in id", argv(map[string]string{"--id": "a.b"}), "invalid --id"},
		{"slash in id", argv(map[string]string{"--id": "a/b"}), "invalid --id"},
		{"space in id", argv(map[string]string{"--id": "a b"}), "invalid --id"},
		{"non-ascii id", argv(map[string]string{"--id": "vé"}), "invalid --id"},
		{"65-char id", argv(map[string]string{"--id": strings.Repeat("a", 65)}), "invalid --id"},
		{"flag-like id", argv(map[string]string{"--id": "--uid"}), "--id needs a value"},
		{"negative uid", argv(map[string]string{"--uid": "-1"}), "invalid --uid"},
		{"name uid", argv(map[string]string{"--uid": "root"}), "invalid --uid"},
		{"uid too big", argv(map[string]string{"--uid": "4294967296"}), "invalid --uid"},
		{"hex gid", argv(map[string]string{"--gid": "0x10"}), "invalid --gid"},
		{"missing exec file", argv(map[string]string{"--exec-file": "/nonexistent/firecracker"}), "invalid --exec-file"},
		{"exec file not firecracker", argv(map[string]string{"--exec-file": notFC}), `must contain "firecracker"`},
		{"exec file a directory", argv(map[string]string{"--exec-file": base}), "not a regular file"},
		{"relative chroot base", argv(map[string]string{"--chroot-base-dir": "jails"}), "invalid --chroot-base-dir"},
		{"cgroup version 3", argv(map[string]string{"--cgroup-version": "3"}), "invalid --cgroup-version"},
		{"unknown flag", argv(nil, "--seccomp-level", "2"), "unknown argument --seccomp-level"},
		{"positional", argv(nil, "extra"), `unexpected argument "extra"`},
		{"repeated id", argv(nil, "--id", "vm-2"), "--id given more than once"},
		{"value on a switch", argv(nil, "--daemonize=yes"), "--daemonize takes no value"},
		{"new pid ns", argv(nil, "--new-pid-ns"), "does not emulate"},
		{"absolute parent cgroup", argv(nil, "--parent-cgroup", "/hyper"), "invalid --parent-cgroup"},
		{"escaping parent cgroup", argv(nil, "--parent-cgroup", "hyper/../.."), "invalid --parent-cgroup"},
		{"cgroup without value", argv(nil, "--cgroup", "memory.max"), "want <file>=<value>"},
		{"cgroup empty value", argv(nil, "--cgroup", "memory.max="), "want <file>=<value>"},
		{"cgroup without controller", argv(nil, "--cgroup", "linear=10"), "want <controller>.<file>"},
		{"cgroup v1 file under v2", argv(nil, "--cgroup", "memory.limit_in_bytes=100"), "not a cgroup v2 file"},
		{"cgroup bad memory value", argv(nil, "--cgroup", "memory.max=12x"), "bad value for memory.max"},
		{"cgroup two equals", argv(nil, "--cgroup", "memory.max=1=2"), "bad value for memory.max"},
		{"cgroup cpu.max three fields", argv(nil, "--cgroup", "cpu.max=100000 100000 5"), "bad value for cpu.max"},
		{"cgroup cpu.max max period", argv(nil, "--cgroup", "cpu.max=max max"), "bad value for cpu.max"},
		{"cgroup path in file", argv(nil, "--cgroup", "../memory.max=1"), "want <controller>.<file>"},
		{"bad resource limit", argv(nil, "--resource-limit", "cpu=1"), "invalid --resource-limit"},
		{"missing netns", argv(nil, "--netns", "/nonexistent/netns"), "invalid --netns"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.argv)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%q: got %v, want an error with %q", c.argv, err, c.want)
			}
		})
	}
	// Under cgroup v1 the v1 files are the valid ones.
	if _, err := Parse(argv(map[string]string{"--cgroup-version": "1"}, "--cgroup", "memory.limit_in_bytes=268435456")); err != nil {
		t.Errorf("v1 file under v1: %v", err)
	}
	if _, err := Parse(argv(map[string]string{"--cgroup-version": "1"}, "--cgroup", "memory.max=1")); err == nil {
		t.Error("v2 file under v1 accepted")
	}
}
