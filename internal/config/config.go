// Package config is the schema of /etc/hyper/config.toml, shared by hyperd
// and hyper-suidhelper so that the two can never disagree about a key, a
// default or a path (the reference system drifted on all three).
//
// Decoding is strict: an unknown key, a value of the wrong type, a unit
// string that does not parse or an invalid range is an error naming the
// file and the key. Every key with a safe default has one.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/hypervm/hyper/internal/units"
)

// DefaultPath is where hyperd and the helper look for their configuration.
const DefaultPath = "/etc/hyper/config.toml"

// Defaults for keys that have a safe value.
const (
	DefaultWorkDir   = "/srv/hyper"
	DefaultCgroup    = "hyper"
	DefaultUIDMin    = 900000
	DefaultUIDMax    = 999999
	DefaultHelper    = "/usr/local/bin/hyper-suidhelper"
	DefaultQEMU      = "/usr/bin/qemu-system-x86_64"
	DefaultMke2fs    = "/usr/sbin/mke2fs"
	DefaultVMMDriver = "auto"
)

// Config is the whole file. Zero values are filled by Defaults and derived
// paths by the accessor methods, so callers never join paths by hand.
type Config struct {
	// WorkDir is the root of the node's tree: jails, VM directories,
	// sockets, the SQLite store and temporary files live below it.
	WorkDir string  `toml:"work_dir"`
	Tools   Tools   `toml:"tools"`
	Jails   Jails   `toml:"jails"`
	API     API     `toml:"api"`
	Store   Store   `toml:"store"`
	Cluster Cluster `toml:"cluster"`
	Budget  Budget  `toml:"budget"`
	Kernel  Kernel  `toml:"kernel"`
	Disk    Disk    `toml:"disk"`
	VMM     VMM     `toml:"vmm"`
	Otel    Otel    `toml:"otel"`
}

// Tools are absolute paths of the programs Hyper runs. The ones the helper
// runs as root (firecracker, jailer) are checked by the helper at use time:
// absolute, root-owned, not writable by others, with the expected basename.
type Tools struct {
	Firecracker string `toml:"firecracker"` // no default: absent means "not configured"
	Jailer      string `toml:"jailer"`      // no default: absent means "not configured"
	SuidHelper  string `toml:"suidhelper"`
	QEMU        string `toml:"qemu"`
	Mke2fs      string `toml:"mke2fs"`
	// Agent is the static hyper-agent binary put in every guest's
	// initramfs; empty means hyper-agent next to the hyperd binary.
	Agent string `toml:"agent"`
}

// Jails configures the per-VM jails and cgroups.
type Jails struct {
	// UIDGIDRange is the inclusive [min, max] band of uids (and equal gids)
	// handed to VMs. min must be >= 1: uid 0 makes the jailer skip its
	// privilege drop.
	UIDGIDRange []int64 `toml:"uid_gid_range"`
	// Cgroup is the parent cgroup (a single name) under the cgroup root.
	Cgroup string `toml:"cgroup"`
}

// UIDMin is the first uid of the jail range.
func (j Jails) UIDMin() uint32 { return uint32(j.UIDGIDRange[0]) }

// UIDMax is the last uid of the jail range.
func (j Jails) UIDMax() uint32 { return uint32(j.UIDGIDRange[1]) }

// API configures hyperd's listeners.
type API struct {
	// Socket is the unix socket path; default <work_dir>/hyperd.sock.
	Socket string `toml:"socket"`
	// TCP is an optional host:port. It requires TLS and a token file unless
	// Insecure is set.
	TCP       string `toml:"tcp"`
	TLSCert   string `toml:"tls_cert"`
	TLSKey    string `toml:"tls_key"`
	TokenFile string `toml:"token_file"`
	Insecure  bool   `toml:"insecure"`
}

// Store selects the metadata store.
type Store struct {
	// URL empty means SQLite at <work_dir>/hyper.db; "postgres://..." means
	// PostgreSQL (required for a cluster).
	URL string `toml:"url"`
}

// Cluster configures this node's identity and lease.
type Cluster struct {
	NodeName      string   `toml:"node_name"`      // default: the host name
	Advertise     string   `toml:"advertise"`      // address peers use to reach this node's API
	LeaseInterval Duration `toml:"lease_interval"` // default 5s
	LeaseTTL      Duration `toml:"lease_ttl"`      // default 15s
}

