package image

import (
	"hash"
	"io"
	"sync"
)

// bufferedPipe connects the flattener to the ext4 writer like io.Pipe, but
// with a few MiB of buffer in between. With io.Pipe every write waits for
// the reader, so the two sides, each about half the work, mostly take turns;
// with a buffer they run at the same time. Chunks are recycled, so a build
// allocates the buffer once.
//
// One goroutine writes and one reads.
type bufferedPipe struct {
	full chan []byte   // filled chunks, in order; closed by closeWrite
	free chan []byte   // empty chunks
	done chan struct{} // closed by closeRead
	once sync.Once

	rerr error // why the reader stopped; set before done is closed
	werr error // why the writer stopped; set before full is closed

	w     []byte // chunk being filled by the writer
	r     []byte // unread rest of the reader's chunk
	rfull []byte // the reader's whole chunk, to give back
}

func newBufferedPipe(chunks, size int) *bufferedPipe {
	p := &bufferedPipe{
		full: make(chan []byte, chunks),
		free: make(chan []byte, chunks),
		done: make(chan struct{}),
	}
	for range chunks {
		p.free <- make([]byte, 0, size)
	}
	return p
}

// Write copies b into the pipe; it fails once the reader has stopped.
func (p *bufferedPipe) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		if p.w == nil {
			select {
			case p.w = <-p.free:
			case <-p.done:
				return n, p.rerr
			}
		}
		k := copy(p.w[len(p.w):cap(p.w)], b)
		p.w = p.w[:len(p.w)+k]
		b = b[k:]
		n += k
		if len(p.w) == cap(p.w) {
			if err := p.flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func (p *bufferedPipe) flush() error {
	select {
	case p.full <- p.w:
		p.w = nil
		return nil
	case <-p.done:
		return p.rerr
	}
}

// closeWrite ends the stream: the reader sees err, or io.EOF if err is nil,
// after the data written so far.
func (p *bufferedPipe) closeWrite(err error) {
	if err == nil && len(p.w) > 0 {
		err = p.flush()
	}
	p.werr = err
	close(p.full)
}

// Read reads what the writer wrote.
func (p *bufferedPipe) Read(b []byte) (int, error) {
	for len(p.r) == 0 {
		if p.rfull != nil {
			p.free <- p.rfull[:0]
			p.rfull = nil
		}
		c, ok := <-p.full
		if !ok {
			if p.werr != nil {
				return 0, p.werr
			}
			return 0, io.EOF
		}
		p.rfull, p.r = c, c
	}
	n := copy(b, p.r)
	p.r = p.r[n:]
	return n, nil
}

// closeRead makes the writer's next write fail with err.
func (p *bufferedPipe) closeRead(err error) {
	p.once.Do(func() {
		p.rerr = err
		close(p.done)
	})
}

// asyncHash hashes what is written to it on its own goroutine, so that
// hashing a layer runs beside parsing it instead of before. Writes copy into
// one of a few recycled buffers. sum (or stop, on error paths) must be
// called to end the goroutine.
type asyncHash struct {
	h    hash.Hash
	in   chan []byte
	free chan []byte
	done chan struct{}
	once sync.Once
}

func newAsyncHash(h hash.Hash) *asyncHash {
	const buffers = 4
	a := &asyncHash{h: h, in: make(chan []byte, buffers), free: make(chan []byte, buffers), done: make(chan struct{})}
	for range buffers {
		a.free <- make([]byte, 0, 1<<20)
	}
	go func() {
		defer close(a.done)
		for b := range a.in {
			a.h.Write(b)
			a.free <- b[:0]
		}
	}()
	return a
}

// Write never fails.
func (a *asyncHash) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b := <-a.free
	a.in <- append(b, p...)
	return len(p), nil
}

// stop ends the goroutine after it has hashed everything written.
func (a *asyncHash) stop() {
	a.once.Do(func() { close(a.in) })
	<-a.done
}

// sum returns the hash of everything written; no writes may follow.
func (a *asyncHash) sum() []byte {
	a.stop()
	return a.h.Sum(nil)
}
