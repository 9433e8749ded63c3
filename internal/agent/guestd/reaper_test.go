package guestd_test

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/agent/guestd"
)

const reaperHelperEnv = "GUESTD_REAPER_HELPER"

// TestReaperReapsOrphans runs, in a child process made a subreaper (as PID
// 1 is), a command that leaves an orphan behind, and checks that the
// command's own status still reaches its waiter and the orphan does not
// stay a zombie.
func TestReaperReapsOrphans(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), reaperHelperEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
}

func reaperHelper() int {
	if err := reaperCheck(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func reaperCheck() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("become subreaper: %w", err)
	}
	r := guestd.NewReaper(true)
	defer r.Close()
	// The orphan outlives its parent, is reparented to us, and exits.
	cmd := exec.Command("sh", "-c", "sleep 0.3 & echo $!; exit 5")
	outR, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout = outW
	exited, err := r.Start(cmd)
	outW.Close()
	if err != nil {
		return err
	}
	select {
	case ws := <-exited:
		if ws.ExitStatus() != 5 {
			return fmt.Errorf("status %v, want exit 5", ws)
		}
	case <-time.After(10 * time.Second):
		return fmt.Errorf("no status for the started command")
	}
	buf := make([]byte, 64)
	n, _ := outR.Read(buf)
	orphan, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		return fmt.Errorf("orphan pid %q", buf[:n])
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat("/proc/" + strconv.Itoa(orphan)); os.IsNotExist(err) {
			return nil // exited and reaped
		}
	}
	return fmt.Errorf("orphan %d was not reaped", orphan)
}
