package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestForkQEMU forks real guests under QEMU through the CLI: the child
// starts with the parent's disk and both then go their own ways; forks into
// several children and VMs created from a snapshot share one layer, which
// cannot be deleted while they run; the image's base disk never changes.
// The two clone paths (reflink on XFS, sparse copy on ext4) are tested at
// the disk level in internal/disk; here the work dir's filesystem decides.
func TestForkQEMU(t *testing.T) {
	vn := newVMNode(t, "[vmm]\ndriver = \"qemu\"\n")
	vn.start()
	vn.loadBusybox(t)
	base := filepath.Join(vn.workDir, "layers", "images", vn.imageID+".ext4")
	baseSum := fileSum(t, base)

	parent := vn.createVM(t)
	sum := vn.sh(t, parent, "mkdir -p /data && head -c 1048576 /dev/urandom > /data/a && sha256sum /data/a")
	if len(strings.Fields(sum)) != 2 {
		t.Fatalf("sha256sum in the parent: %q", sum)
	}

	t.Run("one child", func(t *testing.T) {
		child := strings.TrimSpace(vn.hyperOK(t, 5*time.Minute, "vm", "fork", "-q", parent))
		if got := vn.sh(t, child, "sha256sum /data/a"); got != sum {
			t.Fatalf("the child's copy: %q; the parent's: %q", got, sum)
		}
		if out := vn.hyperOK(t, time.Minute, "vm", "get", child); !strings.Contains(out, "hyper.parent="+parent) {
			t.Fatalf("the child does not name its parent:\n%s", out)
		}
		vn.sh(t, child, "echo B > /data/b && sync")
		vn.sh(t, parent, "echo C > /data/c && sync")
		if got := vn.sh(t, child, "ls /data"); got != "a\nb\n" {
			t.Fatalf("the child sees %q; want a and b only", got)
		}
		if got := vn.sh(t, parent, "ls /data"); got != "a\nc\n" {
			t.Fatalf("the parent sees %q; want a and c only", got)
		}
		if log := vn.log.String(); !strings.Contains(log, "parent disk cloned") || !strings.Contains(log, "quiesce=freeze") {
			t.Fatalf("the fork did not freeze the parent through its agent:\n%s", log)
		}
		vn.hyperOK(t, time.Minute, "vm", "stop", child)
	})

	t.Run("not enough budget for every child", func(t *testing.T) {
		// mem_max 1GiB holds four micro VMs under TCG (128 MiB for the
		// guest, 128 MiB for QEMU): the parent and three more.
		before := firstColumn(vn.hyperOK(t, time.Minute, "vm", "ls", "--all"))
		_, stderr, code := vn.hyper("vm", "fork", parent, "-n", "5")
		if code == 0 || !strings.Contains(stderr, "resource_exhausted") {
			t.Fatalf("fork into 5: %d %q; want resource_exhausted", code, stderr)
		}
		if after := firstColumn(vn.hyperOK(t, time.Minute, "vm", "ls", "--all")); !slices.Equal(after, before) {
			t.Fatalf("a refused fork made VMs: before %v, after %v", before, after)
		}
	})

	t.Run("three children", func(t *testing.T) {
		out := vn.hyperOK(t, 8*time.Minute, "vm", "fork", "-q", "-n", "3", parent)
		kids := strings.Fields(out)
		if len(kids) != 3 {
			t.Fatalf("fork -n 3 printed %q", out)
		}
		for _, k := range kids {
			if got := vn.sh(t, k, "sha256sum /data/a; cat /data/c"); got != sum+"C\n" {
				t.Errorf("child %s: %q", k, got)
			}
		}
		vn.hyperOK(t, 2*time.Minute, append([]string{"vm", "stop"}, kids...)...)
	})

	t.Run("snapshot and create from the layer", func(t *testing.T) {
		layer := strings.TrimSpace(vn.hyperOK(t, time.Minute, "vm", "snapshot", "-q", "--label", "golden", parent))
		vn.sh(t, parent, "echo D > /data/d")
		var vms []string
		for range 2 {
			id := strings.TrimSpace(vn.hyperOK(t, 5*time.Minute, "vm", "create", "-q", "--layer", layer, "--type", "micro"))
			vms = append(vms, id)
			if got := vn.sh(t, id, "sha256sum /data/a; ls /data"); got != sum+"a\nc\n" {
				t.Fatalf("vm %s on the layer sees %q", id, got)
			}
		}
		vn.sh(t, vms[0], "echo E > /data/e")
		if got := vn.sh(t, vms[1], "ls /data"); got != "a\nc\n" {
			t.Fatalf("a vm on the layer sees its sibling's write: %q", got)
		}
		tree := vn.hyperOK(t, time.Minute, "layer", "ls", "--tree")
		if !strings.Contains(tree, layer+" golden") || !strings.Contains(tree, "fork of "+parent) {
			t.Fatalf("layer ls --tree:\n%s", tree)
		}

		_, stderr, code := vn.hyper("layer", "rm", layer)
		if code == 0 || !strings.Contains(stderr, "failed_precondition") || !strings.Contains(stderr, vms[0]) {
			t.Fatalf("rm a layer in use: %d %q; want failed_precondition naming the vms", code, stderr)
		}
		vn.hyperOK(t, 2*time.Minute, append([]string{"vm", "stop"}, vms...)...)
		// Every layer is unused now: the snapshot and the one fork -n 3 made.
		for _, l := range layerIDs(t, vn) {
			vn.hyperOK(t, time.Minute, "layer", "rm", l)
		}
		if left := layerIDs(t, vn); len(left) != 0 {
			t.Fatalf("layers left: %v", left)
		}
		files, _ := os.ReadDir(filepath.Join(vn.workDir, "layers", "layers"))
		files = slices.DeleteFunc(files, func(e os.DirEntry) bool { return e.Name() == ".partial" })
		if len(files) != 0 {
			t.Fatalf("layer files left: %v", files)
		}
	})

	for _, line := range strings.Split(vn.log.String(), "\n") {
		if strings.Contains(line, "parent disk cloned") {
			t.Log(line) // the clone method and how long the parent was frozen
		}
	}
	if got := fileSum(t, base); got != baseSum {
		t.Fatalf("the base image changed: %s -> %s", baseSum, got)
	}
	vn.hyperOK(t, time.Minute, "vm", "stop", parent)
	_, stderr, code := vn.hyper("vm", "fork", parent)
	if code == 0 || !strings.Contains(stderr, "failed_precondition") {
		t.Fatalf("fork of a stopped vm: %d %q; want failed_precondition", code, stderr)
	}
	// checkNoLeaks runs at cleanup.
}

