package guestd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	agentv1 "github.com/hypervm/hyper/api/agent/v1"
)

const (
	// outputChunk is the most output one message carries.
	outputChunk = 32 << 10
	// drainIdle is how long output is still read after the process exited
	// once none arrives: what the process left in its pipes is delivered,
	// but a background child holding them open does not hold the call.
	drainIdle = 200 * time.Millisecond
	// maxTimeout bounds ExecStart.timeout to keep durations sane.
	maxTimeout = 30 * 24 * time.Hour
)

// proc is a started process and the agent's ends of its streams.
type proc struct {
	pid    int
	os     *os.Process
	exited <-chan unix.WaitStatus
	tty    bool

	stdin   *os.File   // pipe write end, or the pty master
	outputs []*os.File // stdout, stderr pipes, or just the pty master

	stdinOnce sync.Once
}

// start starts spec with pipes or, for a tty, a pseudo-terminal of
// rows x cols.
func (s *Server) start(spec procSpec, rows, cols uint16) (*proc, error) {
	cmd := spec.command()
	var child []*os.File // the child's ends, closed here once it runs
	defer func() {
		for _, f := range child {
			f.Close()
		}
	}()
	p := &proc{tty: spec.tty}
	if spec.tty {
		master, slave, err := openPTY(rows, cols)
		if err != nil {
			return nil, connect.NewError(connect.CodeInternal, err)
		}
		child = append(child, slave)
		if spec.setID {
			// The terminal belongs to whoever uses it, as login(1) does;
			// programs that reopen it (/dev/tty) need that.
			if err := slave.Chown(int(spec.id.uid), -1); err != nil {
				master.Close()
				return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("chown terminal: %w", err))
			}
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		p.stdin, p.outputs = master, []*os.File{master}
	} else {
		inR, inW, err := os.Pipe()
		if err != nil {
			return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("stdin pipe: %w", err))
		}
		outR, outW, err := os.Pipe()
		if err != nil {
			inR.Close()
			inW.Close()
			return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("stdout pipe: %w", err))
		}
		errR, errW, err := os.Pipe()
		if err != nil {
			for _, f := range []*os.File{inR, inW, outR, outW} {
				f.Close()
			}
			return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("stderr pipe: %w", err))
		}
		child = append(child, inR, outW, errW)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
		p.stdin, p.outputs = inW, []*os.File{outR, errR}
	}
	exited, err := s.cfg.Reaper.Start(cmd)
	if err != nil {
		p.close()
		return nil, startError(spec, err)
	}
	p.pid, p.os, p.exited = cmd.Process.Pid, cmd.Process, exited
	return p, nil
}

// close releases the agent's ends of the process's streams.
func (p *proc) close() {
	p.stdin.Close()
	for _, f := range p.outputs {
		f.Close()
	}
	if p.os != nil {
		p.os.Release()
	}
}

func (p *proc) writeStdin(b []byte) {
	// A process that closed its stdin just loses the rest.
	p.stdin.Write(b)
}

func (p *proc) closeStdin() {
	p.stdinOnce.Do(func() {
		if p.tty {
			// A terminal has no EOF of its own: ^D is how a reader at
			// the start of a line sees one.
			p.stdin.Write([]byte{4})
			return
		}
		p.stdin.Close()
	})
}

// signal sends sig to the process (through its pidfd, so never to a
// recycled pid).
func (p *proc) signal(sig unix.Signal) error {
	return p.os.Signal(sig)
}

// killAll kills the process's group and, for a tty, every process of its
// session (an interactive shell puts each job in a group of its own).
func (p *proc) killAll() {
	unix.Kill(-p.pid, unix.SIGKILL)
	if p.tty {
		killSession(p.pid)
	}
}

// killSession SIGKILLs every process whose session id is sid.
func killSession(sid int) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if s, err := unix.Getsid(pid); err == nil && s == sid {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// execSender serialises the sends of one Exec call and remembers the first
// failure.
type execSender struct {
	mu     sync.Mutex
	stream *connect.BidiStream[agentv1.ExecRequest, agentv1.ExecResponse]
	err    error
}

func (o *execSender) send(m *agentv1.ExecResponse) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err == nil {
		o.err = o.stream.Send(m)
	}
	return o.err
}

