// Package suid is hyper-suidhelper: the only code in Hyper that holds root.
//
// It runs as a setuid-root binary, one short-lived process per operation,
// taking its arguments from argv only (see Parse) and its paths and limits
// from the root-owned config file whose path is fixed at build time. It
// drops to the caller's ids before doing anything else and raises only
// around the privileged step of an op (see priv.go). Exit status: 0 done,
// 1 the op failed, 2 refused (bad arguments, untrusted config or binary),
// with one line on stderr saying why; ops that return data print one JSON
// object on stdout.
package suid

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/config"
)

// Build is what the release build fixes with -ldflags -X in package main.
type Build struct {
	Version    string
	ConfigPath string
}

// Result is the JSON object printed by every op except version, sys-test,
// cgroup delegate and jailer. Which fields are set depends on the op.
type Result struct {
	Result string            `json:"result"`
	Path   string            `json:"path,omitempty"`
	Files  map[string]string `json:"files,omitempty"` // jail prepare: name in jail -> link | reflink | copy
	Killed int               `json:"killed,omitempty"`
	VMs    []string          `json:"vms,omitempty"`
}

// Version is printed by the version op, which needs neither root nor a
// config, so packaging can check which config path a binary was built with.
type Version struct {
	Version    string `json:"version"`
	BuildID    string `json:"build_id"` // sha256 of the executable
	ConfigPath string `json:"config_path"`
}

// SysTest is printed by sys-test.
type SysTest struct {
	Version
	ConfigPresent bool            `json:"config_present"`
	WorkDir       string          `json:"work_dir"`
	CgroupVersion int             `json:"cgroup_version"`
	CgroupParent  string          `json:"cgroup_parent"`
	Tools         map[string]Tool `json:"tools"`
}

// Delegation is printed by cgroup delegate: the cgroups the caller now
// manages itself.
type Delegation struct {
	Result        string            `json:"result"` // "delegated"
	CgroupVersion int               `json:"cgroup_version"`
	Parents       []DelegatedCgroup `json:"parents"`
	// Self is, under cgroup v2, the cgroup the caller was moved into.
	Self string `json:"self,omitempty"`
}

// DelegatedCgroup is the node's parent cgroup in one hierarchy.
type DelegatedCgroup struct {
	Controller string `json:"controller,omitempty"` // v1 hierarchy; empty under v2
	Path       string `json:"path"`                 // absolute
}

