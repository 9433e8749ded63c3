package guestd_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	agentv1 "github.com/hypervm/hyper/api/agent/v1"
	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/agent/guestd"
	"github.com/hypervm/hyper/internal/guestcfg"
)

func run(t *testing.T, h *harness, opts agent.ExecOptions) (agent.ExitStatus, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	opts.Stdout, opts.Stderr = &stdout, &stderr
	st, err := h.client.Exec(ctxT(t), opts)
	if err != nil {
		t.Fatalf("exec %q: %v", opts.Argv, err)
	}
	return st, stdout.String(), stderr.String()
}

func TestExecOutputAndExitCode(t *testing.T) {
	h := start(t, guestd.Config{})
	st, out, errOut := run(t, h, agent.ExecOptions{Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
	if out != "out\n" || errOut != "err\n" {
		t.Errorf("stdout %q stderr %q, want %q and %q", out, errOut, "out\n", "err\n")
	}
	if st != (agent.ExitStatus{Code: 3}) {
		t.Errorf("status %+v, want code 3", st)
	}
}

func TestExecStdin(t *testing.T) {
	h := start(t, guestd.Config{})
	in := make([]byte, 3<<20)
	rand.Read(in)
	var out bytes.Buffer
	st, err := h.client.Exec(ctxT(t), agent.ExecOptions{
		Argv:   []string{"cat"},
		Stdin:  bytes.NewReader(in),
		Stdout: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 0 || !bytes.Equal(out.Bytes(), in) {
		t.Errorf("status %+v, got %d bytes back, want the %d sent", st, out.Len(), len(in))
	}
}

func TestExecSignal(t *testing.T) {
	h := start(t, guestd.Config{})
	sigs := make(chan string, 1)
	st, _, _ := run(t, h, agent.ExecOptions{
		Argv:    []string{"sleep", "300"},
		Signal:  sigs,
		Started: func(int) { sigs <- "TERM" },
	})
	if st != (agent.ExitStatus{Code: -1, Signal: "SIGTERM"}) {
		t.Errorf("status %+v, want killed by SIGTERM", st)
	}
}

// watchWriter collects output and reports when it first contains want.
type watchWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want []string
	seen []chan struct{}
}

func newWatchWriter(want ...string) *watchWriter {
	w := &watchWriter{want: want}
	for range want {
		w.seen = append(w.seen, make(chan struct{}))
	}
	return w
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for i, s := range w.want {
		if s != "" && strings.Contains(w.buf.String(), s) {
			close(w.seen[i])
			w.want[i] = ""
		}
	}
	return len(p), nil
}

func (w *watchWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestExecTTYResize(t *testing.T) {
	h := start(t, guestd.Config{})
	out := newWatchWriter("30 100", "40 120")
	resize := make(chan agent.TerminalSize, 1)
	sigs := make(chan string, 1)
	go func() {
		select {
		case <-out.seen[0]:
		case <-time.After(20 * time.Second):
			return
		}
		resize <- agent.TerminalSize{Rows: 40, Cols: 120}
		select {
		case <-out.seen[1]:
		case <-time.After(20 * time.Second):
		}
		sigs <- "KILL"
	}()
	st, err := h.client.Exec(ctxT(t), agent.ExecOptions{
		Argv:    []string{"sh", "-c", "tty >/dev/null || exit 9; while :; do stty size; sleep 0.1; done"},
		TTY:     true,
		Size:    agent.TerminalSize{Rows: 30, Cols: 100},
		Timeout: 25 * time.Second,
		Stdout:  out,
		Resize:  resize,
		Signal:  sigs,
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.Signal != "SIGKILL" || st.TimedOut {
		t.Fatalf("status %+v, want killed by our SIGKILL; output %q", st, out.String())
	}
}

func TestExecTTYInput(t *testing.T) {
	h := start(t, guestd.Config{})
	var out bytes.Buffer
	st, err := h.client.Exec(ctxT(t), agent.ExecOptions{
		Argv:   []string{"sh", "-c", "read line; echo got:$line; cat; echo done"},
		TTY:    true,
		Stdin:  strings.NewReader("hello\n"),
		Stdout: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Closing stdin on a terminal sends ^D, which ends cat.
	if st.Code != 0 || !strings.Contains(out.String(), "got:hello") || !strings.Contains(out.String(), "done") {
		t.Errorf("status %+v output %q", st, out.String())
	}
}

func TestExecEnvMerge(t *testing.T) {
	h := start(t, guestd.Config{Image: guestcfg.Image{
		Env: []string{"A=image", "B=image", "PATH=/usr/bin:/bin"},
	}})
	_, out, _ := run(t, h, agent.ExecOptions{
		Argv: []string{"env"},
		Env:  map[string]string{"B": "call", "C": "call"},
	})
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(l, "=")
		got[k] = v
	}
	want := map[string]string{"A": "image", "B": "call", "C": "call", "PATH": "/usr/bin:/bin"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s=%q, want %q (env %v)", k, got[k], v, got)
		}
	}
	if got["HOME"] == "" {
		t.Errorf("HOME not set: %v", got)
	}
}

func TestExecCwd(t *testing.T) {
	dir := t.TempDir()
	h := start(t, guestd.Config{Image: guestcfg.Image{WorkingDir: dir}})
	if _, out, _ := run(t, h, agent.ExecOptions{Argv: []string{"pwd"}}); out != dir+"\n" {
		t.Errorf("image working dir: pwd = %q, want %q", out, dir)
	}
	sub := filepath.Join(dir, "sub")
	must(t, os.Mkdir(sub, 0o755))
	if _, out, _ := run(t, h, agent.ExecOptions{Argv: []string{"pwd"}, Cwd: sub}); out != sub+"\n" {
		t.Errorf("cwd: pwd = %q, want %q", out, sub)
	}
	file := filepath.Join(dir, "file")
	must(t, os.WriteFile(file, nil, 0o644))
	for _, tc := range []struct {
		cwd  string
		code connect.Code
	}{
		{filepath.Join(dir, "missing"), connect.CodeNotFound},
		{file, connect.CodeFailedPrecondition},
		{"relative", connect.CodeInvalidArgument},
	} {
		_, err := h.client.Exec(ctxT(t), agent.ExecOptions{Argv: []string{"pwd"}, Cwd: tc.cwd})
		if connect.CodeOf(err) != tc.code {
			t.Errorf("cwd %q: error %v, want %v", tc.cwd, err, tc.code)
		}
	}
}

func TestExecUser(t *testing.T) {
	requireRoot(t)
	root := etcRoot(t)
	h := start(t, guestd.Config{Root: root, Image: guestcfg.Image{User: "nobody"}})
	for _, tc := range []struct{ user, want string }{
		{"", "65534 65534 65534 100"}, // the image's user, with its groups
		{"65534", "65534 65534 65534 100"},
		{"nobody:users", "65534 100 100"},
		{"1234:4321", "1234 4321 4321"},
		{"root", "0 0 0"},
	} {
		_, out, errOut := run(t, h, agent.ExecOptions{
			Argv: []string{"sh", "-c", `echo $(id -u) $(id -g) $(id -G)`},
			User: tc.user,
		})
		if strings.TrimSpace(out) != tc.want {
			t.Errorf("user %q: id = %q (stderr %q), want %q", tc.user, out, errOut, tc.want)
		}
	}
	for _, tc := range []struct {
		user string
		code connect.Code
	}{
		{"ghost", connect.CodeNotFound},
		{"nobody:ghosts", connect.CodeNotFound},
		{":1", connect.CodeInvalidArgument},
	} {
		_, err := h.client.Exec(ctxT(t), agent.ExecOptions{Argv: []string{"true"}, User: tc.user})
		if connect.CodeOf(err) != tc.code {
			t.Errorf("user %q: error %v, want %v", tc.user, err, tc.code)
		}
	}

	// A root-only executable is refused to nobody.
	script := filepath.Join(t.TempDir(), "secret")
	must(t, os.WriteFile(script, []byte("#!/bin/sh\necho no\n"), 0o700))
	_, err := h.client.Exec(ctxT(t), agent.ExecOptions{Argv: []string{script}, User: "nobody"})
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("exec of a 0700 root file as nobody: error %v, want PermissionDenied", err)
	}
}

func TestExecTimeoutKillsGroup(t *testing.T) {
	h := start(t, guestd.Config{})
	out := newWatchWriter("\n")
	began := time.Now()
	st, err := h.client.Exec(ctxT(t), agent.ExecOptions{
		Argv:    []string{"sh", "-c", "sleep 300 & echo $!; sleep 300"},
		Timeout: 500 * time.Millisecond,
		Stdout:  out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !st.TimedOut || st.Signal != "SIGKILL" {
		t.Errorf("status %+v, want timed out and killed", st)
	}
	if d := time.Since(began); d > 10*time.Second {
		t.Errorf("exec took %v with a 500ms timeout", d)
	}
	grandchild, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("grandchild pid: %q", out.String())
	}
	waitGone(t, grandchild)
}

func TestExecCancelKills(t *testing.T) {
	h := start(t, guestd.Config{})
	ctx, cancel := context.WithCancel(ctxT(t))
	pids := make(chan int, 1)
	go func() {
		select {
		case <-pids:
			cancel()
		case <-ctx.Done():
		}
	}()
	_, err := h.client.Exec(ctx, agent.ExecOptions{
		Argv:    []string{"sleep", "300"},
		Started: func(pid int) { pids <- pid; pids <- pid },
	})
	if !errors.Is(err, context.Canceled) && connect.CodeOf(err) != connect.CodeCanceled {
		t.Fatalf("error %v, want cancelled", err)
	}
	waitGone(t, <-pids)
}

// waitGone waits until pid is no process (or only a zombie) anymore.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return
		}
		if f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return
		}
	}
	t.Errorf("process %d still runs", pid)
	unix.Kill(pid, unix.SIGKILL)
}

func TestExecBadRequests(t *testing.T) {
	h := start(t, guestd.Config{})
	for _, tc := range []struct {
		name string
		opts agent.ExecOptions
		code connect.Code
	}{
		{"empty argv", agent.ExecOptions{}, connect.CodeInvalidArgument},
		{"empty argv[0]", agent.ExecOptions{Argv: []string{""}}, connect.CodeInvalidArgument},
		{"NUL in argv", agent.ExecOptions{Argv: []string{"echo", "a\x00b"}}, connect.CodeInvalidArgument},
		{"bad env key", agent.ExecOptions{Argv: []string{"true"}, Env: map[string]string{"A=B": "x"}}, connect.CodeInvalidArgument},
		{"missing executable", agent.ExecOptions{Argv: []string{"no-such-command-hyper"}}, connect.CodeNotFound},
		{"missing path", agent.ExecOptions{Argv: []string{"/no/such/file"}}, connect.CodeNotFound},
		{"directory", agent.ExecOptions{Argv: []string{"/"}}, connect.CodePermissionDenied},
	} {
		_, err := h.client.Exec(ctxT(t), tc.opts)
		if connect.CodeOf(err) != tc.code {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.code)
		}
	}

	// A stream whose first message is not start.
	stream := h.client.RPC().Exec(ctxT(t))
	stream.Send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: []byte("x")}})
	_, err := stream.Receive()
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("no start message: error %v, want InvalidArgument", err)
	}
	stream.CloseRequest()
	stream.CloseResponse()
}

