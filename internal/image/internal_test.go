package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Microsoft/hcsshim/ext4/tar2ext4"
)

type okTransport struct{ hits int }

func (o *okTransport) RoundTrip(*http.Request) (*http.Response, error) {
	o.hits++
	return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody}, nil
}

func TestSchemeGuard(t *testing.T) {
	next := &okTransport{}
	g := &schemeGuard{next: next, insecure: map[string]bool{"reg.internal:5000": true}}
	for _, tc := range []struct {
		url     string
		allowed bool
	}{
		{"https://registry-1.docker.io/v2/", true},
		{"https://10.1.2.3/v2/", true},
		{"http://localhost:5000/v2/", true},
		{"http://127.0.0.1:5000/v2/", true},
		{"http://127.8.9.10/v2/", true},
		{"http://[::1]:5000/v2/", true},
		{"http://reg.internal:5000/v2/", true},
		{"http://reg.internal/v2/", false},
		{"http://10.1.2.3/v2/", false},
		{"http://192.168.1.10:5000/v2/", false},
		{"http://registry.example.com/v2/", false},
	} {
		req, err := http.NewRequest(http.MethodGet, tc.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		before := next.hits
		_, err = g.RoundTrip(req)
		if allowed := err == nil && next.hits == before+1; allowed != tc.allowed {
			t.Errorf("%s: allowed = %v (err %v), want %v", tc.url, allowed, err, tc.allowed)
		}
	}
}

// TestInodeBitmapPadding shows tar2ext4's output failing e2fsck -fn and the
// fix making it pass.
func TestInodeBitmapPadding(t *testing.T) {
	if _, err := exec.LookPath("e2fsck"); err != nil {
		t.Skipf("needs e2fsck (Debian package e2fsprogs): %v", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range []string{"a", "b", "c"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: 1}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "fs.ext4")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := tar2ext4.ConvertTarToExt4(&buf, f); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("e2fsck", "-fn", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Padding at end of inode bitmap is not set") {
		t.Logf("tar2ext4 no longer leaves the padding clear (err %v):\n%s", err, out)
	}
	if err := fixInodeBitmapPadding(f); err != nil {
		t.Fatalf("fixInodeBitmapPadding: %v", err)
	}
	if out, err := exec.Command("e2fsck", "-fn", path).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn after the fix: %v\n%s", err, out)
	}
}

func TestCleanName(t *testing.T) {
	for in, want := range map[string]string{
		"./":             "",
		".":              "",
		"./etc/passwd":   "etc/passwd",
		"etc//x/":        "etc/x",
		"a/../b":         "b",
		"a/b/../../c/..": "",
	} {
		if got, err := cleanName(in); err != nil || got != want {
			t.Errorf("cleanName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"/etc/passwd", "..", "../x", "a/../../x", "./../x"} {
		if _, err := cleanName(in); !errors.Is(err, ErrUnsafeEntry) {
			t.Errorf("cleanName(%q) = %v, want ErrUnsafeEntry", in, err)
		}
	}
}
