package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"
	"sync"

	"connectrpc.com/connect"

	agentv1 "github.com/hypervm/hyper/api/agent/v1"
	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/ids"
)

// The guest RPCs relay the public API's messages to the VM's guest agent
// (api/agent/v1), whose messages mirror them field by field. The agent's
// errors already carry the right codes and name the path; they pass
// through unchanged.

// guest returns the agent of the Running VM id, field naming the request
// field id came from.
func (s *Server) guest(ctx context.Context, op, field, id string) (*agent.Client, error) {
	if s.vms == nil {
		return nil, unimplemented(op, "this node runs no VMs")
	}
	if !ids.IsVM(id) {
		return nil, invalid(field, "%q is not a VM id (want v followed by 16 of [a-z2-7])", id)
	}
	c, err := s.vms.Agent(ctx, id)
	if err != nil {
		return nil, apiError(withVM(id, err))
	}
	return c, nil
}

// withVM makes sure err names the VM it is about.
func withVM(id string, err error) error {
	if strings.Contains(err.Error(), id) {
		return err
	}
	return fmt.Errorf("vm %s: %w", id, err)
}

// guestPath checks a path inside a guest.
func guestPath(field, p string) error {
	switch {
	case p == "":
		return invalid(field, "empty; want an absolute path in the guest")
	case strings.IndexByte(p, 0) >= 0:
		return invalid(field, "%q contains a NUL byte", p)
	case !path.IsAbs(p):
		return invalid(field, "%q is not absolute; guest paths start with /", p)
	}
	return nil
}

// logStreamFailure logs a streaming call that failed; unary ones are
// logged by logInterceptor. A client that cancels (^C on an exec or a
// follow) is not a failure.
func (s *Server) logStreamFailure(ctx context.Context, op string, err error) {
	if err == nil || connect.CodeOf(err) == connect.CodeCanceled {
		return
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "rpc failed",
		slog.String("op", op),
		slog.String("code", connect.CodeOf(err).String()),
		slog.String("error", err.Error()))
}

func (s *Server) Exec(ctx context.Context, stream *connect.BidiStream[hyperv1.ExecRequest, hyperv1.ExecResponse]) (err error) {
	defer func() { s.logStreamFailure(ctx, "Exec", err) }()
	first, err := stream.Receive()
	if errors.Is(err, io.EOF) {
		return invalid("start", "the stream ended before the start message")
	}
	if err != nil {
		return apiError(err)
	}
	start := first.GetStart()
	if start == nil {
		return invalid("start", "the first message must be start")
	}
	up, err := agentExecStart(start)
	if err != nil {
		return err
	}
	ac, err := s.guest(ctx, "Exec", "start.vm_id", start.GetVmId())
	if err != nil {
		return err
	}

	// Ending this call, for whatever reason, cancels the guest's: the
	// agent then kills the process's group.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	call := &execRelay{guest: ac.RPC().Exec(ctx)}
	defer call.guest.CloseResponse()
	if !call.send(&agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Start{Start: up}}) {
		// The guest refused the call; receive says why.
		call.closeRequest()
	} else {
		// Not waited for: Receive on the client's stream returns only once
		// the client sends or this handler has returned.
		go call.relayInput(stream, cancel, s.log)
	}
	err = call.relayOutput(stream)
	// No send to the guest may follow CloseResponse.
	call.closeRequest()
	if err != nil {
		// The client went away or its deadline passed: say that, not how
		// the guest's call broke off.
		if cerr := ctx.Err(); cerr != nil {
			return apiError(cerr)
		}
		return apiError(err)
	}
	return nil
}

// agentExecStart checks a public ExecStart and translates it to the agent's.
func agentExecStart(start *hyperv1.ExecStart) (*agentv1.ExecStart, error) {
	if len(start.GetArgv()) == 0 {
		return nil, invalid("start.argv", "empty; want the command and its arguments")
	}
	if start.GetArgv()[0] == "" {
		return nil, invalid("start.argv", "argv[0] is empty")
	}
	for k := range start.GetEnv() {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, invalid("start.env", "key %q: want a non-empty name without = or NUL", k)
		}
	}
	up := &agentv1.ExecStart{
		Argv: start.GetArgv(),
		Env:  start.GetEnv(),
		Cwd:  start.GetCwd(),
		User: start.GetUser(),
		Tty:  start.GetTty(),
	}
	if cwd := start.GetCwd(); cwd != "" {
		if err := guestPath("start.cwd", cwd); err != nil {
			return nil, err
		}
	}
	if sz := start.GetSize(); sz != nil {
		if !start.GetTty() {
			return nil, invalid("start.size", "only meaningful with tty")
		}
		if err := checkTerminalSize("start.size", sz); err != nil {
			return nil, err
		}
		up.Size = &agentv1.TerminalSize{Rows: sz.GetRows(), Cols: sz.GetCols()}
	}
	if t := start.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil {
			return nil, invalid("start.timeout", "%v", err)
		}
		if t.AsDuration() <= 0 {
			return nil, invalid("start.timeout", "%v is not positive", t.AsDuration())
		}
		up.Timeout = t
	}
	return up, nil
}

