package helper_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hypervm/hyper/internal/cgroup"
	"github.com/hypervm/hyper/internal/helper"
	"github.com/hypervm/hyper/internal/suid"
)

// standInEnv, when set in the environment of this test binary, makes it
// stand in for hyperd (see standIn): an unprivileged process that has the
// helper delegate the parent cgroup to it, then makes and fills VM
// cgroups itself. It must be the helper's parent: under cgroup v2 the
// helper moves its caller, and only its caller, into the parent.
const standInEnv = "HYPER_HELPER_TEST_STANDIN"

func init() {
	if spec := os.Getenv(standInEnv); spec != "" {
		os.Exit(standIn(spec))
	}
}

// standInSpec is what a test asks of its stand-in.
type standInSpec struct {
	Helper string
	// VM, when set, is the VM whose cgroup the stand-in creates (0.5 CPU,
	// 64 MiB) and moves a `sleep` of its own into.
	VM string
	// Foreign is a process of another user that the stand-in tries to
	// move into the VM cgroup; the kernel must refuse.
	Foreign  int
	SleepBin string // the stand-in runs with an empty environment
}

// standInReport is what the stand-in did, one JSON line after the setup
// and, for a VM, one more once its stdin closes: how its sleep ended.
type standInReport struct {
	Delegation suid.Delegation
	Error      string // of the delegation
	ExitCode   int    // of the delegation's helper run
	Sleep      int
	// ParentLimit and Foreign are the errors of writing the parent's own
	// CPU limit and of attaching the foreign process ("" if they worked).
	ParentLimit string
	Foreign     string
	SleepExit   string
}

func standIn(specJSON string) int {
	var spec standInSpec
	out := json.NewEncoder(os.Stdout)
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "stand-in:", err)
		return 1
	}
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return fail(err)
	}
	ctx := context.Background()
	c := helper.New(spec.Helper)
	var r standInReport
	d, err := c.Delegate(ctx)
	if err == nil {
		// Idempotent: a second delegation reports the same and succeeds.
		again, err2 := c.Delegate(ctx)
		if err2 != nil || !slices.Equal(again.Parents, d.Parents) || again.Self != d.Self {
			err = fmt.Errorf("second delegation: %+v, %v; first %+v", again, err2, d)
		}
	}
	r.Delegation = d
	if err != nil {
		r.Error, r.ExitCode = err.Error(), -1
		var he *helper.Error
		if errors.As(err, &he) {
			r.ExitCode = he.ExitCode
		}
	}
	if spec.VM == "" || err != nil {
		if err := out.Encode(r); err != nil {
			return fail(err)
		}
		return 0
	}
	tree, err := cgroup.Delegated(d)
	if err != nil {
		return fail(err)
	}
	if err := tree.Create(spec.VM, 500, 64<<20); err != nil {
		return fail(err)
	}
	sleep := exec.Command(spec.SleepBin, "1000")
	if err := sleep.Start(); err != nil {
		return fail(err)
	}
	defer sleep.Process.Kill()
	r.Sleep = sleep.Process.Pid
	if err := tree.Attach(spec.VM, r.Sleep); err != nil {
		return fail(err)
	}
	// Values the kernel would take, so only the permission can refuse.
	limit, value := filepath.Join(d.Parents[0].Path, "cpu.max"), "max"
	if d.CgroupVersion == 1 {
		limit, value = filepath.Join(d.Parents[0].Path, "cpu.cfs_quota_us"), "-1"
	}
	r.ParentLimit = errString(os.WriteFile(limit, []byte(value), 0))
	r.Foreign = errString(tree.Attach(spec.VM, spec.Foreign))
	if err := out.Encode(r); err != nil {
		return fail(err)
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	r.SleepExit = errString(sleep.Wait())
	if err := out.Encode(r); err != nil {
		return fail(err)
	}
	return 0
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// runningStandIn is a stand-in that has reported its setup.
type runningStandIn struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
	done  chan struct{} // closed once the stand-in has been waited for
	err   error         // its exit, once done is closed
}