// Tool is the binary check of one configured program.
type Tool struct {
	Path  string `json:"path"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// refusal is an error that exits 2: the request was not acceptable.
type refusal struct{ msg string }

func (r *refusal) Error() string { return r.msg }

func refused(format string, args ...any) error {
	return &refusal{fmt.Sprintf(format, args...)}
}

func notExist(err error) bool { return errors.Is(err, os.ErrNotExist) }

type helper struct {
	cfg   *config.Config
	build Build
}

// Main runs one invocation and returns the exit status. Drop must have run.
func Main(b Build, args []string, stdout, stderr io.Writer) int {
	syscall.Umask(0o022)
	out, err := run(b, args)
	if err == nil && out != nil {
		err = json.NewEncoder(stdout).Encode(out)
	}
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "hyper-suidhelper: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
	var r *refusal
	if errors.As(err, &r) {
		return 2
	}
	return 1
}

func run(b Build, args []string) (any, error) {
	req, err := Parse(args)
	if err != nil {
		return nil, &refusal{err.Error()}
	}
	if req.Op == OpVersion {
		return version(b), nil
	}
	if !setuidRoot {
		return nil, refused("not installed setuid root (chown root:root and chmod 4755 the binary)")
	}
	data, present, err := config.ReadTrusted(b.ConfigPath)
	if err != nil {
		return nil, &refusal{err.Error()}
	}
	cfg := config.Default()
	if present {
		if cfg, err = config.Parse(b.ConfigPath, data); err != nil {
			return nil, &refusal{err.Error()}
		}
	}
	h := &helper{cfg: cfg, build: b}
	switch req.Op {
	case OpSysTest:
		return h.sysTest(present)
	case OpJailPrepare:
		return h.jailPrepare(req)
	case OpJailGrantAPI:
		return h.jailGrant(req, JailAPISocket)
	case OpJailGrantVsock:
		return h.jailGrant(req, JailVsockSocket)
	case OpJailRemove:
		return h.jailRemove(req)
	case OpJailer:
		return nil, h.jailer(req)
	case OpCgroupDelegate:
		return h.delegate()
	}
	return h.cgroupOp(req)
}

func version(b Build) Version {
	v := Version{Version: b.Version, ConfigPath: b.ConfigPath}
	if f, err := os.Open("/proc/self/exe"); err == nil {
		hash := sha256.New()
		if _, err := io.Copy(hash, f); err == nil {
			v.BuildID = hex.EncodeToString(hash.Sum(nil))
		}
		f.Close()
	}
	return v
}

// sysTest reports the install: it raises and drops once to prove the
// setuid bit works, and checks the binaries the helper would run.
func (h *helper) sysTest(present bool) (*SysTest, error) {
	if err := asRoot(func() error { return nil }); err != nil {
		return nil, err
	}
	cg, err := openCgroups(cgroupRoot)
	if err != nil {
		return nil, err
	}
	defer cg.close()
	st := &SysTest{Version: version(h.build), ConfigPresent: present, WorkDir: h.cfg.WorkDir,
		CgroupVersion: cg.version, CgroupParent: h.cfg.Jails.Cgroup, Tools: map[string]Tool{}}
	for _, t := range []struct{ name, path string }{{"firecracker", h.cfg.Tools.Firecracker}, {"jailer", h.cfg.Tools.Jailer}} {
		tool := Tool{Path: t.path, OK: true}
		if err := checkBinary("tools."+t.name, t.path, t.name); err != nil {
			tool = Tool{Path: t.path, Error: err.Error()}
		}
		st.Tools[t.name] = tool
	}
	return st, nil
}

func (h *helper) cgroupOp(r Request) (*Result, error) {
	cg, err := openCgroups(cgroupRoot)
	if err != nil {
		return nil, err
	}
	defer cg.close()
	parent := h.cfg.Jails.Cgroup
	switch r.Op {
	case OpCgroupList:
		ids, err := cg.list(parent)
		return &Result{Result: "listed", VMs: ids}, err
	case OpCgroupKill:
		res := &Result{Result: "absent"}
		leaves, found, err := cg.open(parent + "/" + r.VM)
		defer closeAll(leaves)
		if err != nil || found == 0 {
			return res, err
		}
		res.Result = "killed"
		return res, asRoot(func() (err error) { res.Killed, err = cg.kill(leaves); return err })
	case OpCgroupRemove:
		res := &Result{Result: "absent"}
		return res, asRoot(func() error {
			removed, err := cg.remove(parent, r.VM)
			if removed {
				res.Result = "removed"
			}
			return err
		})
	}
	return nil, refused("unknown operation %q", r.Op)
}

// delegate hands the node's parent cgroup to the caller (see
// cgroups.delegate). Under cgroup v2 it also moves the caller into the
// parent's hyperd leaf (see DaemonCgroup). The process moved is never one
// the caller names: it is the helper's own parent, checked to run as the
// caller.
func (h *helper) delegate() (*Delegation, error) {
	cg, err := openCgroups(cgroupRoot)
	if err != nil {
		return nil, err
	}
	defer cg.close()
	if err := cg.checkParent(h.cfg.Jails.Cgroup, caller.uid); err != nil {
		return nil, err
	}
	d := &Delegation{Result: "delegated", CgroupVersion: cg.version}
	var parent pinned
	if cg.version == 2 {
		if parent, err = pinParent(); err != nil {
			return nil, err
		}
		defer parent.close()
	}
	err = asRoot(func() error {
		var err error
		if d.Parents, err = cg.delegate(h.cfg.Jails.Cgroup, caller.uid, caller.gid); err != nil || cg.version != 2 {
			return err
		}
		leaf, err := cg.daemonLeaf(h.cfg.Jails.Cgroup, caller.uid, caller.gid)
		if err != nil {
			return err
		}
		defer unix.Close(leaf)
		d.Self = cg.display(0, h.cfg.Jails.Cgroup, DaemonCgroup)
		return parent.moveInto(leaf, d.Self)
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// pinned is a process held by a pidfd, so that a check made on its pid
// can be confirmed to still be about the same process afterwards.
type pinned struct{ pid, fd int }

// pinParent pins the helper's parent process and requires it to run as
// the caller (real uid): the caller can only ever have itself moved.
func pinParent() (pinned, error) {
	pid := unix.Getppid()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return pinned{}, refused("calling process %d: %v", pid, err)
	}
	p := pinned{pid, fd}
	// An orphan is re-parented as its parent exits, before the parent
	// becomes a zombie: an unchanged parent after pidfd_open means the
	// descriptor is the live parent's.
	if unix.Getppid() != pid {
		p.close()
		return pinned{}, refused("calling process %d exited", pid)
	}
	ruid, err := realUID(pid)
	if err != nil {
		p.close()
		return pinned{}, refused("calling process %d: %v", pid, err)
	}
	if ruid != caller.uid {
		p.close()
		return pinned{}, refused("calling process %d runs as uid %d, not as the caller (uid %d): only the caller itself may be moved", pid, ruid, caller.uid)
	}
	return p, nil
}

// moveInto writes the process into the cgroup.procs of dir and checks it
// was still alive afterwards, so the pid did not name a recycled process.
func (p pinned) moveInto(dir int, display string) error {
	if err := writeFile(dir, "cgroup.procs", display+"/cgroup.procs", strconv.Itoa(p.pid)); err != nil {
		return err
	}
	if err := unix.PidfdSendSignal(p.fd, 0, nil, 0); err != nil {
		return fmt.Errorf("calling process %d exited while being moved: %w", p.pid, err)
	}
	return nil
}

func (p pinned) close() { unix.Close(p.fd) }

// realUID reads the real uid of a process from /proc.
func realUID(pid int) (int, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Uid:" {
			return strconv.Atoi(f[1])
		}
	}
	return -1, fmt.Errorf("/proc/%d/status has no Uid line", pid)
}
