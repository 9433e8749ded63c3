package guestd_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	agentv1 "github.com/hypervm/hyper/api/agent/v1"
	"github.com/hypervm/hyper/api/agent/v1/agentv1connect"
	"github.com/hypervm/hyper/internal/agent/guestd"
	"github.com/hypervm/hyper/internal/guestcfg"
)

func TestHealth(t *testing.T) {
	h := start(t, guestd.Config{VMID: "vabcdefghijklmnop"})
	res, err := h.client.Health(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if !res.GetOk() || res.GetVmId() != "vabcdefghijklmnop" || res.GetUptime().AsDuration() <= 0 ||
		res.GetMemoryTotalBytes() == 0 || res.GetMemoryAvailableBytes() == 0 ||
		res.GetMemoryAvailableBytes() > res.GetMemoryTotalBytes() || res.GetLoad1() < 0 {
		t.Errorf("health %v", res)
	}
	if res.GetMain().GetState() != agentv1.MainProcess_STATE_UNSPECIFIED {
		t.Errorf("main state %v before StartMain", res.GetMain().GetState())
	}
}

// waitMain polls Health until the main process reaches state.
func waitMain(t *testing.T, h *harness, state agentv1.MainProcess_State) *agentv1.MainProcess {
	t.Helper()
	var main *agentv1.MainProcess
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		res, err := h.client.Health(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if main = res.GetMain(); main.GetState() == state {
			return main
		}
	}
	t.Fatalf("main process %v, want state %v", main, state)
	return nil
}

func TestMainProcess(t *testing.T) {
	dir := t.TempDir()
	h := start(t, guestd.Config{Image: guestcfg.Image{
		Entrypoint: []string{"sh", "-c"},
		Cmd:        []string{`test "$PWD" = "$DIR" && test "$A" = b && exit 7`},
		Env:        []string{"A=b", "DIR=" + dir},
		WorkingDir: dir,
	}})
	must(t, h.srv.StartMain())
	main := waitMain(t, h, agentv1.MainProcess_STATE_EXITED)
	if main.GetExit().GetCode() != 7 || main.GetPid() == 0 || len(main.GetArgv()) != 3 {
		t.Errorf("main %v, want exit code 7", main)
	}
	// The guest keeps serving after its main process ended.
	if _, err := h.client.Health(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

func TestMainProcessSignal(t *testing.T) {
	h := start(t, guestd.Config{Image: guestcfg.Image{Cmd: []string{"sleep", "300"}}})
	must(t, h.srv.StartMain())
	waitMain(t, h, agentv1.MainProcess_STATE_RUNNING)
	must(t, h.srv.SignalMain(unix.SIGTERM))
	main := waitMain(t, h, agentv1.MainProcess_STATE_EXITED)
	if main.GetExit().GetSignal() != "SIGTERM" || main.GetExit().GetCode() != -1 {
		t.Errorf("main %v, want killed by SIGTERM", main)
	}
}

func TestMainProcessNoneAndFailed(t *testing.T) {
	h := start(t, guestd.Config{})
	must(t, h.srv.StartMain())
	waitMain(t, h, agentv1.MainProcess_STATE_NONE)

	h = start(t, guestd.Config{Image: guestcfg.Image{Cmd: []string{"/no/such/program"}}})
	if err := h.srv.StartMain(); err == nil {
		t.Fatal("StartMain of a missing program succeeded")
	}
	main := waitMain(t, h, agentv1.MainProcess_STATE_FAILED)
	if main.GetError() == "" {
		t.Errorf("main %v: no error", main)
	}
}

func TestShutdown(t *testing.T) {
	type call struct {
		reboot bool
		grace  time.Duration
	}
	calls := make(chan call, 2)
	h := start(t, guestd.Config{PowerOff: func(reboot bool, grace time.Duration) { calls <- call{reboot, grace} }})
	if err := h.client.Shutdown(ctxT(t), true, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-calls:
		if c != (call{true, 3 * time.Second}) {
			t.Errorf("power off %+v, want reboot with 3s grace", c)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no power off")
	}

	h = start(t, guestd.Config{})
	if err := h.client.Shutdown(ctxT(t), false, 0); connect.CodeOf(err) != connect.CodeUnimplemented {
		t.Errorf("shutdown without a power-off hook: %v, want Unimplemented", err)
	}
}

func TestSync(t *testing.T) {
	h := start(t, guestd.Config{})
	if err := h.client.Sync(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// TestRepliesUncompressed: the agent never compresses a reply, even for a
// client that accepts gzip; on a local link it would only cost the guest
// CPU.
func TestRepliesUncompressed(t *testing.T) {
	srv := guestd.New(guestd.Config{VMID: "vabcdefghijklmnop"})
	t.Cleanup(func() { srv.Close() })
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	req, err := http.NewRequest(http.MethodPost, ts.URL+agentv1connect.AgentHealthProcedure, strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept-Encoding", "gzip")
	tr := &http.Transport{DisableCompression: true} // keep the raw reply
	t.Cleanup(tr.CloseIdleConnections)
	res, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), "vabcdefghijklmnop") {
		t.Fatalf("health: %s %q", res.Status, body)
	}
	if enc := res.Header.Get("Content-Encoding"); enc != "" {
		t.Errorf("reply encoded %q, want none", enc)
	}
}