// startStandIn runs the stand-in as the test user and returns its first
// report. It is killed at cleanup if it has not ended by then.
func (e *testEnv) startStandIn(t *testing.T, spec standInSpec) (*runningStandIn, standInReport) {
	t.Helper()
	spec.Helper = e.helper
	var err error
	if spec.SleepBin, err = exec.LookPath("sleep"); err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(spec)
	must(t, err)
	// The test user cannot reach the test binary where go test built it.
	bin := filepath.Join(e.dir, "bin", "standin.test")
	if _, err := os.Stat(bin); err != nil {
		must(t, run("cp", os.Args[0], bin))
		must(t, os.Chmod(bin, 0o755))
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{standInEnv + "=" + string(data)}
	cmd.Dir = "/"
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred()}
	stdin, err := cmd.StdinPipe()
	must(t, err)
	// A pipe of our own: Wait must not close it before the reports are read.
	r, w, err := os.Pipe()
	must(t, err)
	cmd.Stdout = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	s := &runningStandIn{cmd: cmd, stdin: stdin, out: bufio.NewScanner(r), done: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-s.done
			t.Error("the stand-in did not end when its stdin closed; killed")
		}
		r.Close()
	})
	return s, s.report(t)
}

func (s *runningStandIn) report(t *testing.T) standInReport {
	t.Helper()
	var r standInReport
	if !s.out.Scan() {
		<-s.done
		t.Fatalf("the stand-in ended without a report: %v", s.err)
	}
	must(t, json.Unmarshal(s.out.Bytes(), &r))
	return r
}

// finish closes the stand-in's stdin and returns its last report.
func (s *runningStandIn) finish(t *testing.T) standInReport {
	t.Helper()
	s.stdin.Close()
	r := s.report(t)
	<-s.done
	if s.err != nil {
		t.Fatalf("stand-in: %v", s.err)
	}
	return r
}

// delegated has the helper delegate the test parent to the test user, as
// hyperd would, and returns the delegated tree for the test (root) to
// make VM cgroups in.
func (e *testEnv) delegated(t *testing.T) *cgroup.Tree {
	t.Helper()
	_, r := e.startStandIn(t, standInSpec{})
	if r.Error != "" {
		t.Fatalf("delegate: %s", r.Error)
	}
	tree, err := cgroup.Delegated(r.Delegation)
	must(t, err)
	return tree
}

func (e *testEnv) cgroupVersion() int { return map[int]int{1: 2, 4: 1}[len(e.hier)] }