func checkTerminalSize(field string, sz *hyperv1.TerminalSize) error {
	if sz.GetRows() == 0 || sz.GetCols() == 0 || sz.GetRows() > 0xffff || sz.GetCols() > 0xffff {
		return invalid(field, "%dx%d is not a terminal size (rows and cols between 1 and 65535)", sz.GetRows(), sz.GetCols())
	}
	return nil
}

// execRelay is one Exec call relayed to the guest.
type execRelay struct {
	guest *connect.BidiStreamForClient[agentv1.ExecRequest, agentv1.ExecResponse]

	mu     sync.Mutex // serialises Send and CloseRequest on guest
	closed bool
}

// send sends m to the guest unless the request side is closed; false
// means it was not sent (the guest's answer then says why).
func (x *execRelay) send(m *agentv1.ExecRequest) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return false
	}
	if err := x.guest.Send(m); err != nil {
		x.closed = true
		return false
	}
	return true
}

func (x *execRelay) closeRequest() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.closed {
		x.closed = true
		x.guest.CloseRequest()
	}
}

// relayInput forwards the client's stdin, resizes and signals to the
// guest. The client closing its side closes the guest's (and so the
// process's stdin); the client going away cancels the call.
func (x *execRelay) relayInput(client *connect.BidiStream[hyperv1.ExecRequest, hyperv1.ExecResponse], cancel context.CancelFunc, log *slog.Logger) {
	for {
		req, err := client.Receive()
		if errors.Is(err, io.EOF) {
			x.closeRequest()
			return
		}
		if err != nil {
			cancel()
			return
		}
		var m *agentv1.ExecRequest
		switch r := req.GetMsg().(type) {
		case *hyperv1.ExecRequest_Stdin:
			m = &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Stdin{Stdin: r.Stdin}}
		case *hyperv1.ExecRequest_CloseStdin:
			m = &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_CloseStdin{CloseStdin: r.CloseStdin}}
		case *hyperv1.ExecRequest_Resize:
			m = &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Resize{Resize: &agentv1.TerminalSize{
				Rows: r.Resize.GetRows(), Cols: r.Resize.GetCols(),
			}}}
		case *hyperv1.ExecRequest_Signal:
			m = &agentv1.ExecRequest{Msg: &agentv1.ExecRequest_Signal{Signal: r.Signal}}
		case *hyperv1.ExecRequest_Start:
			log.Warn("exec: ignored a second start message")
			continue
		default:
			continue
		}
		if !x.send(m) {
			return
		}
	}
}

// relayOutput forwards the guest's output to the client until the exit
// status, which it forwards last.
func (x *execRelay) relayOutput(client *connect.BidiStream[hyperv1.ExecRequest, hyperv1.ExecResponse]) error {
	for {
		res, err := x.guest.Receive()
		if errors.Is(err, io.EOF) {
			return errors.New("exec: the guest ended the call without an exit status")
		}
		if err != nil {
			return err
		}
		var m *hyperv1.ExecResponse
		switch r := res.GetMsg().(type) {
		case *agentv1.ExecResponse_Stdout:
			m = &hyperv1.ExecResponse{Msg: &hyperv1.ExecResponse_Stdout{Stdout: r.Stdout}}
		case *agentv1.ExecResponse_Stderr:
			m = &hyperv1.ExecResponse{Msg: &hyperv1.ExecResponse_Stderr{Stderr: r.Stderr}}
		case *agentv1.ExecResponse_Exit:
			return client.Send(&hyperv1.ExecResponse{Msg: &hyperv1.ExecResponse_Exit{Exit: &hyperv1.ExecExit{
				Code: r.Exit.GetCode(), Signal: r.Exit.GetSignal(), TimedOut: r.Exit.GetTimedOut(),
			}}})
		default:
			// ExecStarted has no public counterpart.
			continue
		}
		if err := client.Send(m); err != nil {
			return err
		}
	}
}

func (s *Server) ReadFile(ctx context.Context, req *connect.Request[hyperv1.ReadFileRequest], stream *connect.ServerStream[hyperv1.ReadFileResponse]) (err error) {
	defer func() { s.logStreamFailure(ctx, "ReadFile", err) }()
	if err := guestPath("path", req.Msg.GetPath()); err != nil {
		return err
	}
	ac, err := s.guest(ctx, "ReadFile", "vm_id", req.Msg.GetVmId())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	up, err := ac.RPC().ReadFile(ctx, connect.NewRequest(&agentv1.ReadFileRequest{Path: req.Msg.GetPath()}))
	if err != nil {
		return apiError(err)
	}
	defer up.Close()
	for up.Receive() {
		var m *hyperv1.ReadFileResponse
		switch r := up.Msg().GetMsg().(type) {
		case *agentv1.ReadFileResponse_Info:
			m = &hyperv1.ReadFileResponse{Msg: &hyperv1.ReadFileResponse_Info{Info: fileInfoToProto(r.Info)}}
		case *agentv1.ReadFileResponse_Data:
			m = &hyperv1.ReadFileResponse{Msg: &hyperv1.ReadFileResponse_Data{Data: r.Data}}
		default:
			continue
		}
		if err := stream.Send(m); err != nil {
			return apiError(err)
		}
	}
	return apiError(up.Err())
}

