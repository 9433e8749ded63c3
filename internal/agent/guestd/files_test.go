package guestd_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"connectrpc.com/connect"

	agentv1 "github.com/hypervm/hyper/api/agent/v1"
	"github.com/hypervm/hyper/internal/agent/agenttest"
	"github.com/hypervm/hyper/internal/agent/guestd"
)

func TestWriteReadLargeFile(t *testing.T) {
	h := start(t, guestd.Config{})
	data := make([]byte, 8<<20+123)
	rand.Read(data)
	path := filepath.Join(t.TempDir(), "big")
	info, err := h.client.WriteFile(ctxT(t), &agentv1.WriteFileHeader{Path: path, Mode: 0o600}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if info.GetSize() != uint64(len(data)) || info.GetMode()&0o7777 != 0o600 || info.GetType() != agentv1.FileType_FILE_TYPE_REGULAR {
		t.Errorf("written info %v", info)
	}
	onDisk, err := os.ReadFile(path)
	must(t, err)
	if sha256.Sum256(onDisk) != sha256.Sum256(data) {
		t.Fatal("the file on disk differs from what was written")
	}

	hash := sha256.New()
	info, err = h.client.ReadFile(ctxT(t), path, hash)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(hash.Sum(nil), func() []byte { s := sha256.Sum256(data); return s[:] }()) {
		t.Error("the file read back differs from what was written")
	}
	if info.GetSize() != uint64(len(data)) {
		t.Errorf("read info size %d, want %d", info.GetSize(), len(data))
	}
}

func TestWriteFileSmallAndReplace(t *testing.T) {
	h := start(t, guestd.Config{})
	dir := t.TempDir()
	path := filepath.Join(dir, "a", "b", "small.txt")
	if _, err := h.client.WriteFile(ctxT(t), &agentv1.WriteFileHeader{Path: path}, strings.NewReader("x")); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("write into a missing directory: error %v, want NotFound", err)
	}
	for _, content := range []string{"first", "", "second and longer"} {
		if _, err := h.client.WriteFile(ctxT(t), &agentv1.WriteFileHeader{Path: path, MakeParents: true}, strings.NewReader(content)); err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		info, err := h.client.ReadFile(ctxT(t), path, &got)
		if err != nil {
			t.Fatal(err)
		}
		if got.String() != content || info.GetMode()&0o7777 != 0o644 {
			t.Errorf("read %q mode %#o, want %q 0644", got.String(), info.GetMode()&0o7777, content)
		}
	}
	// Only the file itself is left: no temporary files.
	ents, err := os.ReadDir(filepath.Dir(path))
	must(t, err)
	if len(ents) != 1 {
		t.Errorf("directory holds %v, want just the file", ents)
	}
}

func TestWriteFileOwner(t *testing.T) {
	requireRoot(t)
	h := start(t, guestd.Config{})
	path := filepath.Join(t.TempDir(), "owned")
	uid, gid := uint32(65534), uint32(100)
	info, err := h.client.WriteFile(ctxT(t), &agentv1.WriteFileHeader{Path: path, Mode: 0o4750, Uid: &uid, Gid: &gid}, strings.NewReader("#!/bin/sh\n"))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	must(t, err)
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != uid || st.Gid != gid || st.Mode&0o7777 != 0o4750 || info.GetUid() != uid {
		t.Errorf("owner %d:%d mode %#o, want 65534:100 04750", st.Uid, st.Gid, st.Mode&0o7777)
	}
}

// failingReader returns some data, then an error.
type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n > 0 {
		n := min(len(p), r.n)
		r.n -= n
		return n, nil
	}
	return 0, errors.New("source broke")
}

func TestWriteFileAbortLeavesOldFile(t *testing.T) {
	h := start(t, guestd.Config{})
	dir := t.TempDir()
	path := filepath.Join(dir, "keep")
	must(t, os.WriteFile(path, []byte("old"), 0o644))
	_, err := h.client.WriteFile(ctxT(t), &agentv1.WriteFileHeader{Path: path}, &failingReader{n: 1 << 20})
	if err == nil || !strings.Contains(err.Error(), "source broke") {
		t.Fatalf("error %v, want the source's", err)
	}
	b, err := os.ReadFile(path)
	must(t, err)
	if string(b) != "old" {
		t.Errorf("file now holds %d bytes, want the old content", len(b))
	}
	waitDirEntries(t, dir, 1)
}

// waitDirEntries waits for the guest to clean up after an aborted write.
func waitDirEntries(t *testing.T, dir string, n int) {
	t.Helper()
	var ents []os.DirEntry
	for range 200 {
		ents, _ = os.ReadDir(dir)
		if len(ents) == n {
			return
		}
		sleep()
	}
	t.Errorf("%s holds %d entries, want %d", dir, len(ents), n)
}