// Budget is what the node offers to VMs. Memory and disk are hard limits;
// the rest are soft load ceilings used for placement.
type Budget struct {
	MemMax        units.Size      `toml:"mem_max"`  // 0: 80% of the host's memory
	DiskMax       units.Size      `toml:"disk_max"` // 0: 80% of work_dir's filesystem
	CPUMaxLoad    float64         `toml:"cpu_max_load"`
	DiskBWCap     units.Bandwidth `toml:"disk_bw_cap"`
	DiskBWMaxLoad float64         `toml:"disk_bw_max_load"`
	NetBWCap      units.Bandwidth `toml:"net_bw_cap"`
	NetBWMaxLoad  float64         `toml:"net_bw_max_load"`
}

// Kernel points at the guest kernel. Empty fields mean the provider's
// pinned default under <work_dir>/kernel.
type Kernel struct {
	// Dir holds the provider's kernels; default <work_dir>/kernel.
	Dir string `toml:"dir"`
	// Vmlinuz and Vmlinux override the provider's files for the host's
	// architecture; Modules is the matching modules directory.
	Vmlinuz string `toml:"vmlinuz"`
	Vmlinux string `toml:"vmlinux"`
	Modules string `toml:"modules"`
}

// Disk configures where images and disks live.
type Disk struct {
	// LayerDir is the layer medium: images and frozen layers. A local
	// directory on one node, a shared mount in a cluster.
	LayerDir string `toml:"layer_dir"`
	// Clone is "auto", "reflink" or "copy".
	Clone string `toml:"clone"`
}

// VMM selects the VMM driver.
type VMM struct {
	Driver      string   `toml:"driver"`       // auto | firecracker | qemu | none (serves the API, runs no VMs)
	BootTimeout Duration `toml:"boot_timeout"` // how long to wait for the guest agent
	// A VM whose VMM dies is restarted, unless it has crashed more than
	// MaxCrashes times within CrashWindow: then it is Failed.
	MaxCrashes  *int     `toml:"max_crashes"`  // default 3; 0: never restart
	CrashWindow Duration `toml:"crash_window"` // default 1m
}

// Otel configures trace export. No endpoint: no exporter at all.
type Otel struct {
	Endpoint string            `toml:"endpoint"`
	Proto    string            `toml:"proto"` // http_protobuf | grpc
	Headers  map[string]string `toml:"headers"`
}

// Duration is a time.Duration written as a Go duration string ("5s").
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("invalid duration %q (want e.g. 500ms, 5s, 1m)", string(b))
	}
	if v < 0 {
		return fmt.Errorf("invalid duration %q: negative", string(b))
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Default returns the configuration used when no file exists.
func Default() *Config {
	c := &Config{}
	c.applyDefaults()
	return c
}

func (c *Config) applyDefaults() {
	setDefault(&c.WorkDir, DefaultWorkDir)
	setDefault(&c.Tools.SuidHelper, DefaultHelper)
	setDefault(&c.Tools.QEMU, DefaultQEMU)
	setDefault(&c.Tools.Mke2fs, DefaultMke2fs)
	if c.Jails.UIDGIDRange == nil {
		c.Jails.UIDGIDRange = []int64{DefaultUIDMin, DefaultUIDMax}
	}
	setDefault(&c.Jails.Cgroup, DefaultCgroup)
	setDefault(&c.API.Socket, filepath.Join(c.WorkDir, "hyperd.sock"))
	if c.Cluster.NodeName == "" {
		if h, err := os.Hostname(); err == nil {
			c.Cluster.NodeName = h
		}
	}
	if c.Cluster.LeaseInterval.Duration == 0 {
		c.Cluster.LeaseInterval.Duration = 5 * time.Second
	}
	if c.Cluster.LeaseTTL.Duration == 0 {
		c.Cluster.LeaseTTL.Duration = 15 * time.Second
	}
	setDefaultFloat(&c.Budget.CPUMaxLoad, 0.8)
	setDefaultFloat(&c.Budget.DiskBWMaxLoad, 0.8)
	setDefaultFloat(&c.Budget.NetBWMaxLoad, 0.8)
	if c.Budget.DiskBWCap == 0 {
		c.Budget.DiskBWCap = 1 << 30
	}
	if c.Budget.NetBWCap == 0 {
		c.Budget.NetBWCap = 1 << 30
	}
	setDefault(&c.Kernel.Dir, filepath.Join(c.WorkDir, "kernel"))
	setDefault(&c.Disk.LayerDir, filepath.Join(c.WorkDir, "layers"))
	setDefault(&c.Disk.Clone, "auto")
	setDefault(&c.VMM.Driver, DefaultVMMDriver)
	if c.VMM.BootTimeout.Duration == 0 {
		c.VMM.BootTimeout.Duration = 60 * time.Second
	}
	if c.VMM.MaxCrashes == nil {
		n := 3
		c.VMM.MaxCrashes = &n
	}
	if c.VMM.CrashWindow.Duration == 0 {
		c.VMM.CrashWindow.Duration = time.Minute
	}
	setDefault(&c.Otel.Proto, "http_protobuf")
}

func setDefault(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func setDefaultFloat(p *float64, v float64) {
	if *p == 0 {
		*p = v
	}
}

// Error is a configuration error: which file, which key, what was wrong.
type Error struct {
	File string
	Key  string // dotted, e.g. "jails.uid_gid_range"; empty for file-level errors
	Msg  string
}

func (e *Error) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("config %s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("config %s: key %s: %s", e.File, e.Key, e.Msg)
}

// Parse decodes and validates data read from file (used only in messages).
func Parse(file string, data []byte) (*Config, error) {
	c := &Config{}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, decodeError(file, err)
	}
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			ce.File = file
		}
		return nil, err
	}
	return c, nil
}

