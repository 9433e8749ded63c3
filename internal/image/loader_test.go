package image_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/hypervm/hyper/internal/image"
	"github.com/hypervm/hyper/internal/image/imagetest"
)

// env is one loader with its own directories.
type env struct {
	images, tmp string
	loader      *image.Loader
}

func newEnv(t *testing.T, arch string) *env {
	t.Helper()
	needE2fsprogs(t)
	// Credentials come from docker's config.json by default; keep the
	// machine's out of the tests.
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	root := t.TempDir()
	e := &env{images: filepath.Join(root, "images"), tmp: filepath.Join(root, "tmp")}
	l, err := image.NewLoader(image.Options{ImagesDir: e.images, TmpDir: e.tmp, Arch: arch})
	if err != nil {
		t.Fatalf("NewLoader: %v", err)
	}
	e.loader = l
	return e
}

// load loads ref, recording progress.
func (e *env) load(t *testing.T, ref string) (*image.Image, []image.Progress, error) {
	t.Helper()
	var events []image.Progress
	img, err := e.loader.Load(context.Background(), ref, func(p image.Progress) { events = append(events, p) })
	return img, events, err
}

// mustLoad loads ref and checks the disk is a clean ext4.
func (e *env) mustLoad(t *testing.T, ref string) (*image.Image, []image.Progress) {
	t.Helper()
	img, events, err := e.load(t, ref)
	if err != nil {
		t.Fatalf("Load(%s): %v", ref, err)
	}
	if img.Path != filepath.Join(e.images, img.ID+".ext4") {
		t.Errorf("Path = %s, want <images>/<id>.ext4", img.Path)
	}
	fi, err := os.Stat(img.Path)
	if err != nil {
		t.Fatalf("stat image: %v", err)
	}
	if fi.Size() != img.Size || fi.Mode().Perm() != 0o444 {
		t.Errorf("image file size %d mode %v; want size %d, mode 0444", fi.Size(), fi.Mode(), img.Size)
	}
	fsck(t, img.Path)
	e.assertNoTemp(t)
	return img, events
}

// assertNoTemp checks that no temporary file is left.
func (e *env) assertNoTemp(t *testing.T) {
	t.Helper()
	left, _ := os.ReadDir(e.tmp)
	for _, d := range left {
		t.Errorf("left in TmpDir: %s", d.Name())
	}
	imgs, _ := os.ReadDir(e.images)
	for _, d := range imgs {
		if !strings.HasSuffix(d.Name(), ".ext4") || strings.HasPrefix(d.Name(), ".") {
			t.Errorf("left in ImagesDir: %s", d.Name())
		}
	}
}

// assertEmpty checks that a failed load left nothing at all.
func (e *env) assertEmpty(t *testing.T) {
	t.Helper()
	e.assertNoTemp(t)
	imgs, _ := os.ReadDir(e.images)
	for _, d := range imgs {
		t.Errorf("left in ImagesDir: %s", d.Name())
	}
}

