package image_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// This file reads ext4 images back with e2fsprogs (e2fsck, debugfs), the
// tools the guest's kernel-side view is checked against.

func needE2fsprogs(t testing.TB) {
	t.Helper()
	for _, tool := range []string{"e2fsck", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (Debian package e2fsprogs): %v", tool, err)
		}
	}
}

// fsck runs `e2fsck -fn` and fails the test unless it finds nothing.
func fsck(t testing.TB, img string) {
	t.Helper()
	out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
}

// debugfs runs commands (one per line) against img, read-only.
func debugfs(t testing.TB, img string, cmds ...string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "cmds")
	if err := os.WriteFile(f, []byte(strings.Join(cmds, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("debugfs", "-f", f, img)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("debugfs %s: %v\n%s", img, err, stderr.String())
	}
	return stdout.String()
}

// fsEntry is one file of a tree, as compared between the ext4 and the model.
type fsEntry struct {
	Type     string // "dir", "reg", "symlink", "char", "block", "fifo"
	Mode     uint32 // permission bits incl. setuid/setgid/sticky
	UID, GID int
	Content  string // regular files
	Target   string // symlinks
	Major    int
	Minor    int
	Xattrs   map[string]string
	Group    string // path of the first name of this inode among hard links, or ""
	ino      int
	nlink    int
}

func (e *fsEntry) String() string {
	content := e.Content
	if len(content) > 40 {
		content = fmt.Sprintf("%.40q...(%d bytes)", content, len(content))
	} else {
		content = strconv.Quote(content)
	}
	return fmt.Sprintf("%s %04o %d:%d content=%s target=%q dev=%d:%d xattrs=%v link=%q",
		e.Type, e.Mode, e.UID, e.GID, content, e.Target, e.Major, e.Minor, e.Xattrs, e.Group)
}

var (
	lsLine     = regexp.MustCompile(`^/(\d+)/(\d+)/(\d+)/(\d+)/(.*)/(\d*)/$`)
	statHeader = regexp.MustCompile(`Inode: (\d+)\s+Type: ([A-Za-z ]+?)\s+Mode:\s+(\d+)`)
	statOwner  = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
	statLinks  = regexp.MustCompile(`Links: (\d+)`)
	statDevice = regexp.MustCompile(`Device major/minor number: (\d+):(\d+)`)
	statFast   = regexp.MustCompile(`Fast link dest: "(.*)"`)
	statXattr  = regexp.MustCompile(`^  (\S+) \((\d+)\)`)
)

// readTree lists every file of an ext4 image (but lost+found) with its
// metadata and content, using debugfs only.
func readTree(t testing.TB, img string) map[string]*fsEntry {
	t.Helper()
	tree := map[string]*fsEntry{}
	// Walk the directories breadth first, one debugfs run per level.
	level := []string{"/"}
	var all []string
	for len(level) > 0 {
		var cmds []string
		for _, d := range level {
			cmds = append(cmds, fmt.Sprintf("ls -p %q", d))
		}
		out := debugfs(t, img, cmds...)
		var next []string
		i := -1
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "debugfs: ") {
				i++
				continue
			}
			m := lsLine.FindStringSubmatch(line)
			if m == nil || m[5] == "." || m[5] == ".." || m[1] == "0" {
				continue
			}
			p := path.Join(level[i], m[5])
			if p == "/lost+found" {
				continue
			}
			all = append(all, p)
			mode, _ := strconv.ParseUint(m[2], 8, 32)
			if mode&0o170000 == 0o040000 {
				next = append(next, p)
			}
		}
		level = next
	}
	sort.Strings(all)

	// stat everything in one run; dump regular files and slow symlinks.
	dumpDir := t.TempDir()
	var cmds []string
	for i, p := range all {
		cmds = append(cmds, fmt.Sprintf("stat %q", p), fmt.Sprintf("dump %q %q", p, filepath.Join(dumpDir, strconv.Itoa(i))))
	}
	out := debugfs(t, img, cmds...)
	blocks := strings.Split(out, "debugfs: stat ")[1:]
	if len(blocks) != len(all) {
		t.Fatalf("debugfs stat gave %d blocks for %d files", len(blocks), len(all))
	}
	var xattrCmds []string
	var xattrKeys [][2]string
	for i, p := range all {
		b := blocks[i]
		h := statHeader.FindStringSubmatch(b)
		o := statOwner.FindStringSubmatch(b)
		if h == nil || o == nil {
			t.Fatalf("debugfs stat %s: unparsable:\n%s", p, b)
		}
		e := &fsEntry{Xattrs: map[string]string{}}
		e.ino, _ = strconv.Atoi(h[1])
		mode, _ := strconv.ParseUint(h[3], 8, 32)
		e.Mode = uint32(mode)
		e.UID, _ = strconv.Atoi(o[1])
		e.GID, _ = strconv.Atoi(o[2])
		if m := statLinks.FindStringSubmatch(b); m != nil {
			e.nlink, _ = strconv.Atoi(m[1])
		}
		switch h[2] {
		case "directory":
			e.Type = "dir"
		case "regular":
			e.Type = "reg"
			data, err := os.ReadFile(filepath.Join(dumpDir, strconv.Itoa(i)))
			if err != nil {
				t.Fatalf("dump %s: %v", p, err)
			}
			e.Content = string(data)
		case "symlink":
			e.Type = "symlink"
			if m := statFast.FindStringSubmatch(b); m != nil {
				e.Target = m[1]
			} else {
				data, err := os.ReadFile(filepath.Join(dumpDir, strconv.Itoa(i)))
				if err != nil {
					t.Fatalf("dump %s: %v", p, err)
				}
				e.Target = string(data)
			}
		case "character special", "block special":
			e.Type = map[string]string{"character special": "char", "block special": "block"}[h[2]]
			m := statDevice.FindStringSubmatch(b)
			if m == nil {
				t.Fatalf("debugfs stat %s: no device numbers:\n%s", p, b)
			}
			e.Major, _ = strconv.Atoi(m[1])
			e.Minor, _ = strconv.Atoi(m[2])
		case "FIFO":
			e.Type = "fifo"
		default:
			t.Fatalf("debugfs stat %s: type %q", p, h[2])
		}
		if _, rest, ok := strings.Cut(b, "Extended attributes:\n"); ok {
			for _, line := range strings.Split(rest, "\n") {
				m := statXattr.FindStringSubmatch(line)
				if m == nil {
					break
				}
				f := filepath.Join(dumpDir, fmt.Sprintf("x%d", len(xattrKeys)))
				xattrCmds = append(xattrCmds, fmt.Sprintf("ea_get -f %q %q %q", f, p, m[1]))
				xattrKeys = append(xattrKeys, [2]string{p, m[1]})
			}
		}
		tree[p] = e
	}
	if len(xattrCmds) > 0 {
		debugfs(t, img, xattrCmds...)
		for i, k := range xattrKeys {
			v, err := os.ReadFile(filepath.Join(dumpDir, fmt.Sprintf("x%d", i)))
			if err != nil {
				t.Fatalf("ea_get %s %s: %v", k[0], k[1], err)
			}
			tree[k[0]].Xattrs[k[1]] = string(v)
		}
	}

	// Hard links: name every inode by its first path.
	first := map[int]string{}
	for _, p := range all {
		e := tree[p]
		if e.Type == "dir" {
			continue
		}
		if f, ok := first[e.ino]; ok {
			e.Group = f
			tree[f].Group = f
		} else {
			first[e.ino] = p
		}
	}
	for _, p := range all {
		if e := tree[p]; e.Type != "dir" && e.Group == "" && e.nlink != 1 {
			t.Errorf("%s: link count %d but one name in the tree", p, e.nlink)
		}
	}
	return tree
}
