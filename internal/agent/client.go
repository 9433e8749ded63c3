package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/yamux"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/hypervm/hyper/api/agent/v1"
	"github.com/hypervm/hyper/api/agent/v1/agentv1connect"
)

// An attempt waits helloTimeout for the guest's answer to its HELLO, twice
// as long on each later attempt, up to maxHelloTimeout. A guest that is
// still booting or busy costs another attempt; one that missed the last
// host leaving answers the next HELLO after the host hangs up on it.
const (
	helloTimeout    = time.Second
	maxHelloTimeout = 8 * time.Second
)

// Client calls one guest's agent. It is safe for concurrent use.
type Client struct {
	session   *yamux.Session
	transport *http.Transport
	rpc       agentv1connect.AgentClient
}

// Dial connects to a guest's agent. While the connection is refused, the
// socket is absent or the agent does not answer yet, it retries every
// 100 ms until ctx is done; the error then says what the last attempt saw.
func Dial(ctx context.Context, dial DialFunc) (*Client, error) {
	var last error // the last attempt that failed for a reason worth retrying
	wait := helloTimeout
	for {
		c, err := dialOnce(ctx, dial, wait)
		if err == nil {
			return c, nil
		}
		if cerr := contextDone(ctx); cerr != nil {
			// An attempt cut short by the deadline says less than the
			// one before it.
			if last == nil {
				last = err
			}
			return nil, fmt.Errorf("dial agent: %w (last attempt: %v)", cerr, last)
		}
		if !errors.Is(err, ErrNotReady) {
			return nil, fmt.Errorf("dial agent: %w", err)
		}
		last = err
		wait = min(2*wait, maxHelloTimeout)
		t := time.NewTimer(retryInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("dial agent: %w (last attempt: %v)", ctx.Err(), last)
		case <-t.C:
		}
	}
}

// contextDone returns ctx's error, or DeadlineExceeded once its deadline
// has passed: a dial cut short by the deadline can fail a moment before ctx
// reports it.
func contextDone(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

func dialOnce(ctx context.Context, dial DialFunc, wait time.Duration) (*Client, error) {
	conn, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	synced, err := handshake(ctx, conn, time.Now().Add(wait))
	if err != nil {
		conn.Close()
		return nil, err
	}
	session, err := yamux.Client(synced, NewYamuxConfig())
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start yamux session: %w", err)
	}
	return newClient(session), nil
}

func newClient(session *yamux.Session) *Client {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	transport := &http.Transport{
		Protocols: &protocols,
		// Every HTTP/2 connection is a yamux stream; the transport opens
		// another when one carries as many calls as the guest allows.
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			return session.Open()
		},
	}
	return &Client{
		session:   session,
		transport: transport,
		// No gzip: the link is local, and compressing every reply cost the
		// guest CPU on each call and, under emulation, tens of
		// milliseconds of first-run code before its first answer.
		rpc: agentv1connect.NewAgentClient(&http.Client{Transport: abortOnCancel{transport}},
			"http://hyper-agent", connect.WithGRPC(), connect.WithAcceptCompression("gzip", nil, nil)),
	}
}

// abortOnCancel makes cancelling a call's context end it even while the
// HTTP/2 transport is blocked reading the request body (a stream whose
// client has nothing more to send): the transport watches the context only
// until the response headers arrive and again once the body is fully sent,
// so closing the response body, which resets the stream, does it instead.
type abortOnCancel struct {
	next http.RoundTripper
}

func (a abortOnCancel) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := a.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body := res.Body
	stop := context.AfterFunc(req.Context(), func() { body.Close() })
	res.Body = &stopOnClose{ReadCloser: body, stop: stop}
	return res, nil
}

type stopOnClose struct {
	io.ReadCloser
	stop func() bool
}

func (b *stopOnClose) Close() error {
	b.stop()
	return b.ReadCloser.Close()
}

// RPC returns the raw generated client, for callers (the node's API
// server) that relay messages rather than streams.
func (c *Client) RPC() agentv1connect.AgentClient { return c.rpc }

// Done is closed when the connection to the guest is gone.
func (c *Client) Done() <-chan struct{} { return c.session.CloseChan() }

// Close ends every call in flight and closes the connection.
func (c *Client) Close() error {
	c.transport.CloseIdleConnections()
	return c.session.Close()
}

// Health reports the guest's state.
func (c *Client) Health(ctx context.Context) (*agentv1.HealthResponse, error) {
	res, err := c.rpc.Health(ctx, connect.NewRequest(&agentv1.HealthRequest{}))
	if err != nil {
		return nil, fmt.Errorf("agent health: %w", err)
	}
	return res.Msg, nil
}

// Stat describes path in the guest without following a final symlink.
func (c *Client) Stat(ctx context.Context, path string) (*agentv1.FileInfo, error) {
	res, err := c.rpc.Stat(ctx, connect.NewRequest(&agentv1.StatRequest{Path: path}))
	if err != nil {
		return nil, fmt.Errorf("agent stat %s: %w", path, err)
	}
	return res.Msg.GetInfo(), nil
}

// ListDir lists a directory in the guest, sorted by name.
func (c *Client) ListDir(ctx context.Context, path string) ([]*agentv1.FileInfo, error) {
	res, err := c.rpc.ListDir(ctx, connect.NewRequest(&agentv1.ListDirRequest{Path: path}))
	if err != nil {
		return nil, fmt.Errorf("agent list %s: %w", path, err)
	}
	return res.Msg.GetEntries(), nil
}