func newRegistry(t *testing.T, wrap func(http.Handler) http.Handler) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func push(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func pushIndex(t *testing.T, ref string, idx v1.ImageIndex) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func char(name string, major, minor int64) imagetest.Entry {
	return imagetest.Entry{Header: tar.Header{Typeflag: tar.TypeChar, Name: name, Mode: 0o666, Devmajor: major, Devminor: minor}}
}

func block(name string, major, minor int64) imagetest.Entry {
	return imagetest.Entry{Header: tar.Header{Typeflag: tar.TypeBlock, Name: name, Mode: 0o660, Gid: 6, Devmajor: major, Devminor: minor}}
}

func owned(e imagetest.Entry, uid, gid int, xattrs map[string]string) imagetest.Entry {
	e.Uid, e.Gid = uid, gid
	for k, v := range xattrs {
		if e.PAXRecords == nil {
			e.PAXRecords = map[string]string{}
		}
		e.PAXRecords["SCHILY.xattr."+k] = v
	}
	return e
}

// richLayers exercises everything the flattener and the ext4 must keep.
func richLayers() [][]imagetest.Entry {
	big := strings.Repeat("0123456789abcdef", 20000) // 320 KB: many blocks
	longTarget := "/" + strings.Repeat("long/", 40) + "target"
	base := []imagetest.Entry{
		imagetest.Dir("etc", 0o755),
		imagetest.File("etc/passwd", 0o644, "root:x:0:0::/root:/bin/sh\n"),
		owned(imagetest.File("etc/shadow", 0o640, "root:*:19000::::::\n"), 0, 42, nil),
		imagetest.Dir("bin", 0o755),
		imagetest.File("bin/suid", 0o4755, "#!/bin/sh\n"),
		imagetest.File("bin/sgid", 0o2755, "#!/bin/sh\n"),
		imagetest.Dir("tmp", 0o1777),
		imagetest.Dir("usr/lib", 0o755), // no entry for usr: made as a parent
		imagetest.File("usr/lib/libx.so.1", 0o644, big),
		imagetest.Symlink("usr/lib/libx.so", "libx.so.1"),
		imagetest.Dir("var", 0o755),
		imagetest.Dir("var/cache", 0o755),
		imagetest.File("var/cache/old-a", 0o644, "a"),
		imagetest.Dir("var/cache/sub", 0o755),
		imagetest.File("var/cache/sub/old-b", 0o644, "b"),
		imagetest.Dir("old", 0o755),
		imagetest.File("old/file", 0o644, "old"),
		imagetest.Dir("dev", 0o755),
		char("dev/null", 1, 3),
		block("dev/vda", 254, 0),
		imagetest.Dir("run", 0o755),
		{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "run/ctl", Mode: 0o600}},
		{Header: tar.Header{Typeflag: tar.TypeFifo, Name: "run/keep", Mode: 0o620}},
		owned(imagetest.Dir("home/user", 0o750), 1000, 1000, map[string]string{"user.dir": "d"}),
		owned(imagetest.File("home/user/notes", 0o600, "mine"), 1000, 1000, map[string]string{
			"user.comment":        "hello",
			"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
		}),
		imagetest.Symlink("dangling", "/does/not/exist"),
		imagetest.Symlink("abs", "/etc/passwd"),
		imagetest.Symlink("longlink", longTarget),
		imagetest.File("a", 0o644, "a in base"),
		imagetest.Hardlink("b", "a"),
		imagetest.File("gone-target", 0o600, "kept by keep"),
		imagetest.Dir("data", 0o755),
		imagetest.File("data/shared", 0o755, "shared across layers"),
	}
	empty := []imagetest.Entry{}
	middle := []imagetest.Entry{
		imagetest.Dir("etc", 0o750),
		imagetest.File("etc/passwd", 0o644, "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"),
		imagetest.Dir("bin", 0o755),
		imagetest.Hardlink("bin/shared-link", "data/shared"),
		imagetest.Whiteout("old"),
		imagetest.Dir("var/cache", 0o700),
		imagetest.Opaque("var/cache"),
		imagetest.File("var/cache/new", 0o644, "new"),
		imagetest.File("a", 0o644, "a replaced"),
		imagetest.Hardlink("keep", "gone-target"),
		imagetest.File("c", 0o644, "c before"),
		imagetest.Hardlink("d", "c"),
	}
	top := []imagetest.Entry{
		imagetest.Whiteout("gone-target"),
		imagetest.Whiteout("run/ctl"),
		imagetest.File("c", 0o644, "c after"),
		imagetest.File("tmp/x", 0o644, "x"),
		imagetest.Symlink("lib", "usr/lib"),
	}
	return [][]imagetest.Entry{base, empty, middle, top}
}

var richConfig = v1.Config{
	Entrypoint:   []string{"/bin/suid"},
	Cmd:          []string{"--serve"},
	Env:          []string{"PATH=/bin", "MODE=test"},
	WorkingDir:   "/home/user",
	User:         "1000:1000",
	ExposedPorts: map[string]struct{}{"8080/tcp": {}, "53/udp": {}},
}

