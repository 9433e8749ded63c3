package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/durationpb"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
	"github.com/hypervm/hyper/api/hyper/v1/hyperv1connect"
	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/agent/agenttest"
	"github.com/hypervm/hyper/internal/agent/guestd"
	"github.com/hypervm/hyper/internal/cli"
	"github.com/hypervm/hyper/internal/ids"
	"github.com/hypervm/hyper/internal/node"
	"github.com/hypervm/hyper/internal/store"
)

// fakeVMs is a node whose every running VM is the same guest agent: a real
// guestd serving processes and files of this host over an in-process
// socket pair. VM rows and states come from a real store.
type fakeVMs struct {
	st      *store.Store
	client  *agent.Client
	logsDir string
}

func (f *fakeVMs) Create(context.Context, node.CreateRequest) (store.VM, error) {
	return store.VM{}, errors.New("fakeVMs: Create is not part of these tests")
}

func (f *fakeVMs) Stop(context.Context, string, time.Duration) (store.VM, error) {
	return store.VM{}, errors.New("fakeVMs: Stop is not part of these tests")
}

func (f *fakeVMs) Agent(ctx context.Context, id string) (*agent.Client, error) {
	vm, err := f.st.GetVM(ctx, id)
	if err != nil {
		return nil, err
	}
	if vm.State != store.StateRunning {
		return nil, fmt.Errorf("vm %s is %s: %w", id, vm.State, node.ErrNotRunning)
	}
	return f.client, nil
}

func (f *fakeVMs) ConsoleLog(ctx context.Context, id string) (string, error) {
	if _, err := f.st.GetVM(ctx, id); err != nil {
		return "", err
	}
	return filepath.Join(f.logsDir, id+".log"), nil
}

// guestEnv is the API served with fakeVMs over cleartext HTTP/2 on a unix
// socket, as hyperd serves it, with one running and one stopped VM.
type guestEnv struct {
	api     hyperv1connect.HyperClient
	st      *store.Store
	sock    string
	dir     string // a scratch directory: the "guest" sees the host's files
	logsDir string
	running string
	stopped string
}

