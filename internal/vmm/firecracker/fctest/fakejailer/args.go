// Package fakejailer is a strict stand-in for Firecracker's jailer: it
// checks its command line as the real jailer does, builds the same chroot
// layout, applies the same cgroup, rlimit, namespace and privilege steps
// when it runs as root, and execs the Firecracker stand-in in place.
//
// What is simulated: the chroot itself. The jailer would pivot_root into
// <chroot-base>/<exec-name>/<id>/root; the stand-in makes that directory
// the working directory of the Firecracker stand-in, which resolves every
// in-jail path beneath it (see fakefc), because the QEMU that the
// Firecracker stand-in starts needs the host's files. Without root, the
// steps that need it (cgroups, mknod, chown, network namespace, privilege
// drop) are skipped and recorded, and --uid/--gid must be the caller's.
// Every run writes what it did to <chroot-base>/<exec-name>/<id>/fctest-jailer.json.
package fakejailer

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Args is the jailer's parsed command line.
type Args struct {
	ID             string
	ExecFile       string // canonical
	UID, GID       uint32
	ChrootBase     string
	Netns          string
	Daemonize      bool
	CgroupVersion  int
	ParentCgroup   string
	Cgroups        []Cgroup
	ResourceLimits map[string]uint64
	Forward        []string // after "--": Firecracker's arguments
}

// Cgroup is one --cgroup <file>=<value>.
type Cgroup struct {
	File, Value string
}

// Controller is the cgroup controller the file belongs to.
func (c Cgroup) Controller() string {
	ctrl, _, _ := strings.Cut(c.File, ".")
	return ctrl
}

// instanceID is the jailer's rule for --id: alphanumerics and hyphens,
// 1 to 64 of them.
var instanceID = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// Errors name the argument, as the real jailer's do.
func argErr(format string, args ...any) error { return fmt.Errorf(format, args...) }

var valueFlags = []string{"id", "exec-file", "uid", "gid", "chroot-base-dir", "netns", "cgroup-version", "parent-cgroup", "cgroup", "resource-limit"}
var boolFlags = []string{"daemonize", "new-pid-ns", "version"}
var repeatable = []string{"cgroup", "resource-limit"}