// Exec runs one process for the host.
func (s *Server) Exec(ctx context.Context, stream *connect.BidiStream[agentv1.ExecRequest, agentv1.ExecResponse]) error {
	first, err := stream.Receive()
	if errors.Is(err, io.EOF) {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("start: no start message"))
	}
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("start: the first message must be start"))
	}
	var timeout time.Duration
	if t := start.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() <= 0 || t.AsDuration() > maxTimeout {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("timeout: %v is not between 0 and %v", t.AsDuration(), maxTimeout))
		}
		timeout = t.AsDuration()
	}
	rows, cols := uint16(24), uint16(80)
	if sz := start.GetSize(); sz != nil {
		if sz.GetRows() == 0 || sz.GetCols() == 0 || sz.GetRows() > 0xffff || sz.GetCols() > 0xffff {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("size: %dx%d is not a terminal size", sz.GetRows(), sz.GetCols()))
		}
		rows, cols = uint16(sz.GetRows()), uint16(sz.GetCols())
	}
	spec, err := s.prepare(execRequest{
		argv: start.GetArgv(),
		env:  start.GetEnv(),
		cwd:  start.GetCwd(),
		user: start.GetUser(),
		tty:  start.GetTty(),
	})
	if err != nil {
		return err
	}
	p, err := s.start(spec, rows, cols)
	if err != nil {
		return err
	}
	defer p.close()
	s.log.Debug("exec started", "pid", p.pid, "argv", spec.argv)

	out := &execSender{stream: stream}
	out.send(&agentv1.ExecResponse{Msg: &agentv1.ExecResponse_Started{Started: &agentv1.ExecStarted{Pid: int32(p.pid)}}})

	var exited atomic.Bool
	var wg sync.WaitGroup
	for i, f := range p.outputs {
		wrap := func(b []byte) *agentv1.ExecResponse {
			return &agentv1.ExecResponse{Msg: &agentv1.ExecResponse_Stdout{Stdout: b}}
		}
		if i == 1 {
			wrap = func(b []byte) *agentv1.ExecResponse {
				return &agentv1.ExecResponse{Msg: &agentv1.ExecResponse_Stderr{Stderr: b}}
			}
		}
		wg.Go(func() { pumpOutput(f, &exited, func(b []byte) error { return out.send(wrap(b)) }) })
	}
	// The input pump ends when the call does: Receive fails once the
	// handler has returned.
	go s.pumpInput(stream, p)

	var deadline <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	var ws unix.WaitStatus
	timedOut := false
	select {
	case ws = <-p.exited:
	case <-deadline:
		timedOut = true
		p.killAll()
		ws = <-p.exited
	case <-ctx.Done():
		// The host gave up or went away: leave nothing of it running.
		p.killAll()
		<-p.exited
	}
	exited.Store(true)
	p.closeStdin()
	for _, f := range p.outputs {
		f.SetReadDeadline(time.Now().Add(drainIdle))
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return connect.NewError(connect.CodeCanceled, fmt.Errorf("exec %s: %w", spec.path, err))
	}
	code, sig := exitOf(ws)
	s.log.Debug("exec exited", "pid", p.pid, "code", code, "signal", sig, "timed_out", timedOut)
	if err := out.send(&agentv1.ExecResponse{Msg: &agentv1.ExecResponse_Exit{Exit: &agentv1.ExecExit{
		Code: code, Signal: sig, TimedOut: timedOut,
	}}}); err != nil {
		return fmt.Errorf("exec %s: send exit status: %w", spec.path, err)
	}
	return nil
}

// pumpOutput sends what the process writes to f until EOF (or, for a pty,
// EIO), or until the process has exited and f stays idle for drainIdle.
func pumpOutput(f *os.File, exited *atomic.Bool, send func([]byte) error) {
	buf := make([]byte, outputChunk)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if send(buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			return
		}
		if exited.Load() {
			f.SetReadDeadline(time.Now().Add(drainIdle))
		}
	}
}

// pumpInput applies the host's stdin, resizes and signals to p until the
// call ends. A request stream that ends closes the process's stdin.
func (s *Server) pumpInput(stream *connect.BidiStream[agentv1.ExecRequest, agentv1.ExecResponse], p *proc) {
	for {
		req, err := stream.Receive()
		if err != nil {
			p.closeStdin()
			return
		}
		switch m := req.GetMsg().(type) {
		case *agentv1.ExecRequest_Stdin:
			p.writeStdin(m.Stdin)
		case *agentv1.ExecRequest_CloseStdin:
			if m.CloseStdin {
				p.closeStdin()
			}
		case *agentv1.ExecRequest_Resize:
			r, c := m.Resize.GetRows(), m.Resize.GetCols()
			if !p.tty || r == 0 || c == 0 || r > 0xffff || c > 0xffff {
				s.log.Warn("exec: ignored resize", "pid", p.pid, "tty", p.tty, "rows", r, "cols", c)
				continue
			}
			if err := setWinsize(p.stdin, uint16(r), uint16(c)); err != nil {
				s.log.Warn("exec: resize", "pid", p.pid, "err", err)
			}
		case *agentv1.ExecRequest_Signal:
			sig, err := signalByName(m.Signal)
			if err != nil {
				s.log.Warn("exec: ignored signal", "pid", p.pid, "err", err)
				continue
			}
			if err := p.signal(sig); err != nil {
				s.log.Debug("exec: signal", "pid", p.pid, "signal", sig, "err", err)
			}
		case *agentv1.ExecRequest_Start:
			s.log.Warn("exec: ignored a second start message", "pid", p.pid)
		}
	}
}
