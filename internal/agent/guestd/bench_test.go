package guestd_test

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"testing"

	agentv1 "github.com/hypervm/hyper/api/agent/v1"
	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/agent/guestd"
)

// BenchmarkExecTrue measures one Exec round trip (start, exit status) of
// /bin/true over the in-process transport.
func BenchmarkExecTrue(b *testing.B) {
	h := start(b, guestd.Config{})
	for b.Loop() {
		st, err := h.client.Exec(context.Background(), agent.ExecOptions{Argv: []string{"/bin/true"}})
		if err != nil || st.Code != 0 {
			b.Fatal(st, err)
		}
	}
}

// BenchmarkFileRoundTrip writes and reads back 8 MiB.
func BenchmarkFileRoundTrip(b *testing.B) {
	h := start(b, guestd.Config{})
	data := bytes.Repeat([]byte("0123456789abcdef"), 512<<10)
	path := filepath.Join(b.TempDir(), "f")
	b.SetBytes(2 * int64(len(data)))
	for b.Loop() {
		if _, err := h.client.WriteFile(context.Background(), &agentv1.WriteFileHeader{Path: path}, bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
		if _, err := h.client.ReadFile(context.Background(), path, io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