func richImage(t *testing.T, goarch string) v1.Image {
	t.Helper()
	var layers []v1.Layer
	for _, entries := range richLayers() {
		layers = append(layers, imagetest.Layer(t, entries...))
	}
	return imagetest.Image(t, goarch, richConfig, layers...)
}

func writeLayoutFor(t *testing.T, img v1.Image) string {
	t.Helper()
	return imagetest.WriteLayout(t, t.TempDir(), img, "latest")
}

func TestLoadFromRegistry(t *testing.T) {
	e := newEnv(t, "x86_64")
	host := newRegistry(t, nil)
	src := richImage(t, "amd64")
	ref := host + "/test/rich:v1"
	push(t, ref, src)

	img, events := e.mustLoad(t, ref)
	checkTree(t, img.Path, richLayers()...)

	manifest, _ := src.Digest()
	if img.Ref != ref || img.Digest != manifest.String() || img.Arch != "x86_64" || len(img.ID) != 64 {
		t.Errorf("image = %+v; want ref %s, digest %s, arch x86_64", img, ref, manifest)
	}
	want := image.Config{
		Entrypoint: richConfig.Entrypoint, Cmd: richConfig.Cmd, Env: richConfig.Env,
		WorkingDir: "/home/user", User: "1000:1000", ExposedPorts: []string{"53/udp", "8080/tcp"},
	}
	if !slices.Equal(img.Config.Entrypoint, want.Entrypoint) || !slices.Equal(img.Config.Cmd, want.Cmd) ||
		!slices.Equal(img.Config.Env, want.Env) || img.Config.WorkingDir != want.WorkingDir ||
		img.Config.User != want.User || !slices.Equal(img.Config.ExposedPorts, want.ExposedPorts) {
		t.Errorf("config = %+v, want %+v", img.Config, want)
	}

	// Progress: resolve, every layer read to its end, build, done.
	if events[0].Stage != image.StageResolve || events[len(events)-1].Stage != image.StageDone || events[len(events)-1].Done != img.Size {
		t.Errorf("progress starts with %+v and ends with %+v", events[0], events[len(events)-1])
	}
	layers, _ := src.Layers()
	for _, l := range layers {
		d, _ := l.Digest()
		size, _ := l.Size()
		if !slices.ContainsFunc(events, func(p image.Progress) bool {
			return p.Stage == image.StagePull && p.Layer == d.String() && p.Done == size && p.Total == size
		}) {
			t.Errorf("no progress event shows layer %s fully read (%d bytes)", d, size)
		}
	}
	if !slices.ContainsFunc(events, func(p image.Progress) bool { return p.Stage == image.StageBuild }) {
		t.Errorf("no build progress event")
	}

	// Spot checks with debugfs's own words.
	out := debugfs(t, img.Path,
		`stat /bin/suid`, `stat /home/user/notes`, `stat /dev/vda`, `stat /abs`, `stat /tmp`, `stat /bin/shared-link`, `stat /data/shared`)
	for _, want := range []string{
		"Mode:  04755",
		"User:  1000   Group:  1000",
		"user.comment (5) = \"hello\"",
		"security.capability (20)",
		"Device major/minor number: 254:00",
		`Fast link dest: "/etc/passwd"`,
		"Mode:  01777",
		"Links: 2",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("debugfs output lacks %q:\n%s", want, out)
		}
	}

	// Loading it again reads no layer and writes nothing.
	before, _ := os.Stat(img.Path)
	again, events := e.mustLoad(t, ref)
	after, _ := os.Stat(img.Path)
	if again.ID != img.ID || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("second load: id %s (first %s), file replaced: %v", again.ID, img.ID, !os.SameFile(before, after))
	}
	if slices.ContainsFunc(events, func(p image.Progress) bool { return p.Stage == image.StagePull }) {
		t.Errorf("second load pulled layers: %+v", events)
	}

	// The same image from an OCI layout and from a docker archive is the
	// same content: same id, nothing new written.
	layoutDir := imagetest.WriteLayout(t, t.TempDir(), src, "v1")
	archive := filepath.Join(t.TempDir(), "rich.tar")
	if err := tarball.WriteToFile(archive, name.MustParseReference("test/rich:v1"), src); err != nil {
		t.Fatalf("write docker archive: %v", err)
	}
	for _, ref := range []string{"oci:" + layoutDir, "oci:" + layoutDir + ":v1", "docker-archive:" + archive} {
		other, _ := e.mustLoad(t, ref)
		if other.ID != img.ID {
			t.Errorf("%s: id %s, want %s (same content as the registry image)", ref, other.ID, img.ID)
		}
	}
	if entries, _ := os.ReadDir(e.images); len(entries) != 1 {
		t.Errorf("ImagesDir holds %d files, want 1", len(entries))
	}
}

