package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// qmpTimeout bounds one QMP exchange when the caller's context has no
// earlier deadline: QEMU answers in milliseconds unless it is wedged.
const qmpTimeout = 5 * time.Second

// qmpError is an error QEMU answered a command with.
type qmpError struct {
	Class, Desc string
}

func (e *qmpError) Error() string { return e.Class + ": " + e.Desc }

// qmp runs one command on the QEMU Machine Protocol socket at sock and
// returns its "return" value. Each call uses its own connection: QMP
// negotiation costs a round trip, and holding no connection means a daemon
// that died mid-call leaves nothing QEMU is stuck on.
func qmp(ctx context.Context, sock, command string, args any) (json.RawMessage, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	defer conn.Close()
	deadline := time.Now().Add(qmpTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	r := bufio.NewReader(conn)
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	line, err := r.ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("qmp %s: read greeting: %w", command, err)
	}
	if err := json.Unmarshal(line, &greeting); err != nil || greeting.QMP == nil {
		return nil, fmt.Errorf("qmp %s: not a QMP greeting: %q", command, line)
	}
	if _, err := qmpExchange(conn, r, "qmp_capabilities", nil); err != nil {
		return nil, fmt.Errorf("qmp %s: negotiate: %w", command, err)
	}
	ret, err := qmpExchange(conn, r, command, args)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	return ret, nil
}

// QMP runs one command on the QMP socket at sock and returns its "return"
// value, for tools that inspect a QEMU the driver started.
func QMP(ctx context.Context, sock, command string, args any) (json.RawMessage, error) {
	return qmp(ctx, sock, command, args)
}

// qmpExchange sends one command and reads lines until its reply, skipping
// the asynchronous events QEMU interleaves.
func qmpExchange(conn net.Conn, r *bufio.Reader, command string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *qmpError       `json:"error"`
			Event  string          `json:"event"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("bad reply %q: %w", line, err)
		}
		switch {
		case resp.Error != nil:
			return nil, resp.Error
		case resp.Return != nil:
			return resp.Return, nil
		}
	}
}

// UnmarshalJSON reads QMP's {"class": ..., "desc": ...}.
func (e *qmpError) UnmarshalJSON(b []byte) error {
	var v struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	e.Class, e.Desc = v.Class, v.Desc
	return nil
}
