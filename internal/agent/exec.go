package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/hypervm/hyper/api/agent/v1"
)

// TerminalSize is a terminal's size in characters.
type TerminalSize struct {
	Rows, Cols uint16
}

// ExecOptions describes a process to run in the guest and where its input
// and output go.
type ExecOptions struct {
	Argv []string
	// Env is merged over the image's environment; these keys win.
	Env map[string]string
	// Cwd and User default to the image's working directory and user.
	Cwd  string
	User string
	// TTY runs the process on a pseudo-terminal of Size (default 24x80);
	// all its output then arrives on Stdout.
	TTY  bool
	Size TerminalSize
	// Timeout, when positive, kills the process group once it has passed.
	Timeout time.Duration

	// Stdin, when set, is copied to the process, then its stdin is closed;
	// nil closes it at once. Exec does not wait for a Read that blocks
	// after the process exited: that copy ends at the Read's return.
	Stdin io.Reader
	// Stdout and Stderr receive the output; nil discards it.
	Stdout, Stderr io.Writer
	// Resize and Signal, when set, carry terminal resizes and signal names
	// ("SIGINT", "TERM") to the process until it exits.
	Resize <-chan TerminalSize
	Signal <-chan string
	// Started, when set, is called with the process's pid in the guest.
	Started func(pid int)
}

// ExitStatus is how a process ended.
type ExitStatus struct {
	// Code is the exit code, or -1 when a signal killed the process.
	Code int
	// Signal names the signal that killed the process ("SIGKILL").
	Signal string
	// TimedOut is set when the process was killed because its timeout
	// passed.
	TimedOut bool
}

// Exec runs a process in the guest, streams its input and output, and
// returns how it ended. Cancelling ctx kills the process's group in the
// guest.
func (c *Client) Exec(ctx context.Context, opts ExecOptions) (ExitStatus, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream := c.rpc.Exec(ctx)
	x := &execCall{stream: stream, done: make(chan struct{})}

	start := &agentv1.ExecStart{
		Argv: opts.Argv,
		Env:  opts.Env,
		Cwd:  opts.Cwd,
		User: opts.User,
		Tty:  opts.TTY,
	}
	if opts.Size != (TerminalSize{}) {
		start.Size = &agentv1.TerminalSize{Rows: uint32(opts.Size.Rows), Cols: uint32(opts.Size.Cols)}
	}
	if opts.Timeout > 0 {
		start.Timeout = durationpb.New(opts.Timeout)
	}
	x.send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: start}})

	var wg sync.WaitGroup
	if opts.Stdin != nil {
		// Not in wg: a Read may block past the process's end.
		go x.copyStdin(opts.Stdin)
	} else {
		// No input: the process reads end of file at once.
		x.send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_CloseStdin{CloseStdin: true}})
	}
	if opts.Resize != nil || opts.Signal != nil {
		wg.Go(func() { x.forwardControl(opts.Resize, opts.Signal) })
	}

	status, err := x.receive(opts)
	close(x.done)
	x.closeRequest()
	wg.Wait()
	stream.CloseResponse()
	if err != nil {
		return ExitStatus{}, fmt.Errorf("agent exec %q: %w", opts.Argv, err)
	}
	return status, nil
}

// execCall is one Exec stream seen from the host.
type execCall struct {
	stream *connect.BidiStreamForClient[agentv1.ExecRequest, agentv1.ExecResponse]
	done   chan struct{} // closed once the exit status (or an error) arrived

	mu     sync.Mutex // serialises Send and CloseRequest
	closed bool
}

// send sends m unless the call is over. Send errors are not reported here:
// the receive side sees the stream's end and its cause.
func (x *execCall) send(m *agentv1.ExecRequest) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return false
	}
	if err := x.stream.Send(m); err != nil {
		x.closed = true
		return false
	}
	return true
}

func (x *execCall) closeRequest() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.closed {
		x.closed = true
		x.stream.CloseRequest()
	}
}

func (x *execCall) copyStdin(r io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			// Send copies nothing after it returns, so buf is reusable.
			if !x.send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: buf[:n]}}) {
				return
			}
		}
		if err != nil {
			x.send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_CloseStdin{CloseStdin: true}})
			return
		}
	}
}

func (x *execCall) forwardControl(resize <-chan TerminalSize, signal <-chan string) {
	for {
		var m *agentv1.ExecRequest
		select {
		case <-x.done:
			return
		case sz, ok := <-resize:
			if !ok {
				resize = nil
				continue
			}
			m = &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Resize{Resize: &agentv1.TerminalSize{Rows: uint32(sz.Rows), Cols: uint32(sz.Cols)}}}
		case sig, ok := <-signal:
			if !ok {
				signal = nil
				continue
			}
			m = &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Signal{Signal: sig}}
		}
		if !x.send(m) {
			return
		}
	}
}

func (x *execCall) receive(opts ExecOptions) (ExitStatus, error) {
	stdout, stderr := opts.Stdout, opts.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	for {
		res, err := x.stream.Receive()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return ExitStatus{}, errors.New("stream ended without an exit status")
			}
			return ExitStatus{}, err
		}
		switch m := res.GetMsg().(type) {
		case *agentv1.ExecResponse_Started:
			if opts.Started != nil {
				opts.Started(int(m.Started.GetPid()))
			}
		case *agentv1.ExecResponse_Stdout:
			if _, err := stdout.Write(m.Stdout); err != nil {
				return ExitStatus{}, fmt.Errorf("write stdout: %w", err)
			}
		case *agentv1.ExecResponse_Stderr:
			if _, err := stderr.Write(m.Stderr); err != nil {
				return ExitStatus{}, fmt.Errorf("write stderr: %w", err)
			}
		case *agentv1.ExecResponse_Exit:
			return ExitStatus{
				Code:     int(m.Exit.GetCode()),
				Signal:   m.Exit.GetSignal(),
				TimedOut: m.Exit.GetTimedOut(),
			}, nil
		}
	}
}