func newGuestEnv(t *testing.T) *guestEnv {
	t.Helper()
	ctx := context.Background()
	// Socket paths are limited to 108 bytes; t.TempDir's can be longer.
	base, err := os.MkdirTemp("", "hyper-guest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	e := &guestEnv{sock: filepath.Join(base, "api.sock"), dir: filepath.Join(base, "guest"), logsDir: filepath.Join(base, "logs")}
	for _, d := range []string{e.dir, e.logsDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	e.st, err = store.Open(ctx, filepath.Join(base, "hyper.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.st.Close() })
	im, _, err := e.st.PutImage(ctx, store.Image{ID: strings.Repeat("b", 64), Ref: "busybox", Arch: "x86_64", Config: json.RawMessage(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []*string{&e.running, &e.stopped} {
		*id = ids.NewVM()
		if _, err := e.st.CreateVM(ctx, store.VM{ID: *id, Node: "n1", ImageID: im.ID, InstanceType: "micro", Arch: "x86_64", State: store.StateRunning}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.st.UpdateVMState(ctx, e.stopped, nil, store.StateStopped, ""); err != nil {
		t.Fatal(err)
	}

	srv := New(Options{Store: e.st, VMs: &fakeVMs{st: e.st, client: serveGuest(t), logsDir: e.logsDir}, Node: "n1", LeaseTTL: 15 * time.Second})
	l, err := net.Listen("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	hs := &http.Server{Handler: srv.Handler(), Protocols: &protocols}
	served := make(chan struct{})
	go func() {
		defer close(served)
		hs.Serve(l)
	}()
	t.Cleanup(func() {
		hs.Close()
		<-served
	})

	var clientProtocols http.Protocols
	clientProtocols.SetUnencryptedHTTP2(true)
	transport := &http.Transport{
		Protocols: &clientProtocols,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", e.sock)
		},
	}
	t.Cleanup(transport.CloseIdleConnections)
	e.api = hyperv1connect.NewHyperClient(&http.Client{Transport: transport}, "http://hyperd", connect.WithGRPC())
	return e
}

// serveGuest serves a guest agent in-process and returns a client of it;
// both stop with the test.
func serveGuest(t *testing.T) *agent.Client {
	t.Helper()
	_, client := agenttest.Serve(t, guestd.Config{VMID: "vtest"})
	return client
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// session is an Exec call driven step by step.
type session struct {
	t              *testing.T
	stream         *connect.BidiStreamForClient[hyperv1.ExecRequest, hyperv1.ExecResponse]
	stdout, stderr bytes.Buffer
	exit           *hyperv1.ExecExit
}

func startExec(t *testing.T, ctx context.Context, c hyperv1connect.HyperClient, start *hyperv1.ExecStart) *session {
	t.Helper()
	s := &session{t: t, stream: c.Exec(ctx)}
	t.Cleanup(func() { s.stream.CloseResponse() })
	if err := s.stream.Send(&hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_Start{Start: start}}); err != nil {
		t.Fatalf("send start: %v", err)
	}
	return s
}

func (s *session) send(m *hyperv1.ExecRequest) {
	s.t.Helper()
	if err := s.stream.Send(m); err != nil {
		s.t.Fatalf("send %v: %v", m, err)
	}
}

// receive reads one response; false once the exit status has arrived.
func (s *session) receive() (bool, error) {
	res, err := s.stream.Receive()
	if err != nil {
		return false, err
	}
	switch m := res.GetMsg().(type) {
	case *hyperv1.ExecResponse_Stdout:
		s.stdout.Write(m.Stdout)
	case *hyperv1.ExecResponse_Stderr:
		s.stderr.Write(m.Stderr)
	case *hyperv1.ExecResponse_Exit:
		s.exit = m.Exit
		return false, nil
	}
	return true, nil
}

// waitStdout receives until stdout contains want.
func (s *session) waitStdout(want string) {
	s.t.Helper()
	for !strings.Contains(s.stdout.String(), want) {
		more, err := s.receive()
		if err != nil || !more {
			s.t.Fatalf("stdout %q does not contain %q (err %v, exit %v)", s.stdout.String(), want, err, s.exit)
		}
	}
}

// wait receives until the exit status and returns it.
func (s *session) wait() (*hyperv1.ExecExit, error) {
	for {
		more, err := s.receive()
		if err != nil {
			return nil, err
		}
		if !more {
			if _, err := s.stream.Receive(); !errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("after the exit status: %v, want the end of the stream", err)
			}
			return s.exit, nil
		}
	}
}

func (s *session) mustWait() *hyperv1.ExecExit {
	s.t.Helper()
	exit, err := s.wait()
	if err != nil {
		s.t.Fatalf("exec: %v (stdout %q, stderr %q)", err, s.stdout.String(), s.stderr.String())
	}
	return exit
}

func closeStdin() *hyperv1.ExecRequest {
	return &hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_CloseStdin{CloseStdin: true}}
}

func TestExecOutputAndExitCode(t *testing.T) {
	e := newGuestEnv(t)
	s := startExec(t, testCtx(t), e.api, &hyperv1.ExecStart{VmId: e.running, Argv: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
	s.send(closeStdin())
	exit := s.mustWait()
	if exit.GetCode() != 3 || exit.GetSignal() != "" || exit.GetTimedOut() {
		t.Errorf("exit %v; want code 3", exit)
	}
	if s.stdout.String() != "out\n" || s.stderr.String() != "err\n" {
		t.Errorf("stdout %q stderr %q; want %q and %q", s.stdout.String(), s.stderr.String(), "out\n", "err\n")
	}
}

func TestExecStdin(t *testing.T) {
	e := newGuestEnv(t)
	s := startExec(t, testCtx(t), e.api, &hyperv1.ExecStart{VmId: e.running, Argv: []string{"cat"}})
	var want strings.Builder
	for i := range 100 {
		line := fmt.Sprintf("line %d\n", i)
		want.WriteString(line)
		s.send(&hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_Stdin{Stdin: []byte(line)}})
	}
	s.send(closeStdin())
	if exit := s.mustWait(); exit.GetCode() != 0 {
		t.Errorf("exit %v", exit)
	}
	if s.stdout.String() != want.String() {
		t.Errorf("cat echoed %d bytes; want the %d sent", s.stdout.Len(), want.Len())
	}
}

func TestExecClientHalfCloseEndsStdin(t *testing.T) {
	// The CLI closes its side after close_stdin; a client that only
	// half-closes must also end the process's input.
	e := newGuestEnv(t)
	s := startExec(t, testCtx(t), e.api, &hyperv1.ExecStart{VmId: e.running, Argv: []string{"wc", "-c"}})
	s.send(&hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_Stdin{Stdin: []byte("12345")}})
	if err := s.stream.CloseRequest(); err != nil {
		t.Fatal(err)
	}
	if exit := s.mustWait(); exit.GetCode() != 0 || strings.TrimSpace(s.stdout.String()) != "5" {
		t.Errorf("exit %v stdout %q; want 0 and 5", exit, s.stdout.String())
	}
}

func TestExecSignal(t *testing.T) {
	e := newGuestEnv(t)
	s := startExec(t, testCtx(t), e.api, &hyperv1.ExecStart{VmId: e.running, Argv: []string{"sh", "-c", "echo ready; exec sleep 30"}})
	s.waitStdout("ready\n")
	s.send(&hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_Signal{Signal: "SIGTERM"}})
	exit := s.mustWait()
	if exit.GetCode() != -1 || exit.GetSignal() != "SIGTERM" || exit.GetTimedOut() {
		t.Errorf("exit %v; want killed by SIGTERM", exit)
	}
}

func TestExecTimeout(t *testing.T) {
	e := newGuestEnv(t)
	began := time.Now()
	s := startExec(t, testCtx(t), e.api, &hyperv1.ExecStart{VmId: e.running, Argv: []string{"sleep", "30"}, Timeout: durationpb.New(300 * time.Millisecond)})
	s.send(closeStdin())
	exit := s.mustWait()
	if !exit.GetTimedOut() || exit.GetSignal() != "SIGKILL" {
		t.Errorf("exit %v; want timed out, SIGKILL", exit)
	}
	if d := time.Since(began); d < 300*time.Millisecond || d > 10*time.Second {
		t.Errorf("took %v with a 300ms timeout", d)
	}
}

func TestExecTTYResize(t *testing.T) {
	e := newGuestEnv(t)
	s := startExec(t, testCtx(t), e.api, &hyperv1.ExecStart{
		VmId: e.running, Argv: []string{"sh", "-c", "stty size; read x; stty size; [ -t 0 ] && echo tty"},
		Tty: true, Size: &hyperv1.TerminalSize{Rows: 33, Cols: 111},
	})
	s.waitStdout("33 111")
	s.send(&hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_Resize{Resize: &hyperv1.TerminalSize{Rows: 40, Cols: 100}}})
	s.send(&hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_Stdin{Stdin: []byte("go\n")}})
	if exit := s.mustWait(); exit.GetCode() != 0 {
		t.Errorf("exit %v", exit)
	}
	if out := s.stdout.String(); !strings.Contains(out, "40 100") || !strings.Contains(out, "tty") {
		t.Errorf("output %q; want the new size 40 100 and a terminal on stdin", out)
	}
	if s.stderr.Len() != 0 {
		t.Errorf("stderr %q; with a tty all output is stdout", s.stderr.String())
	}
}

func TestExecEnvAndCwd(t *testing.T) {
	e := newGuestEnv(t)
	s := startExec(t, testCtx(t), e.api, &hyperv1.ExecStart{
		VmId: e.running, Argv: []string{"sh", "-c", `printf '%s|%s|' "$GREETING" "$EMPTY"; pwd`},
		Env: map[string]string{"GREETING": "hello world", "EMPTY": ""}, Cwd: e.dir,
	})
	s.send(closeStdin())
	if exit := s.mustWait(); exit.GetCode() != 0 {
		t.Fatalf("exit %v stderr %q", exit, s.stderr.String())
	}
	if want := "hello world||" + e.dir + "\n"; s.stdout.String() != want {
		t.Errorf("stdout %q; want %q", s.stdout.String(), want)
	}
}

func TestExecUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running a process as another user needs root (CI runs tests as root)")
	}
	e := newGuestEnv(t)
	s := startExec(t, testCtx(t), e.api, &hyperv1.ExecStart{VmId: e.running, Argv: []string{"sh", "-c", "id -u; id -g"}, User: "65534:65534"})
	s.send(closeStdin())
	if exit := s.mustWait(); exit.GetCode() != 0 || s.stdout.String() != "65534\n65534\n" {
		t.Errorf("exit %v stdout %q stderr %q; want uid and gid 65534", exit, s.stdout.String(), s.stderr.String())
	}
}

func TestExecRefusals(t *testing.T) {
	e := newGuestEnv(t)
	ctx := testCtx(t)
	exec := func(first *hyperv1.ExecRequest) error {
		stream := e.api.Exec(ctx)
		defer stream.CloseResponse()
		if err := stream.Send(first); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		stream.CloseRequest()
		for {
			res, err := stream.Receive()
			if err != nil {
				return err
			}
			if res.GetExit() != nil {
				return fmt.Errorf("ran: %v", res.GetExit())
			}
		}
	}
	start := func(s *hyperv1.ExecStart) *hyperv1.ExecRequest {
		return &hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_Start{Start: s}}
	}
	sh := []string{"sh", "-c", "true"}
	cases := []struct {
		name  string
		first *hyperv1.ExecRequest
		code  connect.Code
		field string
	}{
		{"no start", &hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_Stdin{Stdin: []byte("x")}}, connect.CodeInvalidArgument, "start"},
		{"empty argv", start(&hyperv1.ExecStart{VmId: e.running}), connect.CodeInvalidArgument, "start.argv"},
		{"bad vm id", start(&hyperv1.ExecStart{VmId: "vm-1", Argv: sh}), connect.CodeInvalidArgument, "start.vm_id"},
		{"relative cwd", start(&hyperv1.ExecStart{VmId: e.running, Argv: sh, Cwd: "tmp"}), connect.CodeInvalidArgument, "start.cwd"},
		{"zero size", start(&hyperv1.ExecStart{VmId: e.running, Argv: sh, Tty: true, Size: &hyperv1.TerminalSize{}}), connect.CodeInvalidArgument, "start.size"},
		{"negative timeout", start(&hyperv1.ExecStart{VmId: e.running, Argv: sh, Timeout: durationpb.New(-time.Second)}), connect.CodeInvalidArgument, "start.timeout"},
		{"unknown vm", start(&hyperv1.ExecStart{VmId: ids.NewVM(), Argv: sh}), connect.CodeNotFound, ""},
		{"stopped vm", start(&hyperv1.ExecStart{VmId: e.stopped, Argv: sh}), connect.CodeFailedPrecondition, ""},
		{"missing executable", start(&hyperv1.ExecStart{VmId: e.running, Argv: []string{"/no/such/program"}}), connect.CodeNotFound, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := exec(tc.first)
			if connect.CodeOf(err) != tc.code {
				t.Fatalf("err = %v; want code %v", err, tc.code)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("err = %v; want it to name %s", err, tc.field)
			}
		})
	}
}