// TestDelegatedCgroupLifecycle is the node's cgroup life with the real
// setuid helper: the helper delegates the parent to an unprivileged
// process, which creates a VM cgroup with its limits and moves its own
// child into it with no helper run, but can neither raise the parent's
// limit nor move another user's process; the helper then lists, kills and
// removes the VM cgroup as before.
func TestDelegatedCgroupLifecycle(t *testing.T) {
	e := need(t)
	ctx := context.Background()
	v := e.newVM(t)
	foreign, _ := startAs(t, &syscall.Credential{Uid: 0, Gid: 0})
	s, r := e.startStandIn(t, standInSpec{VM: v.id, Foreign: foreign.Process.Pid})
	if r.Error != "" {
		t.Fatalf("delegate: %s", r.Error)
	}
	d := r.Delegation
	if d.CgroupVersion != e.cgroupVersion() || len(d.Parents) != len(e.hier) {
		t.Fatalf("delegation = %+v", d)
	}
	for i, p := range d.Parents {
		if p.Path != filepath.Join(e.hier[i], e.cfg.Cgroup) {
			t.Errorf("parent %d = %+v, want %s", i, p, filepath.Join(e.hier[i], e.cfg.Cgroup))
		}
		for _, path := range []string{p.Path, filepath.Join(p.Path, v.id), filepath.Join(p.Path, v.id, "cgroup.procs")} {
			if st := statOf(t, path); st.Uid != e.uid {
				t.Errorf("%s owned by %d, want the caller %d", path, st.Uid, e.uid)
			}
		}
		limits := map[string]map[string]string{
			"":       {"cpu.max": "50000 100000", "memory.max": "67108864"},
			"cpu":    {"cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000"},
			"memory": {"memory.limit_in_bytes": "67108864"},
		}[p.Controller]
		for f, want := range limits {
			if got, _ := os.ReadFile(filepath.Join(p.Path, v.id, f)); strings.TrimSpace(string(got)) != want {
				t.Errorf("%s/%s/%s = %q, want %q", p.Path, v.id, f, got, want)
			}
		}
	}
	if d.CgroupVersion == 2 {
		self, _ := os.ReadFile("/proc/" + strconv.Itoa(s.cmd.Process.Pid) + "/cgroup")
		if want := "/" + e.cfg.Cgroup + "/" + suid.DaemonCgroup + "\n"; !strings.HasSuffix(string(self), want) || d.Self == "" {
			t.Errorf("the caller was not moved into %s (self %q):\n%s", want, d.Self, self)
		}
	} else if d.Self != "" {
		t.Errorf("cgroup v1 delegation moved the caller to %s", d.Self)
	}
	cg, _ := os.ReadFile("/proc/" + strconv.Itoa(r.Sleep) + "/cgroup")
	if n := strings.Count(string(cg), "/"+e.cfg.Cgroup+"/"+v.id+"\n"); n != len(e.hier) {
		t.Fatalf("the stand-in's sleep is in the VM cgroup in %d of %d hierarchies:\n%s", n, len(e.hier), cg)
	}
	if !strings.Contains(r.ParentLimit, "permission denied") {
		t.Errorf("the caller writing the parent's own CPU limit: %q, want permission denied", r.ParentLimit)
	}
	if !strings.Contains(r.Foreign, "permission denied") {
		t.Errorf("the caller moving a root process into a VM cgroup: %q, want permission denied", r.Foreign)
	}
	if ids, err := e.client.ListCgroups(ctx); err != nil || !slices.Contains(ids, v.id) {
		t.Fatalf("list = %v, %v", ids, err)
	}
	if removed, err := e.client.RemoveCgroup(ctx, v.id); !removed || err != nil {
		t.Fatalf("remove = %v, %v", removed, err)
	}
	if last := s.finish(t); !strings.Contains(last.SleepExit, "killed") {
		t.Errorf("the stand-in's sleep ended with %q, want killed", last.SleepExit)
	}
	for _, h := range e.hier {
		if _, err := os.Stat(filepath.Join(h, e.cfg.Cgroup, v.id)); !os.IsNotExist(err) {
			t.Errorf("cgroup survived in %s: %v", h, err)
		}
	}
	if removed, err := e.client.RemoveCgroup(ctx, v.id); removed || err != nil {
		t.Fatalf("second remove = %v, %v", removed, err)
	}
	if killed, err := e.client.KillCgroup(ctx, v.id); killed != 0 || err != nil {
		t.Fatalf("kill of a missing cgroup = %d, %v", killed, err)
	}
}

// TestDelegateMovesOnlyTheCaller: under cgroup v2 the helper moves its
// parent process, and refuses when that process runs as another user than
// the caller (here: the root test process runs the helper as the test
// user). Under v1 nothing is moved.
func TestDelegateMovesOnlyTheCaller(t *testing.T) {
	e := need(t)
	d, err := e.client.Delegate(context.Background())
	if e.cgroupVersion() == 1 {
		if err != nil || d.Self != "" {
			t.Fatalf("v1 delegation = %+v, %v", d, err)
		}
		return
	}
	if !helper.IsRefused(err) || !strings.Contains(err.Error(), "not as the caller") {
		t.Fatalf("v2 delegation from a root parent for the test user = %+v, %v; want a refusal", d, err)
	}
}
