package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
)

// progressStep is how many compressed bytes pass between progress events.
const progressStep = 4 << 20

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// layerReader streams one layer's tar entries, checking the compressed
// bytes against the layer digest and the uncompressed ones against the
// config's diff id. The compression is recognised from the bytes (gzip,
// zstd, or none), not trusted from the media type.
type layerReader struct {
	layer    v1.Layer
	index    int
	diffID   v1.Hash
	progress func(Progress)
}

// each calls fn for every entry; body reads the entry's content.
func (lr *layerReader) each(ctx context.Context, fn func(h *tar.Header, body io.Reader) error) error {
	digest, err := lr.layer.Digest()
	if err != nil {
		return classifyRegistry(fmt.Errorf("layer %d: digest: %w", lr.index, err))
	}
	if digest.Algorithm != "sha256" || lr.diffID.Algorithm != "sha256" {
		return fmt.Errorf("layer %d (%s): unsupported digest algorithm", lr.index, digest)
	}
	total, err := lr.layer.Size()
	if err != nil {
		return classifyRegistry(fmt.Errorf("layer %d (%s): size: %w", lr.index, digest, err))
	}
	rc, err := lr.layer.Compressed()
	if err != nil {
		return classifyRegistry(fmt.Errorf("layer %d (%s): open: %w", lr.index, digest, err))
	}
	defer rc.Close()

	src := &countingReader{ctx: ctx, r: rc, hash: newAsyncHash(sha256.New()), total: total, report: func(done int64) {
		lr.progress(Progress{Stage: StagePull, Layer: digest.String(), Done: done, Total: total})
	}}
	defer src.hash.stop()
	src.report(0)
	br := bufio.NewReaderSize(src, 1<<20)
	magic, _ := br.Peek(4)

	var raw io.Reader = br
	compressed := true
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		gz, err := gzip.NewReader(br)
		if err != nil {
			return lr.readFailed(digest, src, fmt.Errorf("gunzip: %w", err))
		}
		defer gz.Close()
		raw = gz
	case bytes.HasPrefix(magic, zstdMagic):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return lr.readFailed(digest, src, fmt.Errorf("zstd: %w", err))
		}
		defer zr.Close()
		raw = zr
	default:
		compressed = false
	}
	// An uncompressed layer's digest is its diff id: hashing once is enough.
	var diffHash *asyncHash
	if compressed || digest != lr.diffID {
		diffHash = newAsyncHash(sha256.New())
		defer diffHash.stop()
		raw = io.TeeReader(raw, diffHash)
	}
	uncompressed := &errReader{r: raw}

	tr := tar.NewReader(uncompressed)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return lr.readFailed(digest, src, fmt.Errorf("read tar: %w", err))
		}
		if err := fn(h, tr); err != nil {
			if uncompressed.err != nil && !errors.Is(uncompressed.err, io.EOF) {
				return lr.readFailed(digest, src, err)
			}
			return fmt.Errorf("layer %d (%s): %w", lr.index, digest, err)
		}
	}
	// Whatever follows the end-of-archive marker still counts for the
	// digests.
	if _, err := io.Copy(io.Discard, uncompressed); err != nil {
		return lr.readFailed(digest, src, fmt.Errorf("read to end: %w", err))
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return lr.readFailed(digest, src, fmt.Errorf("read to end: %w", err))
	}
	if got := hex.EncodeToString(src.hash.sum()); got != digest.Hex {
		return errorf(ErrCorrupt, "layer %d: content has digest sha256:%s, want %s", lr.index, got, digest)
	}
	if diffHash != nil {
		if got := hex.EncodeToString(diffHash.sum()); got != lr.diffID.Hex {
			return errorf(ErrCorrupt, "layer %d (%s): uncompressed content has digest sha256:%s, config says %s", lr.index, digest, got, lr.diffID)
		}
	}
	src.report(src.n)
	return nil
}

// readFailed explains a failure to read or decode a layer. Bytes that do not
// match their digest explain any decoding error, so the rest of the blob is
// read to tell a corrupt download (ErrCorrupt) from a well-delivered but
// malformed layer.
func (lr *layerReader) readFailed(digest v1.Hash, src *countingReader, err error) error {
	if src.ctx.Err() != nil {
		return fmt.Errorf("layer %d (%s): %w", lr.index, digest, src.ctx.Err())
	}
	_, _ = io.Copy(io.Discard, src)
	if got := hex.EncodeToString(src.hash.sum()); got != digest.Hex {
		return errorf(ErrCorrupt, "layer %d: content has digest sha256:%s, want %s (%v)", lr.index, got, digest, err)
	}
	return classifyRegistry(fmt.Errorf("layer %d (%s): %w", lr.index, digest, err))
}

// countingReader hashes and counts what it reads, reports progress, and
// stops when ctx is done.
type countingReader struct {
	ctx      context.Context
	r        io.Reader
	hash     *asyncHash
	n, total int64
	last     int64
	report   func(done int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.hash.Write(p[:n])
	c.n += int64(n)
	if c.n-c.last >= progressStep {
		c.last = c.n
		c.report(c.n)
	}
	return n, err
}

// errReader remembers the first read error, to tell the reading side's
// failures from the writing side's in a copy.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && e.err == nil {
		e.err = err
	}
	return n, err
}