// Parse checks the jailer's argv (without the program name). It resolves
// paths and so touches the file system, but changes nothing.
func Parse(argv []string) (*Args, error) {
	a := &Args{ChrootBase: "/srv/jailer", CgroupVersion: 1, ResourceLimits: map[string]uint64{}}
	vals := map[string]string{}
	seen := map[string]bool{}
	i := 0
	for ; i < len(argv); i++ {
		arg := argv[i]
		if arg == "--" {
			a.Forward = argv[i+1:]
			break
		}
		name, val, hasVal := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
		if !strings.HasPrefix(arg, "--") || name == "" {
			return nil, argErr("unexpected argument %q", arg)
		}
		switch {
		case slices.Contains(boolFlags, name):
			if hasVal {
				return nil, argErr("--%s takes no value", name)
			}
			if seen[name] {
				return nil, argErr("--%s given more than once", name)
			}
			seen[name] = true
			continue
		case !slices.Contains(valueFlags, name):
			return nil, argErr("unknown argument --%s", name)
		}
		if seen[name] && !slices.Contains(repeatable, name) {
			return nil, argErr("--%s given more than once", name)
		}
		seen[name] = true
		if !hasVal {
			if i+1 >= len(argv) || strings.HasPrefix(argv[i+1], "--") {
				return nil, argErr("--%s needs a value", name)
			}
			i++
			val = argv[i]
		}
		switch name {
		case "cgroup":
			f, v, ok := strings.Cut(val, "=")
			if !ok || f == "" || v == "" {
				return nil, argErr("invalid --cgroup %q: want <file>=<value>", val)
			}
			a.Cgroups = append(a.Cgroups, Cgroup{File: f, Value: v})
		case "resource-limit":
			k, v, ok := strings.Cut(val, "=")
			n, err := strconv.ParseUint(v, 10, 64)
			if !ok || err != nil || k != "fsize" && k != "no-file" {
				return nil, argErr("invalid --resource-limit %q: want fsize=<n> or no-file=<n>", val)
			}
			if _, dup := a.ResourceLimits[k]; dup {
				return nil, argErr("--resource-limit %s given more than once", k)
			}
			a.ResourceLimits[k] = n
		default:
			vals[name] = val
		}
	}
	if seen["new-pid-ns"] {
		return nil, argErr("--new-pid-ns: the stand-in does not emulate a new pid namespace")
	}
	if seen["version"] {
		return nil, argErr("--version: the stand-in has no version to report")
	}
	a.Daemonize = seen["daemonize"]
	for _, req := range []string{"id", "exec-file", "uid", "gid"} {
		if _, ok := vals[req]; !ok {
			return nil, argErr("missing required argument --%s", req)
		}
	}
	if !instanceID.MatchString(vals["id"]) {
		return nil, argErr("invalid --id %q: 1 to 64 characters, each alphanumeric or '-'", vals["id"])
	}
	a.ID = vals["id"]
	for _, k := range []string{"uid", "gid"} {
		n, err := strconv.ParseUint(vals[k], 10, 32)
		if err != nil {
			return nil, argErr("invalid --%s %q: want a decimal number", k, vals[k])
		}
		if k == "uid" {
			a.UID = uint32(n)
		} else {
			a.GID = uint32(n)
		}
	}
	exe, err := filepath.EvalSymlinks(vals["exec-file"])
	if err == nil {
		exe, err = filepath.Abs(exe)
	}
	if err != nil {
		return nil, argErr("invalid --exec-file %q: %v", vals["exec-file"], err)
	}
	if st, err := os.Stat(exe); err != nil || !st.Mode().IsRegular() {
		return nil, argErr("invalid --exec-file %q: not a regular file", vals["exec-file"])
	}
	if !strings.Contains(filepath.Base(exe), "firecracker") {
		return nil, argErr("invalid --exec-file %q: the file name must contain \"firecracker\"", vals["exec-file"])
	}
	a.ExecFile = exe
	if v, ok := vals["chroot-base-dir"]; ok {
		if !filepath.IsAbs(v) {
			return nil, argErr("invalid --chroot-base-dir %q: want an absolute path", v)
		}
		a.ChrootBase = filepath.Clean(v)
	}
	if v, ok := vals["netns"]; ok {
		if st, err := os.Stat(v); err != nil || st.IsDir() {
			return nil, argErr("invalid --netns %q: not a network namespace handle", v)
		}
		a.Netns = v
	}
	if v, ok := vals["cgroup-version"]; ok {
		switch v {
		case "1":
			a.CgroupVersion = 1
		case "2":
			a.CgroupVersion = 2
		default:
			return nil, argErr("invalid --cgroup-version %q: want 1 or 2", v)
		}
	}
	a.ParentCgroup = filepath.Base(a.ExecFile)
	if v, ok := vals["parent-cgroup"]; ok {
		if v == "" || filepath.IsAbs(v) || slices.Contains(strings.Split(v, "/"), "..") {
			return nil, argErr("invalid --parent-cgroup %q: want a relative path inside the hierarchy", v)
		}
		a.ParentCgroup = filepath.Clean(v)
	}
	for _, c := range a.Cgroups {
		if err := checkCgroup(a.CgroupVersion, c); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// Cgroup files the jailer may set, per version, with the form of their
// values. The kernel is the final judge when the stand-in runs as root;
// these keep a non-root run as strict.
var cgroupFiles = map[int]map[string]*regexp.Regexp{
	1: {
		"cpu.cfs_quota_us":      regexp.MustCompile(`^(-1|[0-9]{1,20})$`),
		"cpu.cfs_period_us":     regexp.MustCompile(`^[0-9]{1,20}$`),
		"cpu.shares":            regexp.MustCompile(`^[0-9]{1,20}$`),
		"cpuset.cpus":           regexp.MustCompile(`^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$`),
		"cpuset.mems":           regexp.MustCompile(`^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$`),
		"memory.limit_in_bytes": regexp.MustCompile(`^(-1|[0-9]{1,20})$`),
		"pids.max":              regexp.MustCompile(`^(max|[0-9]{1,20})$`),
	},
	2: {
		"cpu.max":     regexp.MustCompile(`^(max|[0-9]{1,20})( [0-9]{1,20})?$`),
		"cpu.weight":  regexp.MustCompile(`^[0-9]{1,5}$`),
		"cpuset.cpus": regexp.MustCompile(`^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$`),
		"cpuset.mems": regexp.MustCompile(`^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$`),
		"memory.max":  regexp.MustCompile(`^(max|[0-9]{1,20})$`),
		"memory.high": regexp.MustCompile(`^(max|[0-9]{1,20})$`),
		"pids.max":    regexp.MustCompile(`^(max|[0-9]{1,20})$`),
	},
}

func checkCgroup(version int, c Cgroup) error {
	if !strings.Contains(c.File, ".") || strings.ContainsAny(c.File, "/") {
		return argErr("invalid --cgroup %s=%s: want <controller>.<file>", c.File, c.Value)
	}
	re, ok := cgroupFiles[version][c.File]
	if !ok {
		return argErr("invalid --cgroup %s=%s: %s is not a cgroup v%d file the jailer can set", c.File, c.Value, c.File, version)
	}
	if !re.MatchString(c.Value) {
		return argErr("invalid --cgroup %s=%s: bad value for %s", c.File, c.Value, c.File)
	}
	return nil
}