func TestExecConcurrent(t *testing.T) {
	h := start(t, guestd.Config{})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			want := strconv.Itoa(i)
			var out bytes.Buffer
			st, err := h.client.Exec(ctxT(t), agent.ExecOptions{Argv: []string{"echo", want}, Stdout: &out})
			if err != nil || st.Code != 0 || out.String() != want+"\n" {
				t.Errorf("exec %d: %+v %v %q", i, st, err, out.String())
			}
		})
	}
	wg.Wait()
}

func TestExecWithoutStdinSeesEOF(t *testing.T) {
	h := start(t, guestd.Config{})
	st, out, _ := run(t, h, agent.ExecOptions{Argv: []string{"sh", "-c", "cat; echo end"}, Timeout: 10 * time.Second})
	if st.Code != 0 || out != "end\n" {
		t.Errorf("status %+v output %q", st, out)
	}
}

func TestExecTTYOwnedByUser(t *testing.T) {
	requireRoot(t)
	h := start(t, guestd.Config{Root: etcRoot(t)})
	st, out, _ := run(t, h, agent.ExecOptions{
		Argv: []string{"sh", "-c", `stat -c %u "$(tty)"`},
		User: "nobody",
		TTY:  true,
	})
	if st.Code != 0 || strings.TrimSpace(out) != "65534" {
		t.Errorf("status %+v, terminal owner %q, want 65534", st, out)
	}
}
