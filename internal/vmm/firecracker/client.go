package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Client is a small client for one Firecracker's REST API, HTTP/1.1 over
// its unix socket. Firecracker serves one request at a time; callers that
// share a Client are serialised by the server, not by the Client.
type Client struct {
	sock string
	hc   *http.Client
}

// defaultTimeout bounds a call whose context has no deadline. Firecracker
// answers configuration calls in milliseconds; InstanceStart loads the
// kernel and takes longest.
const defaultTimeout = 30 * time.Second

// maxResponse bounds what the client reads of a response body.
const maxResponse = 1 << 20

// NewClient returns a client for the API socket at sock.
func NewClient(sock string) *Client {
	return &Client{
		sock: sock,
		hc: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
			// A socket belongs to one Firecracker process; a fresh
			// connection per call never talks to a previous incarnation.
			DisableKeepAlives: true,
		}},
	}
}

// Socket is the API socket the client talks to.
func (c *Client) Socket() string { return c.sock }

// APIError is a non-2xx answer from Firecracker.
type APIError struct {
	Method, Path string
	StatusCode   int
	// FaultMessage is Firecracker's explanation (its fault_message field);
	// Body holds the raw body when it was not the documented error object.
	FaultMessage string
	Body         string
}

func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = e.Body
	}
	if msg == "" {
		msg = "(no fault message)"
	}
	return fmt.Sprintf("firecracker %s %s: %d %s: %s", e.Method, e.Path, e.StatusCode, http.StatusText(e.StatusCode), msg)
}

// IsAPIError reports whether err carries an answer from Firecracker (as
// opposed to a transport failure), and returns it.
func IsAPIError(err error) (*APIError, bool) {
	var e *APIError
	ok := errors.As(err, &e)
	return e, ok
}

// Describe is GET /.
func (c *Client) Describe(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// PutMachineConfig is PUT /machine-config.
func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfig) error {
	return c.do(ctx, http.MethodPut, "/machine-config", m, nil)
}

// PutBootSource is PUT /boot-source.
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", b, nil)
}

// PutDrive is PUT /drives/{drive_id}.
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.do(ctx, http.MethodPut, "/drives/"+d.DriveID, d, nil)
}

// PutVsock is PUT /vsock.
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

// Action is PUT /actions with actionType (ActionInstanceStart, ...).
func (c *Client) Action(ctx context.Context, actionType string) error {
	return c.do(ctx, http.MethodPut, "/actions", InstanceActionInfo{ActionType: actionType}, nil)
}

// PatchVM is PATCH /vm with state VMPaused or VMResumed.
func (c *Client) PatchVM(ctx context.Context, state string) error {
	return c.do(ctx, http.MethodPatch, "/vm", VMState{State: state}, nil)
}

// do sends one request. in, when not nil, is the JSON body; out, when not
// nil, receives a 200's JSON body.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultTimeout)
		defer cancel()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("firecracker %s %s: encode body: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s via %s: %w", method, path, c.sock, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &APIError{Method: method, Path: path, StatusCode: resp.StatusCode}
		var fault struct {
			FaultMessage *string `json:"fault_message"`
		}
		if json.Unmarshal(raw, &fault) == nil && fault.FaultMessage != nil {
			e.FaultMessage = *fault.FaultMessage
		} else {
			e.Body = strings.TrimSpace(string(raw))
		}
		return e
	}
	if out == nil {
		return nil
	}
	if resp.StatusCode == http.StatusNoContent || len(raw) == 0 {
		return fmt.Errorf("firecracker %s %s: %d with no body, want a JSON object", method, path, resp.StatusCode)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("firecracker %s %s: decode response %q: %w", method, path, raw, err)
	}
	return nil
}