func decodeError(file string, err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) && len(strict.Errors) > 0 {
		keys := make([]string, 0, len(strict.Errors))
		for _, e := range strict.Errors {
			keys = append(keys, strings.Join(e.Key(), "."))
		}
		return &Error{File: file, Key: keys[0], Msg: "unknown key" + plural(keys)}
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return &Error{File: file, Key: strings.Join(de.Key(), "."),
			Msg: fmt.Sprintf("%s (line %d, column %d)", de.Error(), row, col)}
	}
	return &Error{File: file, Msg: err.Error()}
}

func plural(keys []string) string {
	if len(keys) == 1 {
		return ""
	}
	return fmt.Sprintf(" (also: %s)", strings.Join(keys[1:], ", "))
}

// Validate checks values that decode cleanly but are still wrong.
func (c *Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return &Error{Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	if !filepath.IsAbs(c.WorkDir) || filepath.Clean(c.WorkDir) != c.WorkDir {
		return bad("work_dir", "must be an absolute, clean path (got %q)", c.WorkDir)
	}
	r := c.Jails.UIDGIDRange
	if len(r) != 2 {
		return bad("jails.uid_gid_range", "must be [min, max] (got %d values)", len(r))
	}
	if r[0] < 1 || r[0] > r[1] || r[1] > 1<<32-2 {
		return bad("jails.uid_gid_range", "min must be >= 1 and <= max, max < 4294967295 (got min=%d, max=%d)", r[0], r[1])
	}
	if !validName(c.Jails.Cgroup) {
		return bad("jails.cgroup", "must be one name of [A-Za-z0-9._-], not . or .. (got %q)", c.Jails.Cgroup)
	}
	// The node's name also names its directories on shared storage.
	if !validName(c.Cluster.NodeName) {
		return bad("cluster.node_name", "must be one name of [A-Za-z0-9._-], not . or .., at most 64 bytes (got %q)", c.Cluster.NodeName)
	}
	for key, p := range map[string]string{
		"tools.firecracker": c.Tools.Firecracker, "tools.jailer": c.Tools.Jailer,
		"tools.suidhelper": c.Tools.SuidHelper, "tools.qemu": c.Tools.QEMU, "tools.mke2fs": c.Tools.Mke2fs, "tools.agent": c.Tools.Agent,
		"api.socket": c.API.Socket, "kernel.dir": c.Kernel.Dir, "kernel.vmlinuz": c.Kernel.Vmlinuz,
		"kernel.vmlinux": c.Kernel.Vmlinux, "kernel.modules": c.Kernel.Modules, "disk.layer_dir": c.Disk.LayerDir,
		"api.tls_cert": c.API.TLSCert, "api.tls_key": c.API.TLSKey, "api.token_file": c.API.TokenFile,
	} {
		if p != "" && (!filepath.IsAbs(p) || filepath.Clean(p) != p) {
			return bad(key, "must be an absolute, clean path (got %q)", p)
		}
	}
	if (c.API.TLSCert == "") != (c.API.TLSKey == "") {
		return bad("api.tls_cert", "tls_cert and tls_key must be set together")
	}
	if c.API.TCP != "" && !c.API.Insecure && (c.API.TLSCert == "" || c.API.TokenFile == "") {
		return bad("api.tcp", "a TCP listener needs tls_cert, tls_key and token_file, or insecure = true")
	}
	if c.Store.URL != "" && !strings.HasPrefix(c.Store.URL, "postgres://") && !strings.HasPrefix(c.Store.URL, "postgresql://") {
		return bad("store.url", "must be empty (SQLite) or a postgres:// URL")
	}
	if c.Cluster.LeaseTTL.Duration <= c.Cluster.LeaseInterval.Duration {
		return bad("cluster.lease_ttl", "must be longer than lease_interval (%s <= %s)", c.Cluster.LeaseTTL, c.Cluster.LeaseInterval)
	}
	for key, f := range map[string]float64{"budget.cpu_max_load": c.Budget.CPUMaxLoad,
		"budget.disk_bw_max_load": c.Budget.DiskBWMaxLoad, "budget.net_bw_max_load": c.Budget.NetBWMaxLoad} {
		if f <= 0 || f > 1 {
			return bad(key, "must be in (0, 1] (got %v)", f)
		}
	}
	if c.Budget.MemMax < 0 || c.Budget.DiskMax < 0 || c.Budget.DiskBWCap < 0 || c.Budget.NetBWCap < 0 {
		return bad("budget", "sizes must not be negative")
	}
	switch c.Disk.Clone {
	case "auto", "reflink", "copy":
	default:
		return bad("disk.clone", "must be auto, reflink or copy (got %q)", c.Disk.Clone)
	}
	switch c.VMM.Driver {
	case "auto", "firecracker", "qemu", "none":
	default:
		return bad("vmm.driver", "must be auto, firecracker, qemu or none (got %q)", c.VMM.Driver)
	}
	if n := *c.VMM.MaxCrashes; n < 0 || n > 100 {
		return bad("vmm.max_crashes", "must be 0-100 (got %d)", n)
	}
	switch c.Otel.Proto {
	case "http_protobuf", "grpc":
	default:
		return bad("otel.proto", "must be http_protobuf or grpc (got %q)", c.Otel.Proto)
	}
	return nil
}

func validName(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// Derived paths. They are fixed below work_dir and not configurable, so the
// helper can confine every path it touches to a few known roots.

// JailsDir is the jailer's chroot base.
func (c *Config) JailsDir() string { return filepath.Join(c.WorkDir, "jails") }

// VMsDir holds one directory per VM (writable disk, sockets, console log).
func (c *Config) VMsDir() string { return filepath.Join(c.WorkDir, "vms") }

// VMDir is one VM's directory.
func (c *Config) VMDir(id string) string { return filepath.Join(c.VMsDir(), id) }

// TmpDir holds temporary files; it is emptied at start.
func (c *Config) TmpDir() string { return filepath.Join(c.WorkDir, "tmp") }

// ImagesDir holds the content-addressed base disks on the layer medium.
func (c *Config) ImagesDir() string { return filepath.Join(c.Disk.LayerDir, "images") }

// LayersDir holds frozen writable layers on the layer medium.
func (c *Config) LayersDir() string { return filepath.Join(c.Disk.LayerDir, "layers") }

// SQLitePath is the default store file.
func (c *Config) SQLitePath() string { return filepath.Join(c.WorkDir, "hyper.db") }

// DiskTemplatesDir caches empty writable-disk templates. It is under
// work_dir, on the same filesystem as VMsDir, so disks are reflinked from
// it where the filesystem allows.
func (c *Config) DiskTemplatesDir() string {
	return filepath.Join(c.WorkDir, "cache", "disk-templates")
}
