package vmmproc

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// Every test closes its Processes, so no watcher may outlive them.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startSleep starts `sleep 30` as a child and makes sure it is killed and
// reaped when the test ends.
func startSleep(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep to run: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

func open(t *testing.T, pid int) *Process {
	t.Helper()
	p, err := Open(pid)
	if err != nil {
		t.Fatalf("Open(%d): %v", pid, err)
	}
	t.Cleanup(p.Close)
	return p
}

// argvOf returns p's argv once exec has put it in place: the parent may
// run before the kernel has.
func argvOf(t *testing.T, p *Process) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		argv, err := p.Argv()
		if err != nil {
			t.Fatalf("Argv: %v", err)
		}
		if len(argv) > 0 || time.Now().After(deadline) {
			return argv
		}
		time.Sleep(time.Millisecond)
	}
}

func TestKillAndWait(t *testing.T) {
	cmd := startSleep(t)
	p := open(t, cmd.Process.Pid)
	if p.Pid() != cmd.Process.Pid {
		t.Errorf("Pid() = %d; want %d", p.Pid(), cmd.Process.Pid)
	}
	if p.Exited() {
		t.Fatal("Exited() = true for a running process")
	}
	if argv := argvOf(t, p); !slices.Equal(argv, []string{"sleep", "30"}) {
		t.Errorf("Argv() = %q; want [sleep 30]", argv)
	}

	// Two waiters, so that one exit releases both.
	waited := make(chan error, 2)
	for range 2 {
		go func() { waited <- p.Wait(context.Background()) }()
	}
	if err := p.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	for range 2 {
		select {
		case err := <-waited:
			if err != nil {
				t.Errorf("Wait after Kill: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Wait did not return after SIGKILL")
		}
	}
	if !p.Exited() {
		t.Error("Exited() = false after Wait returned")
	}
	// An exited process (here an unreaped child) has no identity to check.
	if _, err := p.Argv(); !errors.Is(err, ErrGone) {
		t.Errorf("Argv of an exited process: %v; want ErrGone", err)
	}
	if err := p.Kill(); err != nil {
		t.Errorf("Kill of an exited process: %v; want nil", err)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("child's exit: %v; want killed", err)
	}
}

// TestExitedNoticedAtOnce checks that Exited and Wait are right as soon as
// the kernel has finished the exit, whether or not the watcher has run.
func TestExitedNoticedAtOnce(t *testing.T) {
	cmd := startSleep(t)
	p := open(t, cmd.Process.Pid)
	if err := unix.Kill(cmd.Process.Pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The child is a zombie until reaped, so its pid stays ours: poll
	// /proc until the kernel has finished its exit.
	deadline := time.Now().Add(10 * time.Second)
	for !isZombie(t, cmd.Process.Pid) {
		if time.Now().After(deadline) {
			t.Fatal("child did not die")
		}
		time.Sleep(time.Millisecond)
	}
	if !p.Exited() {
		t.Error("Exited() = false for a dead child")
	}
	// An exit that has happened wins over a ctx that is already done.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Wait(ctx); err != nil {
		t.Errorf("Wait with a done ctx on an exited process: %v; want nil", err)
	}
}

func isZombie(t *testing.T, pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// The state follows the parenthesised command name.
	s := string(b)
	return strings.HasPrefix(s[strings.LastIndexByte(s, ')')+1:], " Z")
}

// TestNotOurChild holds a process another process started and left, as a
// daemonized QEMU is: the pidfd still reports its exit.
func TestNotOurChild(t *testing.T) {
	out, err := exec.Command("sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Skipf("no sh to run: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("pid %q: %v", out, err)
	}
	p, err := Open(pid)
	if err != nil {
		unix.Kill(pid, unix.SIGKILL)
		t.Fatalf("Open(%d): %v", pid, err)
	}
	t.Cleanup(p.Close)
	// Through the pidfd, so never a reused pid.
	t.Cleanup(func() { p.Kill() })
	if p.Exited() {
		t.Fatal("Exited() = true for a running process")
	}
	if err := p.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("Wait after Kill: %v", err)
	}
}

