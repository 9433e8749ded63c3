package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
	"google.golang.org/protobuf/types/known/durationpb"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
)

func (a *app) vmExecCmd() *cobra.Command {
	var (
		interactive, tty bool
		env              []string
		cwd, user        string
		timeout          time.Duration
	)
	cmd := &cobra.Command{
		Use:   "exec [-it] VM -- CMD [ARGS...]",
		Short: "Run a command in a VM; exits with the command's exit code",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			argv := args[1:]
			// Flags stop at the VM id, so a "--" after it arrives as an
			// argument; it only separates, as docker's does.
			if argv[0] == "--" {
				argv = argv[1:]
			}
			if len(argv) == 0 {
				return fmt.Errorf("no command given: hyper vm exec VM -- CMD [ARGS...]")
			}
			start := &hyperv1.ExecStart{VmId: args[0], Argv: argv, Cwd: cwd, User: user, Tty: tty}
			if len(env) > 0 {
				start.Env = map[string]string{}
				for _, kv := range env {
					k, v, ok := strings.Cut(kv, "=")
					if !ok || k == "" {
						return fmt.Errorf("-e/--env %q: want KEY=VALUE", kv)
					}
					start.Env[k] = v
				}
			}
			if timeout > 0 {
				start.Timeout = durationpb.New(timeout)
			}
			code, err := a.exec(cmd.Context(), start, interactive)
			if err != nil {
				return err
			}
			if code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.SetInterspersed(false)
	f.BoolVarP(&interactive, "interactive", "i", false, "send stdin to the command")
	f.BoolVarP(&tty, "tty", "t", false, "allocate a terminal")
	f.StringArrayVarP(&env, "env", "e", nil, "environment KEY=VALUE (repeatable)")
	f.StringVarP(&cwd, "workdir", "w", "", "working directory in the guest")
	f.StringVarP(&user, "user", "u", "", "user in the guest (name or uid[:gid])")
	f.DurationVar(&timeout, "timeout", 0, "kill the command after this long")
	return cmd
}

// exec runs one command and returns its exit code (128+n for signal n, as
// shells report it).
func (a *app) exec(ctx context.Context, start *hyperv1.ExecStart, interactive bool) (int, error) {
	c, err := a.client()
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream := c.Exec(ctx)
	defer stream.CloseResponse()

	stdinFile, _ := a.stdin.(*os.File)
	if start.Tty && stdinFile != nil && term.IsTerminal(int(stdinFile.Fd())) {
		if w, h, err := term.GetSize(int(stdinFile.Fd())); err == nil {
			start.Size = &hyperv1.TerminalSize{Rows: uint32(h), Cols: uint32(w)}
		}
		old, err := term.MakeRaw(int(stdinFile.Fd()))
		if err != nil {
			return 0, fmt.Errorf("set terminal raw: %w", err)
		}
		defer term.Restore(int(stdinFile.Fd()), old)
	}
	if err := stream.Send(&hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_Start{Start: start}}); err != nil {
		return 0, receiveError(stream, err)
	}

	// All sends happen on this goroutine's children through one channel,
	// since a bidi stream allows one sender at a time.
	sends := make(chan *hyperv1.ExecRequest, 16)
	go func() {
		for req := range sends {
			if stream.Send(req) != nil {
				return
			}
			if req.GetCloseStdin() {
				_ = stream.CloseRequest()
				return
			}
		}
	}()
	send := func(req *hyperv1.ExecRequest) bool {
		select {
		case sends <- req:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if interactive {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := a.stdin.Read(buf)
				if n > 0 && !send(&hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_Stdin{Stdin: append([]byte(nil), buf[:n]...)}}) {
					return
				}
				if err != nil {
					send(&hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_CloseStdin{CloseStdin: true}})
					return
				}
			}
		}()
	} else {
		send(&hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_CloseStdin{CloseStdin: true}})
	}
	if start.Tty && stdinFile != nil {
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-winch:
					if w, h, err := term.GetSize(int(stdinFile.Fd())); err == nil {
						send(&hyperv1.ExecRequest{Msg: &hyperv1.ExecRequest_Resize{Resize: &hyperv1.TerminalSize{Rows: uint32(h), Cols: uint32(w)}}})
					}
				}
			}
		}()
	}

	for {
		resp, err := stream.Receive()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, errors.New("the command's stream ended without an exit status")
			}
			return 0, err
		}
		switch m := resp.GetMsg().(type) {
		case *hyperv1.ExecResponse_Stdout:
			if _, err := a.stdout.Write(m.Stdout); err != nil {
				return 0, err
			}
		case *hyperv1.ExecResponse_Stderr:
			if _, err := a.stderr.Write(m.Stderr); err != nil {
				return 0, err
			}
		case *hyperv1.ExecResponse_Exit:
			return exitCode(m.Exit), nil
		}
	}
}

func exitCode(e *hyperv1.ExecExit) int {
	if sig := e.GetSignal(); sig != "" {
		if n := unix.SignalNum(sig); n != 0 {
			return 128 + int(n)
		}
		return 128
	}
	return int(e.GetCode())
}

// receiveError prefers the server's error over a send error, which only
// says the stream broke.
func receiveError(stream *connect.BidiStreamForClient[hyperv1.ExecRequest, hyperv1.ExecResponse], sendErr error) error {
	if _, err := stream.Receive(); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return sendErr
}