func TestLoadLocalSourcesBuild(t *testing.T) {
	src := richImage(t, "amd64")
	archive := filepath.Join(t.TempDir(), "rich.tar")
	if err := tarball.WriteToFile(archive, name.MustParseReference("test/rich:v1"), src); err != nil {
		t.Fatalf("write docker archive: %v", err)
	}
	for _, ref := range []string{"oci:" + imagetest.WriteLayout(t, t.TempDir(), src, "v1") + ":v1", "docker-archive:" + archive} {
		t.Run(strings.SplitN(ref, ":", 2)[0], func(t *testing.T) {
			e := newEnv(t, "x86_64")
			img, _ := e.mustLoad(t, ref)
			checkTree(t, img.Path, richLayers()...)
		})
	}
}

func TestMultiPlatform(t *testing.T) {
	host := newRegistry(t, nil)
	amd, arm, s390 := richImage(t, "amd64"), richImage(t, "arm64"), richImage(t, "s390x")
	pushIndex(t, host+"/multi:all", imagetest.Index(t, arm, amd, s390))
	pushIndex(t, host+"/multi:noamd", imagetest.Index(t, arm, s390))
	push(t, host+"/single:arm", arm)

	for _, tc := range []struct {
		arch string
		want v1.Image
	}{{"x86_64", amd}, {"aarch64", arm}} {
		e := newEnv(t, tc.arch)
		img, _ := e.mustLoad(t, host+"/multi:all")
		want, _ := tc.want.Digest()
		if img.Digest != want.String() {
			t.Errorf("%s: loaded manifest %s, want %s", tc.arch, img.Digest, want)
		}
	}

	e := newEnv(t, "x86_64")
	_, _, err := e.load(t, host+"/multi:noamd")
	if !errors.Is(err, image.ErrNoPlatform) || !strings.Contains(err.Error(), "linux/arm64, linux/s390x") {
		t.Errorf("index without amd64: err = %v, want ErrNoPlatform listing linux/arm64, linux/s390x", err)
	}
	_, _, err = e.load(t, host+"/single:arm")
	if !errors.Is(err, image.ErrNoPlatform) || !strings.Contains(err.Error(), "linux/arm64") {
		t.Errorf("arm64 image: err = %v, want ErrNoPlatform naming linux/arm64", err)
	}
	_, _, err = e.load(t, "oci:"+imagetest.WriteLayout(t, t.TempDir(), arm, "latest"))
	if !errors.Is(err, image.ErrNoPlatform) {
		t.Errorf("arm64 layout: err = %v, want ErrNoPlatform", err)
	}
	e.assertEmpty(t)
}

