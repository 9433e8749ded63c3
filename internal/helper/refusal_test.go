package helper_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// refusalCase is one request the helper must refuse (exit 2 unless code
// says otherwise) with stderr containing want, leaving every file, owner,
// mode, link count and cgroup exactly as they were.
type refusalCase struct {
	name  string
	want  string
	code  int
	plain bool // run the build without the setuid bit
	// setup prepares the situation as root and returns the argv.
	setup func(t *testing.T, e *testEnv, v *vm) []string
}

func u32(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func prepareArgv(v *vm) []string {
	return []string{"jail", "prepare", v.id, u32(v.uid), u32(v.uid), v.image, "--initrd", filepath.Base(v.initrd)}
}

func jailerArgv(v *vm) []string { return []string{"jailer", v.id, u32(v.uid), u32(v.uid)} }

func args(a ...string) func(*testing.T, *testEnv, *vm) []string {
	return func(*testing.T, *testEnv, *vm) []string { return a }
}

// withVM builds argv from the test VM after an optional mutation.
func withVM(mutate func(t *testing.T, e *testEnv, v *vm), argv func(v *vm) []string) func(*testing.T, *testEnv, *vm) []string {
	return func(t *testing.T, e *testEnv, v *vm) []string {
		if mutate != nil {
			mutate(t, e, v)
		}
		return argv(v)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// replaceWithSymlink moves path aside and puts a symlink to target in its
// place; the test's cleanup puts it back.
func replaceWithSymlink(t *testing.T, path, target string) {
	t.Helper()
	aside := path + ".aside"
	_, err := os.Lstat(path)
	moved := err == nil
	if moved {
		must(t, os.Rename(path, aside))
	}
	must(t, os.Symlink(target, path))
	t.Cleanup(func() {
		os.Remove(path)
		if moved {
			os.Rename(aside, path)
		}
	})
}

// chownFor changes owner and mode of path for the test.
func chownFor(t *testing.T, path string, uid, gid int, mode uint32) {
	t.Helper()
	var st syscall.Stat_t
	must(t, syscall.Lstat(path, &st))
	must(t, os.Lchown(path, uid, gid))
	must(t, syscall.Chmod(path, mode))
	t.Cleanup(func() {
		os.Lchown(path, int(st.Uid), int(st.Gid))
		syscall.Chmod(path, st.Mode&0o7777)
	})
}

// ensureJails makes the root-owned jail base as jail prepare would.
func ensureJails(t *testing.T, e *testEnv) string {
	fc := filepath.Join(e.work, "jails", "firecracker")
	must(t, os.MkdirAll(fc, 0o755))
	return fc
}

func refusalCases() []refusalCase {
	vmArg := func(id string) func(*testing.T, *testEnv, *vm) []string {
		return withVM(nil, func(v *vm) []string {
			return []string{"jail", "prepare", id, u32(v.uid), u32(v.uid), v.image, "--initrd", filepath.Base(v.initrd)}
		})
	}
	prep := func(mutate func(t *testing.T, e *testEnv, v *vm)) func(*testing.T, *testEnv, *vm) []string {
		return withVM(mutate, prepareArgv)
	}
	jailer := func(mutate func(t *testing.T, e *testEnv, v *vm)) func(*testing.T, *testEnv, *vm) []string {
		return withVM(mutate, jailerArgv)
	}
	config := func(mutate func(*cfgFields)) func(t *testing.T, e *testEnv, v *vm) {
		return func(t *testing.T, e *testEnv, v *vm) { e.setConfig(t, mutate) }
	}
	prepared := func(then func(t *testing.T, e *testEnv, v *vm)) func(t *testing.T, e *testEnv, v *vm) {
		return func(t *testing.T, e *testEnv, v *vm) {
			e.prepare(t, v)
			if then != nil {
				then(t, e, v)
			}
		}
	}
	grant := func(op string, mutate func(t *testing.T, e *testEnv, v *vm)) func(*testing.T, *testEnv, *vm) []string {
		return withVM(prepared(mutate), func(v *vm) []string { return []string{"jail", op, v.id} })
	}
	wide := config(func(c *cfgFields) { c.Lo, c.Hi = 1, 4_000_000_000 })
	tools := func(e *testEnv, name string) string { return filepath.Join(e.dir, "tools", name) }

	return []refusalCase{
		// Arguments: every one is checked before anything else happens.
		{name: "vm id with _", want: "invalid vm-id", setup: vmArg("vabcdefghijklmn_p")},
		{name: "vm id with -", want: "invalid vm-id", setup: vmArg("vabcdefghijklmn-p")},
		{name: "vm id upper case", want: "invalid vm-id", setup: vmArg("vABCDEFGHIJKLMNOP")},
		{name: "vm id too short", want: "invalid vm-id", setup: vmArg("vabcdefghijklmno")},
		{name: "vm id too long", want: "invalid vm-id", setup: vmArg("vabcdefghijklmnopq")},
		{name: "vm id outside base32", want: "invalid vm-id", setup: vmArg("vabcdefghijklmn01")},
		{name: "vm id not starting with v", want: "invalid vm-id", setup: vmArg("xabcdefghijklmnop")},
		{name: "vm id ..", want: "invalid vm-id", setup: args("jail", "remove", "..")},
		{name: "vm id with path traversal", want: "invalid vm-id", setup: args("jail", "remove", "v/../../../../etc")},
		{name: "image id upper case", want: "invalid image-id", setup: withVM(nil, func(v *vm) []string {
			return []string{"jail", "prepare", v.id, u32(v.uid), u32(v.uid), strings.ToUpper(v.image), "--initrd", filepath.Base(v.initrd)}
		})},
		{name: "image id wrong length", want: "invalid image-id", setup: withVM(nil, func(v *vm) []string {
			return []string{"jail", "prepare", v.id, u32(v.uid), u32(v.uid), v.image[2:], "--initrd", filepath.Base(v.initrd)}
		})},
		{name: "image id with ..", want: "invalid image-id", setup: withVM(nil, func(v *vm) []string {
			return []string{"jail", "prepare", v.id, u32(v.uid), u32(v.uid), "../../" + v.image[6:], "--initrd", filepath.Base(v.initrd)}
		})},
		{name: "kernel name with ..", want: "invalid --kernel", setup: withVM(nil, func(v *vm) []string {
			return append(prepareArgv(v), "--kernel", "../../etc/shadow")
		})},
		{name: "kernel name absolute", want: "invalid --kernel", setup: withVM(nil, func(v *vm) []string {
			return append(prepareArgv(v), "--kernel", "/boot/vmlinuz")
		})},
		{name: "uid 0", want: "invalid uid", setup: withVM(nil, func(v *vm) []string {
			return []string{"jail", "prepare", v.id, "0", u32(v.uid), v.image, "--initrd", filepath.Base(v.initrd)}
		})},
		{name: "gid 0", want: "invalid gid", setup: withVM(nil, func(v *vm) []string {
			return []string{"jailer", v.id, u32(v.uid), "0"}
		})},
		{name: "uid with leading zero", want: "invalid uid", setup: withVM(nil, func(v *vm) []string {
			return []string{"jail", "prepare", v.id, "0" + u32(v.uid), u32(v.uid), v.image, "--initrd", filepath.Base(v.initrd)}
		})},
		{name: "uid negative", want: "invalid uid", setup: withVM(nil, func(v *vm) []string {
			return []string{"jailer", v.id, "-1", u32(v.uid)}
		})},
		{name: "uid below the range", want: "outside jails.uid_gid_range", setup: withVM(nil, func(v *vm) []string {
			return []string{"jail", "prepare", v.id, u32(v.uid - 2), u32(v.uid), v.image, "--initrd", filepath.Base(v.initrd)}
		})},
		{name: "uid above the range", want: "outside jails.uid_gid_range", setup: withVM(nil, func(v *vm) []string {
			return []string{"jailer", v.id, u32(v.uid + 100), u32(v.uid)}
		})},
		{name: "gid above the range", want: "outside jails.uid_gid_range", setup: withVM(nil, func(v *vm) []string {
			return []string{"jail", "prepare", v.id, u32(v.uid), u32(v.uid + 100), v.image, "--initrd", filepath.Base(v.initrd)}
		})},
		{name: "uid of an existing user", want: `belongs to "daemon"`, setup: withVM(wide, func(v *vm) []string {
			return []string{"jail", "prepare", v.id, "1", u32(v.uid), v.image, "--initrd", filepath.Base(v.initrd)}
		})},
		{name: "gid of an existing group", want: `belongs to "daemon"`, setup: withVM(wide, func(v *vm) []string {
			return []string{"jailer", v.id, u32(v.uid), "1"}
		})},
		{name: "uid of the caller", want: "caller's own", setup: withVM(wide, func(v *vm) []string {
			return []string{"jail", "prepare", v.id, u32(env.uid), u32(v.uid), v.image, "--initrd", filepath.Base(v.initrd)}
		})},
		{name: "unknown op", want: "unknown operation", setup: args("jail", "chmod", "vabcdefghijklmnop")},
		{name: "extra argument", want: "unexpected argument", setup: args("cgroup", "list", "extra")},
		{name: "jailer flag injection", want: "unexpected argument", setup: withVM(nil, func(v *vm) []string {
			return append(jailerArgv(v), "--exec-file", "/bin/sh")
		})},
		{name: "jailer -- injection", want: "unexpected argument", setup: withVM(nil, func(v *vm) []string {
			return append(jailerArgv(v), "--", "--api-sock", "/etc/x")
		})},
		{name: "netns without hyper- prefix", want: "invalid --netns", setup: withVM(nil, func(v *vm) []string {
			return append(jailerArgv(v), "--netns", "../../proc/1/ns/net")
		})},
		{name: "flag given twice", want: "given twice", setup: withVM(nil, func(v *vm) []string {
			return []string{"jail", "prepare", v.id, u32(v.uid), u32(v.uid), v.image, "--kernel", "vmlinux", "--kernel", "vmlinux-2", "--initrd", filepath.Base(v.initrd)}
		})},
		{name: "delegate with an argument", want: "unexpected argument", setup: args("cgroup", "delegate", "--pid", "1")},
		// Gone: hyperd makes and fills VM cgroups in its delegated parent.
		{name: "removed op cgroup create", want: "unknown operation", setup: withVM(nil, func(v *vm) []string {
			return []string{"cgroup", "create", v.id, "--cpu", "1", "--mem", "1048576"}
		})},
		{name: "removed op cgroup attach", want: "unknown operation", setup: withVM(nil, func(v *vm) []string {
			return []string{"cgroup", "attach", v.id, "4242"}
		})},
		{name: "version with --config", want: "unexpected argument", setup: args("version", "--config", "/tmp/x.toml")},

		// Install and config trust.
		{name: "binary not setuid", want: "not installed setuid root", plain: true, setup: withVM(nil, prepareArgv)},
		{name: "config owned by the caller", want: "not owned by root", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, e.config, int(e.uid), int(e.gid), 0o644)
		})},
		{name: "config group-writable", want: "writable", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, e.config, 0, 0, 0o664)
		})},
		{name: "config world-writable", want: "writable", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, e.config, 0, 0, 0o666)
		})},
		{name: "config is a symlink", want: "symlink", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			real := e.config + ".real"
			must(t, os.WriteFile(real, []byte(e.cfg.text()), 0o644))
			t.Cleanup(func() { os.Remove(real) })
			replaceWithSymlink(t, e.config, real)
		})},
		{name: "config not valid TOML", want: "config", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			e.writeRawConfig(t, "work_dir = [\n")
		})},
		{name: "config unknown key", want: "unknown key", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			e.setConfig(t, func(c *cfgFields) { c.Extra = "wrk_dir = \"/\"" })
		})},
		{name: "config uid_gid_range min 0", want: "uid_gid_range", setup: prep(config(func(c *cfgFields) { c.Lo = 0 }))},
		{name: "config relative work_dir", want: "work_dir", setup: prep(config(func(c *cfgFields) { c.WorkDir = "srv/hyper" }))},
		// The config is read as the caller: root could read it, the caller
		// cannot, so this proves privileges were dropped first.
		{name: "config unreadable by the caller", want: "permission denied", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, filepath.Dir(e.config), 0, 0, 0o700)
		})},

		// Paths: symlinks and foreign files planted by the caller or others.
		{name: "disk is a symlink to /etc/shadow", want: "symlink", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			replaceWithSymlink(t, v.disk, "/etc/shadow")
		})},
		{name: "vm dir is a symlink", want: "symlink", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			other := e.newVM(t)
			replaceWithSymlink(t, v.dir, other.dir)
		})},
		{name: "initramfs is a symlink", want: "symlink", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			replaceWithSymlink(t, v.initrd, filepath.Join(e.kernel, "vmlinux"))
		})},
		{name: "config disk is a symlink", want: "symlink", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			replaceWithSymlink(t, v.config, "/etc/shadow")
		})},
		{name: "base image is a symlink", want: "symlink", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			replaceWithSymlink(t, v.imagePath, "/etc/passwd")
		})},
		{name: "kernel is a symlink", want: "symlink", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			replaceWithSymlink(t, filepath.Join(e.kernel, "vmlinux"), "/etc/passwd")
		})},
		{name: "jails dir is a symlink", want: "a symlink or a file is in the way", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			ensureJails(t, e)
			elsewhere := filepath.Join(e.dir, "elsewhere")
			must(t, os.MkdirAll(filepath.Join(elsewhere, "firecracker"), 0o755))
			t.Cleanup(func() { os.RemoveAll(elsewhere) })
			replaceWithSymlink(t, filepath.Join(e.work, "jails"), elsewhere)
		})},
		{name: "jails/firecracker is a symlink", want: "a symlink or a file is in the way", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			fc := ensureJails(t, e)
			replaceWithSymlink(t, fc, "/tmp")
		})},
		{name: "jails dir owned by the caller", want: "must be a directory owned by root", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			ensureJails(t, e)
			chownFor(t, filepath.Join(e.work, "jails"), int(e.uid), int(e.gid), 0o755)
		})},
		{name: "jails dir world-writable", want: "must be a directory owned by root", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			ensureJails(t, e)
			chownFor(t, filepath.Join(e.work, "jails"), 0, 0, 0o777)
		})},
		{name: "disk owned by root", want: "owned by the caller", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, v.disk, 0, 0, 0o666)
		})},
		{name: "disk with a second link", want: "one link", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			must(t, os.Link(v.disk, v.disk+".2"))
		})},
		{name: "disk is a FIFO", want: "regular file", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			must(t, os.Remove(v.disk))
			must(t, syscall.Mkfifo(v.disk, 0o660))
			must(t, os.Chown(v.disk, int(e.uid), int(e.gid)))
		})},
		{name: "initramfs group-writable", want: "group/other-writable", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, v.initrd, int(e.uid), int(e.gid), 0o664)
		})},
		{name: "initramfs owned by the VM uid", want: "owned by root or the caller", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, v.initrd, int(v.uid), int(e.gid), 0o644)
		})},
		{name: "initramfs outside kernel.dir", code: 1, want: "no such file or directory", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			// The name is looked up below <kernel.dir>/initramfs only: a
			// file of that name elsewhere (the VM's directory) is not it.
			must(t, os.Rename(v.initrd, filepath.Join(v.dir, filepath.Base(v.initrd))))
		})},
		{name: "config disk group-writable", want: "group/other-writable", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, v.config, int(e.uid), int(e.gid), 0o664)
		})},
		{name: "config disk unreadable by the VM", want: "not readable by others", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, v.config, int(e.uid), int(e.gid), 0o640)
		})},
		{name: "base image group-writable", want: "group/other-writable", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, v.imagePath, int(e.uid), int(e.gid), 0o664)
		})},
		{name: "base image world-writable", want: "group/other-writable", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, v.imagePath, int(e.uid), int(e.gid), 0o646)
		})},
		{name: "base image owned by the VM uid", want: "owned by root or the caller", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, v.imagePath, int(v.uid), int(e.gid), 0o644)
		})},
		{name: "base image owned by another user", want: "owned by root or the caller", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, v.imagePath, 1, 1, 0o644)
		})},
		// A kernel root can read but the caller cannot: the open runs as the
		// caller, before root is taken, so nothing (not even the missing
		// jails dir) is created.
		{name: "kernel unreadable by the caller", code: 1, want: "permission denied", setup: prep(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, filepath.Join(e.kernel, "vmlinux"), 0, 0, 0o600)
			jails := filepath.Join(e.work, "jails")
			if _, err := os.Stat(jails); err == nil {
				must(t, os.Rename(jails, jails+".aside"))
				t.Cleanup(func() { os.Rename(jails+".aside", jails) })
			}
		})},
		{name: "jail already exists", want: "already exists", setup: prep(prepared(nil))},

		// Socket hand-off.
		{name: "api socket is a regular file", want: "not a socket", setup: grant("grant-api", func(t *testing.T, e *testEnv, v *vm) {
			p := filepath.Join(e.jailRoot(v.id), "api.socket")
			must(t, os.WriteFile(p, []byte("x"), 0o600))
			must(t, os.Chown(p, int(v.uid), int(v.uid)))
		})},
		{name: "api socket is a symlink to a socket", want: "not a socket", setup: grant("grant-api", func(t *testing.T, e *testEnv, v *vm) {
			sock := filepath.Join(e.dir, "other.socket")
			l, err := net.Listen("unix", sock)
			must(t, err)
			t.Cleanup(func() { l.Close() })
			must(t, os.Symlink(sock, filepath.Join(e.jailRoot(v.id), "api.socket")))
		})},
		{name: "vsock socket is a directory", want: "not a socket", setup: grant("grant-vsock", func(t *testing.T, e *testEnv, v *vm) {
			must(t, os.Mkdir(filepath.Join(e.jailRoot(v.id), "vsock.socket"), 0o700))
		})},
		{name: "jail root is a symlink", want: "a symlink or a file is in the way", setup: grant("grant-api", func(t *testing.T, e *testEnv, v *vm) {
			replaceWithSymlink(t, e.jailRoot(v.id), filepath.Join(e.dir, "etc"))
		})},
		{name: "jail dir is a symlink", want: "a symlink or a file is in the way", setup: grant("grant-api", func(t *testing.T, e *testEnv, v *vm) {
			replaceWithSymlink(t, e.jailDir(v.id), filepath.Join(e.dir, "etc"))
		})},
		{name: "socket of another owner", want: "not a socket of this jail", setup: grant("grant-api", func(t *testing.T, e *testEnv, v *vm) {
			p := filepath.Join(e.jailRoot(v.id), "api.socket")
			l, err := net.Listen("unix", p)
			must(t, err)
			t.Cleanup(func() { l.Close() })
		})},

		{name: "jail root not owned by a jail uid", want: "not owned by a jail uid", setup: grant("grant-api", func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, e.jailRoot(v.id), 0, 0, 0o700)
		})},
		{name: "remove with a caller-owned jails dir", want: "must be a directory owned by root", setup: withVM(prepared(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, filepath.Join(e.work, "jails"), int(e.uid), int(e.gid), 0o755)
		}), func(v *vm) []string { return []string{"jail", "remove", v.id} })},

		// Binaries the helper runs, and the jailer's chroot base.
		{name: "jailer not configured", want: "tools.jailer is not configured", setup: jailer(config(func(c *cfgFields) { c.Jailer = "" }))},
		{name: "firecracker not configured", want: "tools.firecracker is not configured", setup: jailer(config(func(c *cfgFields) { c.Firecracker = "" }))},
		{name: "jailer not owned by root", want: "not owned by root", setup: jailer(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, tools(e, "jailer"), int(e.uid), 0, 0o755)
		})},
		{name: "jailer group-writable", want: "group/other-writable", setup: jailer(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, tools(e, "jailer"), 0, 0, 0o775)
		})},
		{name: "jailer world-writable", want: "group/other-writable", setup: jailer(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, tools(e, "jailer"), 0, 0, 0o757)
		})},
		{name: "jailer is a symlink", want: "symlink", setup: jailer(func(t *testing.T, e *testEnv, v *vm) {
			link := filepath.Join(e.dir, "tools", "link", "jailer")
			must(t, os.MkdirAll(filepath.Dir(link), 0o755))
			must(t, os.Symlink(tools(e, "jailer"), link))
			t.Cleanup(func() { os.RemoveAll(filepath.Dir(link)) })
			e.setConfig(t, func(c *cfgFields) { c.Jailer = link })
		})},
		{name: "jailer with a version in its name", want: "basename", setup: jailer(config(func(c *cfgFields) {
			c.Jailer += "-v1.16.0-x86_64"
		}))},
		{name: "firecracker with a wrong name", want: "basename", setup: jailer(config(func(c *cfgFields) {
			c.Firecracker = "/bin/sh"
		}))},
		{name: "firecracker not owned by root", want: "not owned by root", setup: jailer(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, tools(e, "firecracker"), int(e.uid), int(e.gid), 0o755)
		})},
		{name: "jailer in a directory the caller can write", want: "writable by others", setup: jailer(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, filepath.Join(e.dir, "tools"), 0, int(e.gid), 0o775)
		})},
		{name: "work_dir writable by the caller", want: "writable by others", setup: jailer(prepared(func(t *testing.T, e *testEnv, v *vm) {
			chownFor(t, e.work, int(e.uid), int(e.gid), 0o755)
		}))},
		{name: "jailer before jail prepare", code: 1, want: "no such file or directory", setup: jailer(func(t *testing.T, e *testEnv, v *vm) {
			ensureJails(t, e)
		})},
		{name: "jailer without a cgroup", code: 1, want: "creates it in the delegated parent", setup: jailer(prepared(nil))},

		// Cgroup delegation: only a parent that is root's or the caller's,
		// and nobody else can write.
		{name: "delegate a parent owned by another user", want: "owned by uid 4242, neither root nor the caller", setup: func(t *testing.T, e *testEnv, v *vm) []string {
			parents := ensureParents(t, e)
			chownFor(t, parents[len(parents)-1], 4242, 4242, 0o755)
			return []string{"cgroup", "delegate"}
		}},
		{name: "delegate a group-writable parent", want: "group/other-writable", setup: func(t *testing.T, e *testEnv, v *vm) []string {
			parents := ensureParents(t, e)
			chownFor(t, parents[0], 0, int(e.gid), 0o775)
			return []string{"cgroup", "delegate"}
		}},
		{name: "delegate for a caller that is not the helper's parent", want: "not as the caller", setup: func(t *testing.T, e *testEnv, v *vm) []string {
			if e.cgroupVersion() == 1 {
				t.Skip("cgroup v1: the delegation moves no process")
			}
			return []string{"cgroup", "delegate"}
		}},
	}
}

