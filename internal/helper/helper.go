// Package helper is the node's typed client for hyper-suidhelper: one
// method per operation. It renders argv with the helper's own grammar
// (suid.Request), runs the helper with an empty environment, keeps stdout
// (one JSON object) apart from stderr (one line saying why), and turns a
// non-zero exit into an *Error carrying the op, its arguments, the exit
// status and stderr.
package helper

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"

	"github.com/hypervm/hyper/internal/suid"
)

// Exit statuses of the helper.
const (
	ExitFailed  = 1 // the op was attempted and failed
	ExitRefused = 2 // the request was refused before anything was done
)

// Client runs the helper binary at Path.
type Client struct {
	Path string
	// Credential, when set, runs the helper as that user. hyperd leaves it
	// nil: it already is the unprivileged caller. Tests set it.
	Credential *syscall.Credential
}

// New returns a client for the helper installed at path (the config's
// tools.suidhelper).
func New(path string) *Client { return &Client{Path: path} }

// Error is a failed helper run.
type Error struct {
	Op       suid.Op
	Args     []string
	ExitCode int    // -1 if the helper did not run or was killed by a signal
	Stderr   string // trimmed
	Err      error  // the underlying start, wait or decode error, if any
}

func (e *Error) Error() string {
	msg := e.Stderr
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	return fmt.Sprintf("hyper-suidhelper %s: exit %d: %s", strings.Join(e.Args, " "), e.ExitCode, msg)
}

func (e *Error) Unwrap() error { return e.Err }

// Refused reports whether the helper refused the request (exit 2).
func (e *Error) Refused() bool { return e.ExitCode == ExitRefused }

// IsRefused reports whether err is a helper refusal.
func IsRefused(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Refused()
}

// command validates req with the helper's grammar and builds its command.
func (c *Client) command(ctx context.Context, req suid.Request) (*exec.Cmd, []string, error) {
	argv := req.Argv()
	if _, err := suid.Parse(argv); err != nil {
		return nil, argv, &Error{Op: req.Op, Args: argv, ExitCode: -1, Err: err}
	}
	cmd := exec.CommandContext(ctx, c.Path, argv...)
	cmd.Env = []string{}
	cmd.Dir = "/"
	if c.Credential != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.Credential}
	}
	return cmd, argv, nil
}

// run runs one op and decodes its JSON into out.
func (c *Client) run(ctx context.Context, req suid.Request, out any) error {
	cmd, argv, err := c.command(ctx, req)
	if err != nil {
		return err
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	if err != nil {
		e := &Error{Op: req.Op, Args: argv, ExitCode: -1, Stderr: strings.TrimSpace(stderr.String()), Err: err}
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			e.ExitCode = exit.ExitCode()
		}
		return e
	}
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		return &Error{Op: req.Op, Args: argv, ExitCode: 0, Err: fmt.Errorf("decode output %q: %w", stdout.String(), err)}
	}
	return nil
}

func (c *Client) result(ctx context.Context, req suid.Request) (suid.Result, error) {
	var r suid.Result
	err := c.run(ctx, req, &r)
	return r, err
}

// Version reports the helper's version, build id and compiled-in config
// path. It works on a binary that is not (yet) installed setuid.
func (c *Client) Version(ctx context.Context) (suid.Version, error) {
	var v suid.Version
	err := c.run(ctx, suid.Request{Op: suid.OpVersion}, &v)
	return v, err
}

// SysTest checks the install: setuid works, config trusted, cgroup version,
// and which of the binaries the helper runs pass its checks.
func (c *Client) SysTest(ctx context.Context) (suid.SysTest, error) {
	var s suid.SysTest
	err := c.run(ctx, suid.Request{Op: suid.OpSysTest}, &s)
	return s, err
}