func TestLoadErrors(t *testing.T) {
	good := imagetest.Image(t, "amd64", v1.Config{}, imagetest.Layer(t, imagetest.File("f", 0o644, strings.Repeat("data", 4096))))
	layers, _ := good.Layers()
	layerDigest, _ := layers[0].Digest()

	host := newRegistry(t, nil)
	push(t, host+"/there:v1", good)

	// A registry that flips a byte of the layer blob it serves.
	corrupt := newRegistry(t, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+layerDigest.String()) {
				next.ServeHTTP(w, r)
				return
			}
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			body[len(body)/2] ^= 0xff
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(body)
		})
	})
	push(t, corrupt+"/bad:v1", good)

	// A registry that wants credentials we do not have.
	locked := newRegistry(t, func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("WWW-Authenticate", `Basic realm="hyper-test"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
		})
	})

	missingDir := filepath.Join(t.TempDir(), "nope")
	for _, tc := range []struct {
		ref     string
		want    error
		message string
	}{
		{"", image.ErrInvalidReference, "empty"},
		{"has space:tag", image.ErrInvalidReference, "whitespace"},
		{"Upper/Case:tag", image.ErrInvalidReference, ""},
		{"repo:bad:tag:", image.ErrInvalidReference, ""},
		{host + "/missing:v1", image.ErrNotFound, "NAME_UNKNOWN"},
		{host + "/there:v2", image.ErrNotFound, "MANIFEST_UNKNOWN"},
		{host + "/there@sha256:" + strings.Repeat("0", 64), image.ErrNotFound, "MANIFEST_UNKNOWN"},
		{locked + "/private:v1", image.ErrUnauthorized, "authentication required"},
		{corrupt + "/bad:v1", image.ErrCorrupt, layerDigest.String()},
		{"oci:" + missingDir, image.ErrNotFound, missingDir},
		{"oci:" + imagetest.WriteLayout(t, t.TempDir(), good, "latest") + ":other", image.ErrNotFound, `"other"`},
		{"docker-archive:" + missingDir + ".tar", image.ErrNotFound, missingDir},
	} {
		e := newEnv(t, "x86_64")
		_, _, err := e.load(t, tc.ref)
		t.Logf("Load(%q): %v", tc.ref, err)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.message) {
			t.Errorf("Load(%q) = %v; want %v containing %q", tc.ref, err, tc.want, tc.message)
		}
		e.assertEmpty(t)
	}
}

// unsafeCases are layers that try to write outside the root.
func unsafeCases(outside string) map[string][][]imagetest.Entry {
	return map[string][][]imagetest.Entry{
		"dotdot": {{
			imagetest.Dir("etc", 0o755),
			imagetest.File("etc/../../../../"+outside+"/pwned", 0o644, "x"),
		}},
		"absolute": {{imagetest.File(outside+"/pwned", 0o644, "x")}},
		"link dotdot": {{
			imagetest.File("f", 0o644, "x"),
			imagetest.Hardlink("l", "../../"+outside+"/f"),
		}},
		"through symlink": {{
			imagetest.Symlink("escape", outside),
			imagetest.File("escape/pwned", 0o644, "x"),
		}},
		"through lower symlink": {
			{imagetest.Symlink("escape", outside)},
			{imagetest.File("escape/pwned", 0o644, "x")},
		},
		"through relative symlink": {{
			imagetest.Dir("a", 0o755),
			imagetest.Symlink("a/up", "../../../.."+outside),
			imagetest.File("a/up/pwned", 0o644, "x"),
		}},
	}
}

func TestUnsafeEntries(t *testing.T) {
	outside := t.TempDir()
	for name, layers := range unsafeCases(outside) {
		t.Run(name, func(t *testing.T) {
			var ls []v1.Layer
			for _, entries := range layers {
				ls = append(ls, imagetest.Layer(t, entries...))
			}
			img := imagetest.Image(t, "amd64", v1.Config{}, ls...)
			e := newEnv(t, "x86_64")
			_, _, err := e.load(t, "oci:"+imagetest.WriteLayout(t, t.TempDir(), img, "latest"))
			t.Logf("Load: %v", err)
			if !errors.Is(err, image.ErrUnsafeEntry) {
				t.Errorf("err = %v, want ErrUnsafeEntry", err)
			}
			e.assertEmpty(t)
			if left, _ := os.ReadDir(outside); len(left) != 0 {
				t.Errorf("written outside the root: %v", left)
			}
		})
	}
}

func TestBusybox(t *testing.T) {
	e := newEnv(t, imagetest.HostArch())
	img, _ := e.mustLoad(t, "oci:"+imagetest.BusyboxLayout(t, t.TempDir()))
	if !slices.Equal(img.Config.Cmd, imagetest.BusyboxCmd) {
		t.Errorf("Cmd = %q, want %q", img.Config.Cmd, imagetest.BusyboxCmd)
	}
	tree := readTree(t, img.Path)
	for _, applet := range []string{"/bin/sh", "/bin/echo", "/bin/cat", "/bin/uname", "/bin/sleep"} {
		if e := tree[applet]; e == nil || e.Type != "symlink" || e.Target != "/bin/busybox" {
			t.Errorf("%s = %v, want symlink to /bin/busybox", applet, e)
		}
	}
	want, err := os.ReadFile(imagetest.BusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	if bb := tree["/bin/busybox"]; bb == nil || bb.Content != string(want) || bb.Mode != 0o755 {
		t.Errorf("/bin/busybox differs from the host's %s", imagetest.BusyboxPath)
	}
	if tmp := tree["/tmp"]; tmp == nil || tmp.Mode != 0o1777 {
		t.Errorf("/tmp = %v, want mode 1777", tmp)
	}
}

func TestCancel(t *testing.T) {
	e := newEnv(t, "x86_64")
	big := strings.Repeat("x", 12<<20)
	img := imagetest.Image(t, "amd64", v1.Config{},
		imagetest.Layer(t, imagetest.File("big1", 0o644, big)),
		imagetest.Layer(t, imagetest.File("big2", 0o644, big)))
	ref := "oci:" + imagetest.WriteLayout(t, t.TempDir(), img, "latest")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := e.loader.Load(ctx, ref, func(p image.Progress) {
		if p.Stage == image.StagePull && p.Done > 0 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	e.assertEmpty(t)
}

func TestConcurrentLoadsBuildOnce(t *testing.T) {
	e := newEnv(t, "x86_64")
	ref := "oci:" + imagetest.BusyboxLayout(t, t.TempDir())
	var wg sync.WaitGroup
	ids := make([]string, 3)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			img, err := e.loader.Load(context.Background(), ref, nil)
			if err != nil {
				t.Errorf("Load: %v", err)
				return
			}
			ids[i] = img.ID
		}()
	}
	wg.Wait()
	if ids[0] == "" || ids[0] != ids[1] || ids[1] != ids[2] {
		t.Errorf("ids = %v, want three equal", ids)
	}
	e.assertNoTemp(t)
}

func TestMaxSize(t *testing.T) {
	needE2fsprogs(t)
	root := t.TempDir()
	l, err := image.NewLoader(image.Options{ImagesDir: filepath.Join(root, "images"), TmpDir: filepath.Join(root, "tmp"), Arch: "x86_64", MaxSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	img := imagetest.Image(t, "amd64", v1.Config{}, imagetest.Layer(t, imagetest.File("big", 0o644, strings.Repeat("y", 2<<20))))
	_, err = l.Load(context.Background(), "oci:"+imagetest.WriteLayout(t, t.TempDir(), img, "latest"), nil)
	t.Logf("Load: %v", err)
	if !errors.Is(err, image.ErrNoSpace) {
		t.Errorf("err = %v, want ErrNoSpace", err)
	}
	e := &env{images: filepath.Join(root, "images"), tmp: filepath.Join(root, "tmp")}
	e.assertEmpty(t)
}

func TestRemoveAndPath(t *testing.T) {
	e := newEnv(t, "x86_64")
	img, _ := e.mustLoad(t, "oci:"+imagetest.BusyboxLayout(t, t.TempDir()))
	if p, err := e.loader.Path(img.ID); err != nil || p != img.Path {
		t.Errorf("Path = %q, %v; want %q", p, err, img.Path)
	}
	if err := e.loader.Remove(img.ID); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := os.Stat(img.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("image file still there: %v", err)
	}
	if err := e.loader.Remove(img.ID); !errors.Is(err, image.ErrNotFound) {
		t.Errorf("second Remove = %v, want ErrNotFound", err)
	}
	if _, err := e.loader.Path(img.ID); !errors.Is(err, image.ErrNotFound) {
		t.Errorf("Path after Remove = %v, want ErrNotFound", err)
	}
	for _, bad := range []string{"", "../x", strings.Repeat("A", 64), strings.Repeat("a", 63)} {
		if err := e.loader.Remove(bad); !errors.Is(err, image.ErrInvalidReference) {
			t.Errorf("Remove(%q) = %v, want ErrInvalidReference", bad, err)
		}
	}
}

func TestLayerCompressions(t *testing.T) {
	entries := []imagetest.Entry{imagetest.Dir("d", 0o755), imagetest.File("d/f", 0o644, strings.Repeat("z", 100000))}
	raw := imagetest.Tar(t, entries...)
	plain := static.NewLayer(raw, types.OCIUncompressedLayer)
	zstd, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil },
		tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
	if err != nil {
		t.Fatal(err)
	}
	for name, layer := range map[string]v1.Layer{"uncompressed": plain, "zstd": zstd, "gzip": imagetest.LayerFromTar(t, raw)} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, "x86_64")
			img := imagetest.Image(t, "amd64", v1.Config{}, layer)
			loaded, _ := e.mustLoad(t, "oci:"+imagetest.WriteLayout(t, t.TempDir(), img, "latest"))
			checkTree(t, loaded.Path, entries)
		})
	}
}

func TestCleanTmp(t *testing.T) {
	e := newEnv(t, "x86_64")
	stale := filepath.Join(e.tmp, "hyper-image-0123456789ab-42.ext4")
	other := filepath.Join(e.tmp, "not-ours")
	oldCopy := filepath.Join(e.images, ".abc.ext4-1.incoming")
	freshCopy := filepath.Join(e.images, ".def.ext4-2.incoming")
	for _, f := range []string{stale, other, oldCopy, freshCopy} {
		if err := os.WriteFile(f, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(oldCopy, old, old); err != nil {
		t.Fatal(err)
	}
	if err := e.loader.CleanTmp(); err != nil {
		t.Fatalf("CleanTmp: %v", err)
	}
	for f, want := range map[string]bool{stale: false, other: true, oldCopy: false, freshCopy: true} {
		if _, err := os.Stat(f); (err == nil) != want {
			t.Errorf("%s exists = %v, want %v", filepath.Base(f), err == nil, want)
		}
	}
}

// mountTmpfs mounts a tmpfs of size bytes at a new directory; it needs root.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.Itoa(size)); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func TestDiskFull(t *testing.T) {
	needE2fsprogs(t)
	tmp := mountTmpfs(t, 1<<20)
	images := t.TempDir()
	l, err := image.NewLoader(image.Options{ImagesDir: images, TmpDir: tmp, Arch: "x86_64"})
	if err != nil {
		t.Fatal(err)
	}
	img := imagetest.Image(t, "amd64", v1.Config{}, imagetest.Layer(t, imagetest.File("big", 0o644, strings.Repeat("y", 3<<20))))
	_, err = l.Load(context.Background(), "oci:"+imagetest.WriteLayout(t, t.TempDir(), img, "latest"), nil)
	t.Logf("Load: %v", err)
	if !errors.Is(err, image.ErrNoSpace) {
		t.Errorf("err = %v, want ErrNoSpace", err)
	}
	e := &env{images: images, tmp: tmp}
	e.assertEmpty(t)
}

// TestAcrossFileSystems builds in a TmpDir on another file system than
// ImagesDir, so the disk is copied into place rather than renamed.
func TestAcrossFileSystems(t *testing.T) {
	needE2fsprogs(t)
	tmp := mountTmpfs(t, 64<<20)
	e := &env{images: t.TempDir(), tmp: tmp}
	l, err := image.NewLoader(image.Options{ImagesDir: e.images, TmpDir: e.tmp, Arch: imagetest.HostArch()})
	if err != nil {
		t.Fatal(err)
	}
	e.loader = l
	e.mustLoad(t, "oci:"+imagetest.BusyboxLayout(t, t.TempDir()))
}