// ensureParents makes the test's parent cgroup in every hierarchy, as
// root, and returns their paths.
func ensureParents(t *testing.T, e *testEnv) []string {
	var out []string
	for _, h := range e.hier {
		p := filepath.Join(h, e.cfg.Cgroup)
		if err := os.Mkdir(p, 0o755); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// TestRefusals runs every refusal as the unprivileged user against the
// setuid binary and checks the exit status, the reason, and that nothing
// in the test tree or the test cgroups changed.
func TestRefusals(t *testing.T) {
	e := need(t)
	cases := refusalCases()
	if len(cases) < 40 {
		t.Fatalf("only %d refusal cases", len(cases))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := e.newVM(t)
			argv := c.setup(t, e, v)
			bin := e.helper
			if c.plain {
				bin = e.plain
			}
			before := e.snapshot(t)
			code, stdout, stderr := e.runAs(t, bin, argv...)
			want := c.code
			if want == 0 {
				want = 2
			}
			if code != want || !strings.Contains(stderr, c.want) || stdout != "" {
				t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit %d with %q", argv, code, stdout, stderr, want, c.want)
			}
			if lines := strings.Count(strings.TrimSpace(stderr), "\n"); lines != 0 {
				t.Errorf("stderr has %d lines, want one", lines+1)
			}
			if diffs := diffSnapshots(before, e.snapshot(t)); len(diffs) > 0 {
				t.Errorf("the refusal changed the system:\n%s", strings.Join(diffs, "\n"))
			}
		})
	}
}

// TestRemoveDoesNotFollowLinks: a symlink the VM plants in its jail is
// removed with the jail, and its target is left alone.
func TestRemoveDoesNotFollowLinks(t *testing.T) {
	e := need(t)
	v := e.newVM(t)
	e.prepare(t, v)
	target := filepath.Join(e.dir, "etc")
	root := e.jailRoot(v.id)
	must(t, os.Symlink(target, filepath.Join(root, "escape")))
	must(t, os.Symlink("/", filepath.Join(root, "rootfs")))
	must(t, os.MkdirAll(filepath.Join(root, "dev", "net"), 0o755))
	before := statOf(t, e.config)
	if err := e.client.RemoveJail(context.Background(), v.id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(e.jailDir(v.id)); !os.IsNotExist(err) {
		t.Fatalf("jail survived: %v", err)
	}
	if after := statOf(t, e.config); after != before {
		t.Fatal("removal touched the symlink's target")
	}
}
