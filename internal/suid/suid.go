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

// Result is the JSON object printed by every op except version, sys-test
// and jailer. Which fields are set depends on the op.
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
	case OpCgroupCreate:
		return &Result{Result: "created"}, asRoot(func() error { return cg.create(parent, r.VM, r.MilliCPU, r.Mem) })
	case OpCgroupList:
		ids, err := cg.list(parent)
		return &Result{Result: "listed", VMs: ids}, err
	case OpCgroupAttach:
		return &Result{Result: "attached"}, h.attach(cg, r)
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

// attach moves a process of the caller into the VM cgroup (for VMMs the
// node starts itself, such as QEMU). The pidfd pins the process: the
// owner check is valid only if the same process is still alive after it,
// and the move only if it is still alive after the move.
func (h *helper) attach(cg *cgroups, r Request) error {
	pidfd, err := unix.PidfdOpen(r.PID, 0)
	if err != nil {
		return refused("process %d: %v", r.PID, err)
	}
	defer unix.Close(pidfd)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.PID))
	if err != nil {
		return refused("process %d: %v", r.PID, err)
	}
	var ruid int = -1
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Uid:" {
			fmt.Sscan(f[1], &ruid)
		}
	}
	if ruid != caller.uid {
		return refused("process %d belongs to uid %d, not the caller", r.PID, ruid)
	}
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		return refused("process %d exited: %v", r.PID, err)
	}
	leaves, err := cg.openLeaves(h.cfg.Jails.Cgroup, r.VM)
	if err != nil {
		return err
	}
	defer closeAll(leaves)
	return asRoot(func() error {
		if err := cg.attach(leaves, r.PID); err != nil {
			return err
		}
		if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
			return fmt.Errorf("process %d exited while being attached: %w", r.PID, err)
		}
		return nil
	})
}