func TestAttach(t *testing.T) {
	cmd := startSleep(t)
	pid := cmd.Process.Pid
	argvOf(t, open(t, pid))

	var seen []string
	p, err := Attach(pid, func(argv []string) error {
		seen = argv
		return nil
	})
	if err != nil {
		t.Fatalf("Attach with a check that accepts: %v", err)
	}
	t.Cleanup(p.Close)
	if p.Pid() != pid || !slices.Equal(seen, []string{"sleep", "30"}) {
		t.Errorf("Attach = pid %d, checked argv %q; want pid %d, argv [sleep 30]", p.Pid(), seen, pid)
	}

	_, err = Attach(pid, func(argv []string) error { return errors.New("is not the wanted program") })
	if !errors.Is(err, ErrGone) || !strings.Contains(err.Error(), strconv.Itoa(pid)+" is not the wanted program") {
		t.Errorf("Attach with a check that refuses: %v; want ErrGone naming the pid and the reason", err)
	}

	called := false
	if _, err := Attach(1<<30, func([]string) error { called = true; return nil }); !errors.Is(err, ErrGone) || called {
		t.Errorf("Attach of a missing pid: %v (check called: %v); want ErrGone without a check", err, called)
	}
}

func TestWaitCancelled(t *testing.T) {
	cmd := startSleep(t)
	p := open(t, cmd.Process.Pid)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v; want context.DeadlineExceeded", err)
	}
	if p.Exited() {
		t.Error("Exited() = true after a cancelled Wait; the process still runs")
	}
}

func TestOpenNoSuchProcess(t *testing.T) {
	// pid_max is at most 2^22, so no process ever has this pid.
	if _, err := Open(1 << 30); !errors.Is(err, ErrGone) {
		t.Errorf("Open of a pid above pid_max: %v; want ErrGone", err)
	}
	for _, pid := range []int{0, -1, 1 << 40} {
		if _, err := Open(pid); err == nil || errors.Is(err, ErrGone) {
			t.Errorf("Open(%d): %v; want an out-of-range error", pid, err)
		}
	}
}

func TestClose(t *testing.T) {
	cmd := startSleep(t)
	p, err := Open(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	if !p.Exited() {
		t.Error("Exited() = false after Close")
	}
	if err := p.Wait(context.Background()); err != nil {
		t.Errorf("Wait after Close: %v", err)
	}
	if err := p.Kill(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Kill after Close: %v; want os.ErrClosed", err)
	}
	// Close leaves the process alone.
	if err := unix.Kill(cmd.Process.Pid, 0); err != nil {
		t.Errorf("process after Close: %v; want it running", err)
	}
	p.Close()
}

func TestPidfileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vmm.pid")
	for _, pid := range []int{4242, 77} {
		if err := WritePidfile(path, pid); err != nil {
			t.Fatalf("WritePidfile(%d): %v", pid, err)
		}
		got, err := ReadPidfile(path)
		if err != nil {
			t.Fatalf("ReadPidfile: %v", err)
		}
		if got != pid {
			t.Errorf("ReadPidfile = %d; want %d", got, pid)
		}
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %v; want only the pidfile", entries)
	}
	if err := WritePidfile(filepath.Join(t.TempDir(), "missing", "vmm.pid"), 1); err == nil {
		t.Error("WritePidfile into a missing directory succeeded")
	}
}

func TestReadPidfile(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadPidfile(filepath.Join(dir, "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing pidfile: %v; want fs.ErrNotExist", err)
	}
	for content, want := range map[string]int{
		"123\n":                123,
		"  99 \n\n":            99,
		"":                     0,
		"\n":                   0,
		"abc":                  0,
		"12 34":                0,
		"0":                    0,
		"1":                    0,
		"-5":                   0,
		"0x10":                 0,
		"4294967297":           0,
		"99999999999999999999": 0,
	} {
		path := filepath.Join(dir, "vmm.pid")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := ReadPidfile(path)
		switch {
		case want != 0 && (err != nil || got != want):
			t.Errorf("ReadPidfile(%q) = %d, %v; want %d", content, got, err, want)
		case want == 0 && err == nil:
			t.Errorf("ReadPidfile(%q) = %d; want an error", content, got)
		case want == 0 && !strings.Contains(err.Error(), path):
			t.Errorf("ReadPidfile(%q): %v; want it to name the file", content, err)
		}
	}
}
