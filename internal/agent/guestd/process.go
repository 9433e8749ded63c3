package guestd

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
)

// defaultPath is the PATH of a process whose image sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// procSpec is a validated, resolved description of a process to start.
type procSpec struct {
	argv   []string
	path   string // argv[0] resolved against PATH
	env    []string
	dir    string
	id     identity
	setID  bool // switch to id (the agent is root)
	tty    bool
	pgroup bool // own process group (always, except for a tty's session)
}

// execRequest is what a caller asks to run, before resolution.
type execRequest struct {
	argv []string
	env  map[string]string
	cwd  string
	user string
	tty  bool
}

// prepare validates r against the image's defaults and resolves its user,
// environment, working directory and executable. Errors carry the gRPC
// code the caller should see.
func (s *Server) prepare(r execRequest) (procSpec, error) {
	if len(r.argv) == 0 || r.argv[0] == "" {
		return procSpec{}, connect.NewError(connect.CodeInvalidArgument, errors.New("argv: empty"))
	}
	for i, a := range r.argv {
		if strings.IndexByte(a, 0) >= 0 {
			return procSpec{}, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("argv[%d]: contains a NUL byte", i))
		}
	}
	for k, v := range r.env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.IndexByte(v, 0) >= 0 {
			return procSpec{}, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("env: bad variable %q", k))
		}
	}

	user := r.user
	if user == "" {
		user = s.cfg.Image.User
	}
	spec := procSpec{argv: r.argv, tty: r.tty, pgroup: !r.tty}
	if os.Geteuid() == 0 {
		id, err := resolveUser(s.cfg.Root, user)
		if err != nil {
			code := connect.CodeInvalidArgument
			if errors.Is(err, errUnknownUser) {
				code = connect.CodeNotFound
			}
			return procSpec{}, connect.NewError(code, err)
		}
		spec.id, spec.setID = id, true
	} else {
		// A non-root agent (tests, development) can only run as itself.
		if user != "" {
			return procSpec{}, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("user %q: the agent does not run as root", user))
		}
		spec.id = identity{uid: uint32(os.Getuid()), gid: uint32(os.Getgid()), home: os.Getenv("HOME")}
	}

	spec.env = mergeEnv(s.cfg.Image.Env, r.env, spec.id.home, r.tty)

	spec.dir = r.cwd
	if spec.dir == "" {
		spec.dir = s.cfg.Image.WorkingDir
	}
	if spec.dir == "" {
		spec.dir = "/"
	}
	if !filepath.IsAbs(spec.dir) {
		return procSpec{}, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cwd %q: not an absolute path", spec.dir))
	}
	if fi, err := os.Stat(spec.dir); err != nil {
		return procSpec{}, fileError(fmt.Sprintf("cwd %s", spec.dir), err)
	} else if !fi.IsDir() {
		return procSpec{}, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("cwd %s: not a directory", spec.dir))
	}

	path, err := lookPath(r.argv[0], envValue(spec.env, "PATH"), spec.dir)
	if err != nil {
		return procSpec{}, err
	}
	spec.path = path
	return spec, nil
}

// mergeEnv lays explicit over the image's KEY=VALUE list (explicit keys
// win, in sorted order after the image's) and fills PATH, HOME and, for a
// terminal, TERM when neither sets them.
func mergeEnv(image []string, explicit map[string]string, home string, tty bool) []string {
	env := make([]string, 0, len(image)+len(explicit)+3)
	index := make(map[string]int)
	set := func(k, v string) {
		if i, ok := index[k]; ok {
			env[i] = k + "=" + v
			return
		}
		index[k] = len(env)
		env = append(env, k+"="+v)
	}
	for _, kv := range image {
		k, v, _ := strings.Cut(kv, "=")
		if k != "" {
			set(k, v)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(explicit)) {
		set(k, explicit[k])
	}
	defaults := [][2]string{{"PATH", defaultPath}, {"HOME", home}}
	if tty {
		defaults = append(defaults, [2]string{"TERM", "xterm"})
	}
	for _, d := range defaults {
		if _, ok := index[d[0]]; !ok && d[1] != "" {
			set(d[0], d[1])
		}
	}
	return env
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v
		}
	}
	return ""
}

// lookPath finds name the way execvp(3) would with the process's own PATH
// (not the agent's), relative names being taken from dir.
func lookPath(name, path, dir string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := checkExecutable(p); err != nil {
			return "", err
		}
		return p, nil
	}
	var denied error
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		p := filepath.Join(d, name)
		err := checkExecutable(p)
		if err == nil {
			return p, nil
		}
		if connect.CodeOf(err) == connect.CodePermissionDenied && denied == nil {
			denied = err
		}
	}
	if denied != nil {
		return "", denied
	}
	return "", connect.NewError(connect.CodeNotFound, fmt.Errorf("executable %q: not found in PATH %q", name, path))
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return fileError(fmt.Sprintf("executable %s", p), err)
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("executable %s: not an executable file", p))
	}
	return nil
}

// command builds the exec.Cmd for spec; the caller sets its streams.
func (spec procSpec) command() *exec.Cmd {
	attr := &syscall.SysProcAttr{Setpgid: spec.pgroup}
	if spec.tty {
		// The process leads a new session whose controlling terminal is
		// its stdin (the pty), so job control and ^C work.
		attr.Setsid, attr.Setctty, attr.Ctty = true, true, 0
	}
	if spec.setID {
		attr.Credential = &syscall.Credential{Uid: spec.id.uid, Gid: spec.id.gid, Groups: spec.id.groups}
	}
	return &exec.Cmd{
		Path:        spec.path,
		Args:        spec.argv,
		Env:         spec.env,
		Dir:         spec.dir,
		SysProcAttr: attr,
	}
}

// startError maps a failed start of spec to a gRPC code.
func startError(spec procSpec, err error) error {
	return fileError(fmt.Sprintf("start %s", spec.path), err)
}

// signalByName parses "SIGTERM", "TERM", "sigterm" or a number.
func signalByName(name string) (unix.Signal, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if n == "" {
		return 0, errors.New("signal: empty")
	}
	if !strings.HasPrefix(n, "SIG") {
		n = "SIG" + n
	}
	if s := unix.SignalNum(n); s != 0 {
		return s, nil
	}
	if num, err := strconv.Atoi(strings.TrimSpace(name)); err == nil && num > 0 && num <= 64 {
		return unix.Signal(num), nil
	}
	return 0, fmt.Errorf("signal %q: unknown", name)
}

// exitOf converts a wait status to the protocol's terms.
func exitOf(ws unix.WaitStatus) (code int32, signal string) {
	if ws.Signaled() {
		return -1, unix.SignalName(ws.Signal())
	}
	return int32(ws.ExitStatus()), ""
}