func TestFileErrors(t *testing.T) {
	h := start(t, guestd.Config{})
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	must(t, os.WriteFile(file, []byte("x"), 0o644))
	missing := filepath.Join(dir, "missing")
	ctx := ctxT(t)
	check := func(what string, err error, want connect.Code) {
		t.Helper()
		if connect.CodeOf(err) != want {
			t.Errorf("%s: error %v, want %v", what, err, want)
		}
	}
	_, err := h.client.ReadFile(ctx, missing, io.Discard)
	check("read missing", err, connect.CodeNotFound)
	_, err = h.client.ReadFile(ctx, dir, io.Discard)
	check("read directory", err, connect.CodeFailedPrecondition)
	_, err = h.client.ReadFile(ctx, "relative/path", io.Discard)
	check("read relative", err, connect.CodeInvalidArgument)
	_, err = h.client.Stat(ctx, missing)
	check("stat missing", err, connect.CodeNotFound)
	_, err = h.client.Stat(ctx, file+"/below")
	check("stat below a file", err, connect.CodeFailedPrecondition)
	_, err = h.client.ListDir(ctx, file)
	check("list a file", err, connect.CodeFailedPrecondition)
	_, err = h.client.ListDir(ctx, missing)
	check("list missing", err, connect.CodeNotFound)
	_, err = h.client.WriteFile(ctx, &agentv1.WriteFileHeader{Path: dir}, strings.NewReader("x"))
	check("write over a directory", err, connect.CodeFailedPrecondition)
	_, err = h.client.WriteFile(ctx, &agentv1.WriteFileHeader{Path: file + "/below"}, strings.NewReader("x"))
	check("write below a file", err, connect.CodeFailedPrecondition)
	_, err = h.client.WriteFile(ctx, &agentv1.WriteFileHeader{Path: filepath.Join(dir, "m"), Mode: 0o100644}, strings.NewReader("x"))
	check("write with type bits in mode", err, connect.CodeInvalidArgument)
	err = h.client.Remove(ctx, missing, false)
	check("remove missing", err, connect.CodeNotFound)
	err = h.client.Remove(ctx, "/", true)
	check("remove root", err, connect.CodeInvalidArgument)
	_, err = h.client.MakeDir(ctx, &agentv1.MakeDirRequest{Path: file})
	check("mkdir over a file", err, connect.CodeAlreadyExists)
	_, err = h.client.MakeDir(ctx, &agentv1.MakeDirRequest{Path: filepath.Join(missing, "sub")})
	check("mkdir without parents", err, connect.CodeNotFound)
}

func TestDirectories(t *testing.T) {
	h := start(t, guestd.Config{})
	ctx := ctxT(t)
	dir := t.TempDir()
	deep := filepath.Join(dir, "x", "y")
	info, err := h.client.MakeDir(ctx, &agentv1.MakeDirRequest{Path: deep, Parents: true, Mode: 0o700})
	if err != nil {
		t.Fatal(err)
	}
	if !info.GetIsDir() || info.GetMode()&0o7777 != 0o700 {
		t.Errorf("mkdir info %v", info)
	}
	if info, err := h.client.MakeDir(ctx, &agentv1.MakeDirRequest{Path: deep, Parents: true, Mode: 0o755}); err != nil || info.GetMode()&0o7777 != 0o700 {
		t.Errorf("mkdir -p of an existing directory: %v %v, want it left alone (0700)", info, err)
	}
	if _, err := h.client.MakeDir(ctx, &agentv1.MakeDirRequest{Path: deep}); connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Errorf("mkdir of an existing directory: %v, want AlreadyExists", err)
	}
	must(t, os.WriteFile(filepath.Join(dir, "b"), []byte("12345"), 0o644))
	must(t, os.Symlink("b", filepath.Join(dir, "a-link")))
	ents, err := h.client.ListDir(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.GetName())
	}
	if !slices.Equal(names, []string{"a-link", "b", "x"}) {
		t.Fatalf("entries %v", names)
	}
	if ents[0].GetType() != agentv1.FileType_FILE_TYPE_SYMLINK || ents[0].GetLinkTarget() != "b" ||
		ents[1].GetSize() != 5 || ents[1].GetType() != agentv1.FileType_FILE_TYPE_REGULAR ||
		!ents[2].GetIsDir() || ents[2].GetPath() != filepath.Join(dir, "x") {
		t.Errorf("entries %v", ents)
	}
	if err := h.client.Remove(ctx, filepath.Join(dir, "x"), false); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("remove a non-empty directory: %v, want FailedPrecondition", err)
	}
	if err := h.client.Remove(ctx, filepath.Join(dir, "x"), true); err != nil {
		t.Fatal(err)
	}
	if err := h.client.Remove(ctx, filepath.Join(dir, "b"), false); err != nil {
		t.Fatal(err)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 1 {
		t.Errorf("after removes: %v %v", ents, err)
	}
}

func TestPermissionDenied(t *testing.T) {
	requireRoot(t)
	h := start(t, guestd.Config{})
	// Root passes permission bits, not the immutable attribute.
	dir := filepath.Join(agenttest.MountExt4(t), "locked")
	must(t, os.Mkdir(dir, 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644))
	setImmutable(t, dir)
	_, err := h.client.WriteFile(context.Background(), &agentv1.WriteFileHeader{Path: filepath.Join(dir, "new")}, strings.NewReader("x"))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("write into an immutable directory: %v, want PermissionDenied", err)
	}
	if err := h.client.Remove(context.Background(), filepath.Join(dir, "f"), false); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("remove from an immutable directory: %v, want PermissionDenied", err)
	}
}
