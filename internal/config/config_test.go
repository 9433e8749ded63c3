package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/units"
)

func TestDefaults(t *testing.T) {
	c := Default()
	if c.WorkDir != "/srv/hyper" || c.Jails.UIDMin() != 900000 || c.Jails.UIDMax() != 999999 || c.Jails.Cgroup != "hyper" {
		t.Fatalf("unexpected defaults: %+v", c)
	}
	if c.API.Socket != "/srv/hyper/hyperd.sock" || c.Disk.LayerDir != "/srv/hyper/layers" || c.VMM.Driver != "auto" {
		t.Fatalf("unexpected derived defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
}

func TestParseFull(t *testing.T) {
	c, err := Parse("test.toml", []byte(`
work_dir = "/var/lib/hyper"
[tools]
firecracker = "/opt/fc/firecracker"
jailer = "/opt/fc/jailer"
[jails]
uid_gid_range = [100000, 100100]
cgroup = "hyper-test"
[api]
tcp = "127.0.0.1:7070"
insecure = true
[store]
url = "postgres://u:p@localhost/hyper"
[cluster]
node_name = "n1"
lease_interval = "2s"
lease_ttl = "10s"
[budget]
mem_max = "16GiB"
disk_max = "1TiB"
disk_bw_cap = "2GiBps"
[vmm]
driver = "qemu"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.WorkDir != "/var/lib/hyper" || c.API.Socket != "/var/lib/hyper/hyperd.sock" {
		t.Errorf("work_dir not applied: %+v", c)
	}
	if c.Budget.MemMax != 16*units.GiB || c.Budget.DiskMax != units.TiB || c.Budget.DiskBWCap != 2<<30 {
		t.Errorf("budget: %+v", c.Budget)
	}
	if c.Cluster.LeaseInterval.Duration != 2*time.Second || c.Cluster.NodeName != "n1" {
		t.Errorf("cluster: %+v", c.Cluster)
	}
	if c.Jails.UIDMin() != 100000 || c.Jails.UIDMax() != 100100 {
		t.Errorf("range: %v", c.Jails.UIDGIDRange)
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, toml, key, msg string
	}{
		{"unknown key", "wrk_dir = \"/x\"", "wrk_dir", "unknown key"},
		{"unknown nested key", "[tools]\nfirecrackr = \"/x\"", "tools.firecrackr", "unknown key"},
		{"wrong type", "work_dir = 5", "work_dir", ""},
		{"bad unit", "[budget]\nmem_max = \"4GB\"", "budget.mem_max", "unknown unit"},
		{"bad bandwidth", "[budget]\ndisk_bw_cap = \"1GiB\"", "budget.disk_bw_cap", "unknown unit"},
		{"relative work_dir", "work_dir = \"srv\"", "work_dir", "absolute"},
		{"range min 0", "[jails]\nuid_gid_range = [0, 10]", "jails.uid_gid_range", "min must be >= 1"},
		{"range min > max", "[jails]\nuid_gid_range = [20, 10]", "jails.uid_gid_range", "min=20, max=10"},
		{"range arity", "[jails]\nuid_gid_range = [20]", "jails.uid_gid_range", "[min, max]"},
		{"unclean path", "[kernel]\ndir = \"/srv/../etc\"", "kernel.dir", "clean"},
		{"bad cgroup", "[jails]\ncgroup = \"a/b\"", "jails.cgroup", "one name"},
		{"bad node name", "[cluster]\nnode_name = \"../n1\"", "cluster.node_name", "one name"},
		{"bad duration", "[cluster]\nlease_ttl = \"soon\"", "cluster.lease_ttl", "invalid duration"},
		{"ttl below interval", "[cluster]\nlease_ttl = \"1s\"", "cluster.lease_ttl", "longer than"},
		{"tcp without tls", "[api]\ntcp = \"0.0.0.0:1\"", "api.tcp", "insecure = true"},
		{"bad max_crashes", "[vmm]\nmax_crashes = -1", "vmm.max_crashes", "0-100"},
		{"bad driver", "[vmm]\ndriver = \"kvmtool\"", "vmm.driver", "must be auto"},
		{"bad store", "[store]\nurl = \"mysql://x\"", "store.url", "postgres"},
		{"bad load", "[budget]\ncpu_max_load = 1.5", "budget.cpu_max_load", "(0, 1]"},
		{"not toml", "work_dir = ", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("/etc/hyper/config.toml", []byte(tc.toml))
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v; want *config.Error", err)
			}
			if ce.File != "/etc/hyper/config.toml" || ce.Key != tc.key || !strings.Contains(ce.Msg, tc.msg) {
				t.Fatalf("err = %q (key %q); want key %q and message containing %q", err, ce.Key, tc.key, tc.msg)
			}
			if !strings.Contains(err.Error(), "/etc/hyper/config.toml") {
				t.Fatalf("error does not name the file: %v", err)
			}
		})
	}
}

// The trust tests use real files with real owners and modes, so they need
// root to create root-owned and foreign-owned files.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create files with chosen owners")
	}
}

func writeFile(t *testing.T, dir, name string, mode os.FileMode, uid int) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("work_dir = \"/srv/hyper\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, uid, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadTrusted(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	good := writeFile(t, dir, "good.toml", 0o644, 0)
	if _, present, err := ReadTrusted(good); err != nil || !present {
		t.Fatalf("root-owned 0644: present=%v err=%v", present, err)
	}
	if _, present, err := ReadTrusted(filepath.Join(dir, "absent.toml")); err != nil || present {
		t.Fatalf("absent: present=%v err=%v; want defaults", present, err)
	}
	link := filepath.Join(dir, "link.toml")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	subdir := filepath.Join(dir, "d")
	if err := os.Mkdir(subdir, 0o755); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.toml")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	refusals := map[string]struct{ path, rule string }{
		"group writable": {writeFile(t, dir, "gw.toml", 0o664, 0), "group- or world-writable"},
		"world writable": {writeFile(t, dir, "ww.toml", 0o646, 0), "group- or world-writable"},
		"not root-owned": {writeFile(t, dir, "user.toml", 0o644, 65534), "not owned by root"},
		"not root group": {groupOwned(t, writeFile(t, dir, "grp.toml", 0o644, 0)), "not owned by root:root"},
		"symlink":        {link, "symlink"},
		"directory":      {subdir, "not a regular file"},
		"fifo":           {fifo, "not a regular file"},
		"relative":       {"etc/hyper/config.toml", "absolute"},
		"dotdot":         {dir + "/../x.toml", "components"},
	}
	for name, tc := range refusals {
		t.Run(name, func(t *testing.T) {
			_, _, err := ReadTrusted(tc.path)
			if !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), tc.rule) {
				t.Fatalf("ReadTrusted(%s) = %v; want ErrUntrusted naming %q", tc.path, err, tc.rule)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	c, err := Load(filepath.Join(dir, "absent.toml"))
	if err != nil || c.WorkDir != DefaultWorkDir {
		t.Fatalf("Load(absent) = %+v, %v", c, err)
	}
	p := writeFile(t, dir, "c.toml", 0o644, 0)
	if _, err := Load(p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("bogus = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("Load(unknown key) = %v", err)
	}
}

func groupOwned(t *testing.T, p string) string {
	t.Helper()
	if err := os.Chown(p, 0, 65534); err != nil {
		t.Fatal(err)
	}
	return p
}