// Jail names what jail prepare puts in a VM's chroot.
type Jail struct {
	VM       string
	UID, GID uint32
	Image    string // image id: <layer_dir>/images/<Image>.ext4 becomes base.ext4
	Kernel   string // optional file name under kernel.dir; default kernel.vmlinux or vmlinux
	Initrd   string // the shared initramfs: a file name under <kernel.dir>/initramfs
}

// PrepareJail builds the VM's chroot with its kernel, the shared initramfs,
// base image, config disk (<work_dir>/vms/<vm>/config.img) and writable disk
// (<work_dir>/vms/<vm>/disk.ext4, handed to the VM uid with the caller's
// group). It returns how each file was placed (link, reflink or copy).
func (c *Client) PrepareJail(ctx context.Context, j Jail) (map[string]string, error) {
	r, err := c.result(ctx, suid.Request{Op: suid.OpJailPrepare, VM: j.VM, UID: j.UID, GID: j.GID, Image: j.Image, Kernel: j.Kernel, Initrd: j.Initrd})
	return r.Files, err
}

// GrantAPI hands the jail's Firecracker API socket to the caller. It
// reports false (and no error) while the socket does not exist yet.
func (c *Client) GrantAPI(ctx context.Context, vm string) (granted bool, err error) {
	r, err := c.result(ctx, suid.Request{Op: suid.OpJailGrantAPI, VM: vm})
	return r.Result == "granted", err
}

// GrantVsock is GrantAPI for the jail's vsock socket.
func (c *Client) GrantVsock(ctx context.Context, vm string) (granted bool, err error) {
	r, err := c.result(ctx, suid.Request{Op: suid.OpJailGrantVsock, VM: vm})
	return r.Result == "granted", err
}

// RemoveJail deletes the VM's jail; a missing jail is not an error.
func (c *Client) RemoveJail(ctx context.Context, vm string) error {
	_, err := c.result(ctx, suid.Request{Op: suid.OpJailRemove, VM: vm})
	return err
}

// Delegate hands the node's parent cgroup (jails.cgroup) to the caller,
// who then creates VM cgroups, sets their limits and moves its own VMM
// processes into them without the helper. Under cgroup v2 the helper also
// moves the calling process itself into the parent's hyperd leaf, so call
// it from hyperd's own process. Calling it again changes nothing.
func (c *Client) Delegate(ctx context.Context) (suid.Delegation, error) {
	var d suid.Delegation
	err := c.run(ctx, suid.Request{Op: suid.OpCgroupDelegate}, &d)
	return d, err
}

// KillCgroup kills every process in the VM's cgroup and waits until it is
// empty. It returns how many processes were signalled.
func (c *Client) KillCgroup(ctx context.Context, vm string) (int, error) {
	r, err := c.result(ctx, suid.Request{Op: suid.OpCgroupKill, VM: vm})
	return r.Killed, err
}

// RemoveCgroup kills and removes the VM's cgroup. It reports false when
// there was none; a cgroup that stays busy is an error.
func (c *Client) RemoveCgroup(ctx context.Context, vm string) (removed bool, err error) {
	r, err := c.result(ctx, suid.Request{Op: suid.OpCgroupRemove, VM: vm})
	return r.Result == "removed", err
}

// ListCgroups returns the ids of the VM cgroups under the parent cgroup.
func (c *Client) ListCgroups(ctx context.Context) ([]string, error) {
	r, err := c.result(ctx, suid.Request{Op: suid.OpCgroupList})
	return r.VMs, err
}

// JailerCommand returns the command that becomes the VM's jailer: the
// helper execs the configured jailer in its own process, so the caller
// starts, supervises and waits for this command as it would for the
// jailer, and the jailer's exit status is the command's. The caller sets
// Stdout and Stderr. netns is optional ("hyper-...").
func (c *Client) JailerCommand(ctx context.Context, vm string, uid, gid uint32, netns string) (*exec.Cmd, error) {
	cmd, _, err := c.command(ctx, suid.Request{Op: suid.OpJailer, VM: vm, UID: uid, GID: gid, Netns: netns})
	return cmd, err
}