// TestExecCancelKillsAndLeaksNothing cancels an Exec mid-stream: the guest
// process dies, and nothing of the call is left running once the servers
// are gone.
func TestExecCancelKillsAndLeaksNothing(t *testing.T) {
	// Goroutines of earlier tests may still be winding down.
	before := goleak.IgnoreCurrent()
	// Registered first, so it runs after every other cleanup.
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	e := newGuestEnv(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	s := startExec(t, ctx, e.api, &hyperv1.ExecStart{VmId: e.running, Argv: []string{"sh", "-c", "echo $$; exec sleep 30"}})
	s.waitStdout("\n")
	pid, err := strconv.Atoi(strings.TrimSpace(s.stdout.String()))
	if err != nil {
		t.Fatalf("pid %q: %v", s.stdout.String(), err)
	}
	cancel()
	if _, err := s.wait(); connect.CodeOf(err) != connect.CodeCanceled {
		t.Errorf("after cancel: %v; want canceled", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for unix.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("guest process %d still runs after the client cancelled", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writeFile(ctx context.Context, c hyperv1connect.HyperClient, hdr *hyperv1.WriteFileHeader, data []byte) (*hyperv1.FileInfo, error) {
	stream := c.WriteFile(ctx)
	if hdr != nil {
		if err := stream.Send(&hyperv1.WriteFileRequest{Msg: &hyperv1.WriteFileRequest_Header{Header: hdr}}); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
	}
	for len(data) > 0 {
		n := min(len(data), 100<<10)
		if err := stream.Send(&hyperv1.WriteFileRequest{Msg: &hyperv1.WriteFileRequest_Data{Data: data[:n]}}); err != nil {
			break // the server ended the call; CloseAndReceive says why
		}
		data = data[n:]
	}
	res, err := stream.CloseAndReceive()
	if err != nil {
		return nil, err
	}
	return res.Msg.GetInfo(), nil
}

func readFile(ctx context.Context, c hyperv1connect.HyperClient, vm, path string) (*hyperv1.FileInfo, []byte, error) {
	stream, err := c.ReadFile(ctx, connect.NewRequest(&hyperv1.ReadFileRequest{VmId: vm, Path: path}))
	if err != nil {
		return nil, nil, err
	}
	defer stream.Close()
	var info *hyperv1.FileInfo
	var data bytes.Buffer
	for stream.Receive() {
		switch m := stream.Msg().GetMsg().(type) {
		case *hyperv1.ReadFileResponse_Info:
			if info != nil || data.Len() > 0 {
				return nil, nil, errors.New("file info is not the first message, or came twice")
			}
			info = m.Info
		case *hyperv1.ReadFileResponse_Data:
			if info == nil {
				return nil, nil, errors.New("data before the file info")
			}
			data.Write(m.Data)
		}
	}
	if err := stream.Err(); err != nil {
		return nil, nil, err
	}
	return info, data.Bytes(), nil
}

func TestFileRoundTrip(t *testing.T) {
	e := newGuestEnv(t)
	ctx := testCtx(t)
	data := make([]byte, 5<<20)
	rand.Read(data)
	path := filepath.Join(e.dir, "sub", "blob")
	info, err := writeFile(ctx, e.api, &hyperv1.WriteFileHeader{VmId: e.running, Path: path, Mode: 0o640, MakeParents: true}, data)
	if err != nil {
		t.Fatal(err)
	}
	if info.GetSize() != uint64(len(data)) || info.GetMode()&0o7777 != 0o640 || info.GetPath() != path {
		t.Errorf("WriteFile info %v; want %d bytes, mode 0640", info, len(data))
	}
	info, back, err := readFile(ctx, e.api, e.running, path)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(back) != sha256.Sum256(data) {
		t.Fatalf("read back %d bytes that differ from the %d written", len(back), len(data))
	}
	if info.GetMode()&0o7777 != 0o640 || info.GetName() != "blob" || info.GetIsDir() || info.GetMtime() == nil {
		t.Errorf("ReadFile info %v", info)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("the file in the guest: %v, %v; want mode 0640", fi, err)
	}
	// The default mode is 0644.
	info, err = writeFile(ctx, e.api, &hyperv1.WriteFileHeader{VmId: e.running, Path: path}, []byte("small"))
	if err != nil || info.GetMode()&0o7777 != 0o644 || info.GetSize() != 5 {
		t.Errorf("rewrite: %v, %v; want 5 bytes, mode 0644", info, err)
	}
}

func TestFileRefusals(t *testing.T) {
	e := newGuestEnv(t)
	ctx := testCtx(t)
	read := func(vm, path string) func() error {
		return func() error { _, _, err := readFile(ctx, e.api, vm, path); return err }
	}
	write := func(hdr *hyperv1.WriteFileHeader) func() error {
		return func() error { _, err := writeFile(ctx, e.api, hdr, []byte("data")); return err }
	}
	missing := filepath.Join(e.dir, "missing")
	cases := []struct {
		name  string
		call  func() error
		code  connect.Code
		field string
	}{
		{"read missing", read(e.running, missing), connect.CodeNotFound, ""},
		{"read directory", read(e.running, e.dir), connect.CodeFailedPrecondition, ""},
		{"read relative", read(e.running, "etc/passwd"), connect.CodeInvalidArgument, "path"},
		{"read bad id", read("nope", "/etc/passwd"), connect.CodeInvalidArgument, "vm_id"},
		{"read unknown vm", read(ids.NewVM(), "/etc/passwd"), connect.CodeNotFound, ""},
		{"read stopped vm", read(e.stopped, "/etc/passwd"), connect.CodeFailedPrecondition, ""},
		{"write no header", write(nil), connect.CodeInvalidArgument, "header"},
		{"write relative", write(&hyperv1.WriteFileHeader{VmId: e.running, Path: "x"}), connect.CodeInvalidArgument, "header.path"},
		{"write bad mode", write(&hyperv1.WriteFileHeader{VmId: e.running, Path: missing, Mode: 0o100644}), connect.CodeInvalidArgument, "header.mode"},
		{"write no parent", write(&hyperv1.WriteFileHeader{VmId: e.running, Path: filepath.Join(missing, "f")}), connect.CodeNotFound, ""},
		{"write over directory", write(&hyperv1.WriteFileHeader{VmId: e.running, Path: e.dir}), connect.CodeFailedPrecondition, ""},
		{"write stopped vm", write(&hyperv1.WriteFileHeader{VmId: e.stopped, Path: missing}), connect.CodeFailedPrecondition, ""},
		{"write unknown vm", write(&hyperv1.WriteFileHeader{VmId: ids.NewVM(), Path: missing}), connect.CodeNotFound, ""},
		{"stat missing", func() error {
			_, err := e.api.Stat(ctx, connect.NewRequest(&hyperv1.StatRequest{VmId: e.running, Path: missing}))
			return err
		}, connect.CodeNotFound, ""},
		{"stat relative", func() error {
			_, err := e.api.Stat(ctx, connect.NewRequest(&hyperv1.StatRequest{VmId: e.running, Path: "."}))
			return err
		}, connect.CodeInvalidArgument, "path"},
		{"list a file", func() error {
			_, err := e.api.ListDir(ctx, connect.NewRequest(&hyperv1.ListDirRequest{VmId: e.running, Path: "/etc/passwd"}))
			return err
		}, connect.CodeFailedPrecondition, ""},
		{"list stopped vm", func() error {
			_, err := e.api.ListDir(ctx, connect.NewRequest(&hyperv1.ListDirRequest{VmId: e.stopped, Path: "/"}))
			return err
		}, connect.CodeFailedPrecondition, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if connect.CodeOf(err) != tc.code {
				t.Fatalf("err = %v; want code %v", err, tc.code)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("err = %v; want it to name %s", err, tc.field)
			}
		})
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused write left %s behind: %v", missing, err)
	}
}

func TestListDirAndStat(t *testing.T) {
	e := newGuestEnv(t)
	ctx := testCtx(t)
	if err := os.WriteFile(filepath.Join(e.dir, "b"), []byte("12345"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(e.dir, "a"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("b", filepath.Join(e.dir, "c")); err != nil {
		t.Fatal(err)
	}
	res, err := e.api.ListDir(ctx, connect.NewRequest(&hyperv1.ListDirRequest{VmId: e.running, Path: e.dir}))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, fi := range res.Msg.GetEntries() {
		got = append(got, fmt.Sprintf("%s dir=%v size=%d perm=%o link=%s", fi.GetName(), fi.GetIsDir(), fi.GetSize(), fi.GetMode()&0o777, fi.GetLinkTarget()))
	}
	want := []string{"a dir=true", "b dir=false size=5 perm=600 link=", "c dir=false"}
	if len(got) != len(want) {
		t.Fatalf("entries %q; want a, b, c", got)
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("entry %d = %q; want %q...", i, got[i], want[i])
		}
	}
	if link := res.Msg.GetEntries()[2].GetLinkTarget(); link != "b" {
		t.Errorf("symlink target %q; want b", link)
	}
	st, err := e.api.Stat(ctx, connect.NewRequest(&hyperv1.StatRequest{VmId: e.running, Path: filepath.Join(e.dir, "a")}))
	if err != nil {
		t.Fatal(err)
	}
	if info := st.Msg.GetInfo(); !info.GetIsDir() || info.GetMode()&0o777 != 0o750 || info.GetMode()&unix.S_IFMT != unix.S_IFDIR {
		t.Errorf("Stat(a) = %v; want a directory, mode 0750", info)
	}
}

func logs(ctx context.Context, c hyperv1connect.HyperClient, req *hyperv1.GetVmLogsRequest) (string, error) {
	stream, err := c.GetVmLogs(ctx, connect.NewRequest(req))
	if err != nil {
		return "", err
	}
	defer stream.Close()
	var b strings.Builder
	for stream.Receive() {
		b.Write(stream.Msg().GetData())
	}
	return b.String(), stream.Err()
}

func TestGetVmLogs(t *testing.T) {
	e := newGuestEnv(t)
	ctx := testCtx(t)
	console := bytes.Repeat([]byte("0123456789"), 10<<10) // several messages
	if err := os.WriteFile(filepath.Join(e.logsDir, e.stopped+".log"), console, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := logs(ctx, e.api, &hyperv1.GetVmLogsRequest{Id: e.stopped})
	if err != nil || got != string(console) {
		t.Errorf("logs: %d bytes, %v; want the %d of the file", len(got), err, len(console))
	}
	got, err = logs(ctx, e.api, &hyperv1.GetVmLogsRequest{Id: e.stopped, TailBytes: 4})
	if err != nil || got != "6789" {
		t.Errorf("logs --tail 4: %q, %v; want 6789", got, err)
	}
	got, err = logs(ctx, e.api, &hyperv1.GetVmLogsRequest{Id: e.stopped, TailBytes: 1 << 30})
	if err != nil || got != string(console) {
		t.Errorf("logs with a tail longer than the log: %d bytes, %v", len(got), err)
	}
	// Following a stopped VM prints what there is and ends.
	got, err = logs(ctx, e.api, &hyperv1.GetVmLogsRequest{Id: e.stopped, Follow: true, TailBytes: 2})
	if err != nil || got != "89" {
		t.Errorf("logs -f of a stopped VM: %q, %v; want 89", got, err)
	}
	// A running VM whose console has no file yet has printed nothing.
	got, err = logs(ctx, e.api, &hyperv1.GetVmLogsRequest{Id: e.running})
	if err != nil || got != "" {
		t.Errorf("logs before any output: %q, %v", got, err)
	}

	wantCode(t, "GetVmLogs(unknown)", connect.CodeNotFound, func() error {
		_, err := logs(ctx, e.api, &hyperv1.GetVmLogsRequest{Id: ids.NewVM()})
		return err
	})
	wantCode(t, "GetVmLogs(bad id)", connect.CodeInvalidArgument, func() error {
		_, err := logs(ctx, e.api, &hyperv1.GetVmLogsRequest{Id: "x"})
		return err
	})
	wantCode(t, "GetVmLogs(negative tail)", connect.CodeInvalidArgument, func() error {
		_, err := logs(ctx, e.api, &hyperv1.GetVmLogsRequest{Id: e.running, TailBytes: -1})
		return err
	})
}

func TestGetVmLogsFollow(t *testing.T) {
	e := newGuestEnv(t)
	ctx := testCtx(t)
	path := filepath.Join(e.logsDir, e.running+".log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	appendLog := func(s string) {
		t.Helper()
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	appendLog("old line\nboot 1\n")

	stream, err := e.api.GetVmLogs(ctx, connect.NewRequest(&hyperv1.GetVmLogsRequest{Id: e.running, Follow: true, TailBytes: 7}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var got strings.Builder
	waitFor := func(want string) {
		t.Helper()
		for !strings.HasSuffix(got.String(), want) {
			if !stream.Receive() {
				t.Fatalf("stream ended (%v) with %q; want %q", stream.Err(), got.String(), want)
			}
			got.Write(stream.Msg().GetData())
		}
	}
	waitFor("boot 1\n")
	if got.String() != "boot 1\n" {
		t.Fatalf("tail 7 of the log = %q", got.String())
	}
	appendLog("boot 2\n")
	waitFor("boot 2\n")
	appendLog("boot 3\n")
	waitFor("boot 3\n")

	// The VM writes its last line and stops: the follower gets the line,
	// then the end of the stream.
	appendLog("power off\n")
	if _, err := e.st.UpdateVMState(ctx, e.running, nil, store.StateStopped, ""); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		for stream.Receive() {
			got.Write(stream.Msg().GetData())
		}
		ended <- stream.Err()
	}()
	select {
	case err := <-ended:
		if err != nil {
			t.Fatalf("follow ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("following a stopped VM's log does not end")
	}
	if got.String() != "boot 1\nboot 2\nboot 3\npower off\n" {
		t.Errorf("followed %q", got.String())
	}
}

func TestGetVmLogsFollowCancel(t *testing.T) {
	e := newGuestEnv(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	stream, err := e.api.GetVmLogs(ctx, connect.NewRequest(&hyperv1.GetVmLogsRequest{Id: e.running, Follow: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	// The console file appears only after the follow started.
	if err := os.WriteFile(filepath.Join(e.logsDir, e.running+".log"), []byte("late\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for string(got) != "late\n" {
		if !stream.Receive() {
			t.Fatalf("follow ended (%v) with %q; want late", stream.Err(), got)
		}
		got = append(got, stream.Msg().GetData()...)
	}
	cancel()
	if stream.Receive() {
		t.Fatalf("received %v after cancel", stream.Msg())
	}
	if connect.CodeOf(stream.Err()) != connect.CodeCanceled {
		t.Errorf("after cancel: %v", stream.Err())
	}
}

// hyperCLI runs the hyper command line against the environment's socket.
func (e *guestEnv) hyperCLI(t *testing.T, stdin io.Reader, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	var out, errOut bytes.Buffer
	code = cli.Main(testCtx(t), append([]string{"--addr", "unix://" + e.sock}, args...), stdin, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCLIExec(t *testing.T) {
	e := newGuestEnv(t)
	if code, out, errOut := e.hyperCLI(t, nil, "vm", "exec", e.running, "--", "sh", "-c", "echo hi; echo oops >&2; exit 3"); code != 3 || out != "hi\n" || errOut != "oops\n" {
		t.Errorf("exec exit 3: code %d stdout %q stderr %q", code, out, errOut)
	}
	if code, out, errOut := e.hyperCLI(t, strings.NewReader("piped\ninput\n"), "vm", "exec", "-i", e.running, "--", "cat"); code != 0 || out != "piped\ninput\n" {
		t.Errorf("exec -i cat: code %d stdout %q stderr %q", code, out, errOut)
	}
	if code, out, errOut := e.hyperCLI(t, nil, "vm", "exec", "-e", "X=1", "-w", e.dir, e.running, "--", "sh", "-c", "echo $X; pwd"); code != 0 || out != "1\n"+e.dir+"\n" {
		t.Errorf("exec -e -w: code %d stdout %q stderr %q", code, out, errOut)
	}
	if code, _, errOut := e.hyperCLI(t, nil, "vm", "exec", e.stopped, "--", "true"); code == 0 || !strings.Contains(errOut, "failed_precondition") {
		t.Errorf("exec on a stopped VM: code %d stderr %q", code, errOut)
	}
}

func TestCLICopy(t *testing.T) {
	e := newGuestEnv(t)
	local := t.TempDir()
	data := make([]byte, 1<<20+17)
	rand.Read(data)
	src := filepath.Join(local, "src.bin")
	if err := os.WriteFile(src, data, 0o751); err != nil {
		t.Fatal(err)
	}
	guestPath := filepath.Join(e.dir, "copied.bin")
	if code, _, errOut := e.hyperCLI(t, nil, "vm", "cp", src, e.running+":"+guestPath); code != 0 {
		t.Fatalf("cp in: code %d: %s", code, errOut)
	}
	if got, err := os.ReadFile(guestPath); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("copied in: %d bytes, %v; want the %d of the source", len(got), err, len(data))
	}
	back := filepath.Join(local, "back.bin")
	if code, _, errOut := e.hyperCLI(t, nil, "vm", "cp", e.running+":"+guestPath, back); code != 0 {
		t.Fatalf("cp out: code %d: %s", code, errOut)
	}
	fi, err := os.Stat(back)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(back); !bytes.Equal(got, data) || fi.Mode().Perm() != 0o751 {
		t.Errorf("copied out: %d bytes, mode %v; want the %d written, mode 0751", len(got), fi.Mode(), len(data))
	}
	if code, out, errOut := e.hyperCLI(t, nil, "vm", "cp", e.running+":"+filepath.Join(e.dir, "nope"), "-"); code == 0 || out != "" || !strings.Contains(errOut, "not_found") {
		t.Errorf("cp of a missing file: code %d stdout %q stderr %q", code, out, errOut)
	}
}

func TestCLILogs(t *testing.T) {
	e := newGuestEnv(t)
	if err := os.WriteFile(filepath.Join(e.logsDir, e.stopped+".log"), []byte("[    0.000000] Linux version\nwelcome\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := e.hyperCLI(t, nil, "vm", "logs", e.stopped); code != 0 || out != "[    0.000000] Linux version\nwelcome\n" {
		t.Errorf("logs: code %d stdout %q stderr %q", code, out, errOut)
	}
	if code, out, errOut := e.hyperCLI(t, nil, "vm", "logs", "--tail", "8", "-f", e.stopped); code != 0 || out != "welcome\n" {
		t.Errorf("logs --tail 8 -f of a stopped VM: code %d stdout %q stderr %q", code, out, errOut)
	}

	// Following a running VM: the CLI prints as the console grows and
	// returns once the VM stops.
	path := filepath.Join(e.logsDir, e.running+".log")
	if err := os.WriteFile(path, []byte("first\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		time.Sleep(300 * time.Millisecond)
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		f.WriteString("second\n")
		f.Close()
		if _, err := e.st.UpdateVMState(context.Background(), e.running, nil, store.StateFailed, "crashed"); err != nil {
			t.Error(err)
		}
	})
	if code, out, errOut := e.hyperCLI(t, nil, "vm", "logs", "-f", e.running); code != 0 || out != "first\nsecond\n" {
		t.Errorf("logs -f: code %d stdout %q stderr %q", code, out, errOut)
	}
}

func TestGuestRPCsWithoutVMs(t *testing.T) {
	c, _ := newTestServer(t, time.Now())
	ctx := testCtx(t)
	vm := ids.NewVM()
	wantUnimplemented := func(what string, err error) {
		t.Helper()
		if connect.CodeOf(err) != connect.CodeUnimplemented || !strings.Contains(err.Error(), what) {
			t.Errorf("%s on a node without VMs: %v; want unimplemented naming it", what, err)
		}
	}
	_, err := c.Stat(ctx, connect.NewRequest(&hyperv1.StatRequest{VmId: vm, Path: "/"}))
	wantUnimplemented("Stat", err)
	_, _, err = readFile(ctx, c, vm, "/etc/hostname")
	wantUnimplemented("ReadFile", err)
	_, err = logs(ctx, c, &hyperv1.GetVmLogsRequest{Id: vm})
	wantUnimplemented("GetVmLogs", err)
	s := startExec(t, ctx, c, &hyperv1.ExecStart{VmId: vm, Argv: []string{"true"}})
	_, err = s.wait()
	wantUnimplemented("Exec", err)
}