// MakeDir creates a directory in the guest.
func (c *Client) MakeDir(ctx context.Context, req *agentv1.MakeDirRequest) (*agentv1.FileInfo, error) {
	res, err := c.rpc.MakeDir(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, fmt.Errorf("agent mkdir %s: %w", req.GetPath(), err)
	}
	return res.Msg.GetInfo(), nil
}

// Remove removes path in the guest, with everything below it if recursive.
func (c *Client) Remove(ctx context.Context, path string, recursive bool) error {
	_, err := c.rpc.Remove(ctx, connect.NewRequest(&agentv1.RemoveRequest{Path: path, Recursive: recursive}))
	if err != nil {
		return fmt.Errorf("agent remove %s: %w", path, err)
	}
	return nil
}

// Sync flushes the guest's filesystems to their disks.
func (c *Client) Sync(ctx context.Context) error {
	if _, err := c.rpc.Sync(ctx, connect.NewRequest(&agentv1.SyncRequest{})); err != nil {
		return fmt.Errorf("agent sync: %w", err)
	}
	return nil
}

// Freeze freezes the guest's writable filesystem; the guest thaws it by
// itself after timeout (0: the agent's default) unless Thaw comes first.
func (c *Client) Freeze(ctx context.Context, timeout time.Duration) error {
	req := &agentv1.FreezeRequest{}
	if timeout > 0 {
		req.Timeout = durationpb.New(timeout)
	}
	if _, err := c.rpc.Freeze(ctx, connect.NewRequest(req)); err != nil {
		return fmt.Errorf("agent freeze: %w", err)
	}
	return nil
}

// Thaw thaws the guest's writable filesystem and says whether it was
// frozen.
func (c *Client) Thaw(ctx context.Context) (bool, error) {
	res, err := c.rpc.Thaw(ctx, connect.NewRequest(&agentv1.ThawRequest{}))
	if err != nil {
		return false, fmt.Errorf("agent thaw: %w", err)
	}
	return res.Msg.GetWasFrozen(), nil
}

// Shutdown asks the guest to stop its processes (SIGTERM, then SIGKILL
// after grace; 0: the agent's default), sync and power off, or reboot.
func (c *Client) Shutdown(ctx context.Context, reboot bool, grace time.Duration) error {
	req := &agentv1.ShutdownRequest{Reboot: reboot}
	if grace > 0 {
		req.Grace = durationpb.New(grace)
	}
	if _, err := c.rpc.Shutdown(ctx, connect.NewRequest(req)); err != nil {
		return fmt.Errorf("agent shutdown: %w", err)
	}
	return nil
}

// ReadFile copies a regular file of the guest to w and returns its info.
func (c *Client) ReadFile(ctx context.Context, path string, w io.Writer) (*agentv1.FileInfo, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.rpc.ReadFile(ctx, connect.NewRequest(&agentv1.ReadFileRequest{Path: path}))
	if err != nil {
		return nil, fmt.Errorf("agent read %s: %w", path, err)
	}
	defer stream.Close()
	var info *agentv1.FileInfo
	for stream.Receive() {
		switch m := stream.Msg().GetMsg().(type) {
		case *agentv1.ReadFileResponse_Info:
			info = m.Info
		case *agentv1.ReadFileResponse_Data:
			if info == nil {
				return nil, fmt.Errorf("agent read %s: data before file info", path)
			}
			if _, err := w.Write(m.Data); err != nil {
				return nil, fmt.Errorf("agent read %s: write: %w", path, err)
			}
		}
	}
	if err := stream.Err(); err != nil {
		return nil, fmt.Errorf("agent read %s: %w", path, err)
	}
	if info == nil {
		return nil, fmt.Errorf("agent read %s: no file info", path)
	}
	return info, nil
}

// writeChunk is the size of the data messages WriteFile sends.
const writeChunk = 128 << 10

// WriteFile streams r into the guest file the header names. The file
// appears, complete, only when r is exhausted and the guest has synced it.
func (c *Client) WriteFile(ctx context.Context, hdr *agentv1.WriteFileHeader, r io.Reader) (*agentv1.FileInfo, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream := c.rpc.WriteFile(ctx)
	sendErr := stream.Send(&agentv1.WriteFileRequest{Msg: &agentv1.WriteFileRequest_Header{Header: hdr}})
	buf := make([]byte, writeChunk)
	for sendErr == nil {
		n, err := r.Read(buf)
		if n > 0 {
			sendErr = stream.Send(&agentv1.WriteFileRequest{Msg: &agentv1.WriteFileRequest_Data{Data: buf[:n]}})
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			// Cancelling makes the guest drop its temporary file.
			cancel()
			stream.CloseAndReceive()
			return nil, fmt.Errorf("agent write %s: read source: %w", hdr.GetPath(), err)
		}
	}
	// A Send that failed with io.EOF means the guest ended the call; its
	// answer says why.
	res, err := stream.CloseAndReceive()
	if err != nil {
		return nil, fmt.Errorf("agent write %s: %w", hdr.GetPath(), err)
	}
	if sendErr != nil {
		return nil, fmt.Errorf("agent write %s: %w", hdr.GetPath(), sendErr)
	}
	return res.Msg.GetInfo(), nil
}
