package guestd

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/hypervm/hyper/api/agent/v1"
)

// mainProcess is the state of the image's command.
type mainProcess struct {
	mu     sync.Mutex
	status *agentv1.MainProcess
	proc   *os.Process
}

func (m *mainProcess) set(fn func(st *agentv1.MainProcess)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.status == nil {
		m.status = &agentv1.MainProcess{}
	}
	fn(m.status)
}

// StartMain starts the image's entrypoint and cmd, with the image's env,
// user and working directory, as the VM's main process; its output goes
// to Config.MainOutput. When it exits the guest keeps running and its exit
// status is reported by Health. An image without a command is not an
// error; a command that cannot start is, and is reported by Health too.
func (s *Server) StartMain() error {
	argv := slices.Concat(s.cfg.Image.Entrypoint, s.cfg.Image.Cmd)
	if len(argv) == 0 {
		s.main.set(func(st *agentv1.MainProcess) { st.State = agentv1.MainProcess_STATE_NONE })
		return nil
	}
	fail := func(err error) error {
		s.main.set(func(st *agentv1.MainProcess) {
			st.State, st.Argv, st.Error = agentv1.MainProcess_STATE_FAILED, argv, err.Error()
		})
		return fmt.Errorf("start main process %q: %w", argv, err)
	}
	spec, err := s.prepare(execRequest{argv: argv})
	if err != nil {
		return fail(err)
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return fail(err)
	}
	defer devnull.Close()
	cmd := spec.command()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	if out := s.cfg.MainOutput; out != nil {
		cmd.Stdout, cmd.Stderr = out, out
	}
	exited, err := s.cfg.Reaper.Start(cmd)
	if err != nil {
		return fail(startError(spec, err))
	}
	pid := cmd.Process.Pid
	s.main.mu.Lock()
	s.main.proc = cmd.Process
	s.main.mu.Unlock()
	s.main.set(func(st *agentv1.MainProcess) {
		st.State, st.Pid, st.Argv = agentv1.MainProcess_STATE_RUNNING, int32(pid), argv
	})
	s.log.Info("main process started", "pid", pid, "argv", argv)
	s.bg.Go(func() {
		select {
		case ws := <-exited:
			code, sig := exitOf(ws)
			s.log.Info("main process exited", "pid", pid, "code", code, "signal", sig)
			s.main.set(func(st *agentv1.MainProcess) {
				st.State = agentv1.MainProcess_STATE_EXITED
				st.Exit = &agentv1.ExecExit{Code: code, Signal: sig}
			})
		case <-s.closing:
		}
	})
	return nil
}

// SignalMain sends sig to the main process (SIGTERM and SIGINT that PID 1
// receives are forwarded this way).
func (s *Server) SignalMain(sig unix.Signal) error {
	s.main.mu.Lock()
	p := s.main.proc
	s.main.mu.Unlock()
	if p == nil {
		return errors.New("signal main process: none was started")
	}
	if err := p.Signal(sig); err != nil {
		return fmt.Errorf("signal main process: %w", err)
	}
	return nil
}

// MainStatus returns a copy of the main process's state.
func (s *Server) MainStatus() *agentv1.MainProcess {
	s.main.mu.Lock()
	defer s.main.mu.Unlock()
	if s.main.status == nil {
		return &agentv1.MainProcess{State: agentv1.MainProcess_STATE_UNSPECIFIED}
	}
	return proto.Clone(s.main.status).(*agentv1.MainProcess)
}