func (s *Server) WriteFile(ctx context.Context, stream *connect.ClientStream[hyperv1.WriteFileRequest]) (_ *connect.Response[hyperv1.WriteFileResponse], err error) {
	defer func() { s.logStreamFailure(ctx, "WriteFile", err) }()
	if !stream.Receive() {
		if err := stream.Err(); err != nil {
			return nil, apiError(err)
		}
		return nil, invalid("header", "the stream ended before the header message")
	}
	hdr := stream.Msg().GetHeader()
	if hdr == nil {
		return nil, invalid("header", "the first message must be the header")
	}
	if err := guestPath("header.path", hdr.GetPath()); err != nil {
		return nil, err
	}
	if hdr.GetMode()&^0o7777 != 0 {
		return nil, invalid("header.mode", "%#o: only permission, setuid, setgid and sticky bits are allowed", hdr.GetMode())
	}
	ac, err := s.guest(ctx, "WriteFile", "header.vm_id", hdr.GetVmId())
	if err != nil {
		return nil, err
	}

	// Cancelling the guest's call, rather than closing it, makes the guest
	// drop the temporary file: a file cut short never appears.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	up := ac.RPC().WriteFile(ctx)
	sent := up.Send(&agentv1.WriteFileRequest{Msg: &agentv1.WriteFileRequest_Header{Header: &agentv1.WriteFileHeader{
		Path: hdr.GetPath(), Mode: hdr.GetMode(), Uid: hdr.Uid, Gid: hdr.Gid, MakeParents: hdr.GetMakeParents(),
	}}})
	for sent == nil && stream.Receive() {
		switch r := stream.Msg().GetMsg().(type) {
		case *hyperv1.WriteFileRequest_Data:
			sent = up.Send(&agentv1.WriteFileRequest{Msg: &agentv1.WriteFileRequest_Data{Data: r.Data}})
		case *hyperv1.WriteFileRequest_Header:
			cancel()
			up.CloseAndReceive()
			return nil, invalid("header", "sent twice; only the first message is a header")
		}
	}
	if err := stream.Err(); err != nil {
		cancel()
		up.CloseAndReceive()
		return nil, apiError(err)
	}
	// A failed Send means the guest ended the call; its answer says why.
	res, err := up.CloseAndReceive()
	if err != nil {
		return nil, apiError(err)
	}
	if sent != nil {
		return nil, apiError(fmt.Errorf("write %s: %w", hdr.GetPath(), sent))
	}
	return connect.NewResponse(&hyperv1.WriteFileResponse{Info: fileInfoToProto(res.Msg.GetInfo())}), nil
}

func (s *Server) ListDir(ctx context.Context, req *connect.Request[hyperv1.ListDirRequest]) (*connect.Response[hyperv1.ListDirResponse], error) {
	if err := guestPath("path", req.Msg.GetPath()); err != nil {
		return nil, err
	}
	ac, err := s.guest(ctx, "ListDir", "vm_id", req.Msg.GetVmId())
	if err != nil {
		return nil, err
	}
	res, err := ac.RPC().ListDir(ctx, connect.NewRequest(&agentv1.ListDirRequest{Path: req.Msg.GetPath()}))
	if err != nil {
		return nil, apiError(err)
	}
	out := &hyperv1.ListDirResponse{Entries: make([]*hyperv1.FileInfo, 0, len(res.Msg.GetEntries()))}
	for _, e := range res.Msg.GetEntries() {
		out.Entries = append(out.Entries, fileInfoToProto(e))
	}
	return connect.NewResponse(out), nil
}

func (s *Server) Stat(ctx context.Context, req *connect.Request[hyperv1.StatRequest]) (*connect.Response[hyperv1.StatResponse], error) {
	if err := guestPath("path", req.Msg.GetPath()); err != nil {
		return nil, err
	}
	ac, err := s.guest(ctx, "Stat", "vm_id", req.Msg.GetVmId())
	if err != nil {
		return nil, err
	}
	res, err := ac.RPC().Stat(ctx, connect.NewRequest(&agentv1.StatRequest{Path: req.Msg.GetPath()}))
	if err != nil {
		return nil, apiError(err)
	}
	return connect.NewResponse(&hyperv1.StatResponse{Info: fileInfoToProto(res.Msg.GetInfo())}), nil
}

func fileInfoToProto(fi *agentv1.FileInfo) *hyperv1.FileInfo {
	if fi == nil {
		return nil
	}
	return &hyperv1.FileInfo{
		Path:       fi.GetPath(),
		Name:       fi.GetName(),
		Size:       fi.GetSize(),
		Mode:       fi.GetMode(),
		Uid:        fi.GetUid(),
		Gid:        fi.GetGid(),
		Mtime:      fi.GetMtime(),
		IsDir:      fi.GetIsDir(),
		LinkTarget: fi.GetLinkTarget(),
	}
}