// layerIDs lists the node's layers.
func layerIDs(t *testing.T, vn *vmNode) []string {
	t.Helper()
	return firstColumn(vn.hyperOK(t, time.Minute, "layer", "ls"))
}

// firstColumn returns the first field of each row of a CLI table.
func firstColumn(table string) []string {
	var ids []string
	for i, line := range strings.Split(strings.TrimSpace(table), "\n") {
		if f := strings.Fields(line); i > 0 && len(f) > 0 {
			ids = append(ids, f[0])
		}
	}
	return ids
}

// sh runs a shell script in a VM and returns its stdout; it must succeed.
func (vn *vmNode) sh(t *testing.T, id, script string) string {
	t.Helper()
	out, stderr, code := vn.hyper("vm", "exec", id, "--", "sh", "-c", script)
	if code != 0 {
		t.Fatalf("exec %q in %s: %d %q %q", script, id, code, out, stderr)
	}
	return out
}

// hyperOK runs the CLI with a timeout fit for boots and fails the test on
// a non-zero exit.
func (vn *vmNode) hyperOK(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "hyper"), append([]string{"--addr", "unix://" + vn.socket}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("hyper %v: %v\n%s%s\nhyperd log:\n%s", args, err, out.String(), errb.String(), vn.log)
	}
	return out.String()
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
