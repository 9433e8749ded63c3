// Package agent is the node's side of the protocol it speaks with the agent
// running as PID 1 inside each guest (api/agent/v1): dialing the guest's
// byte stream, multiplexing it with yamux and calling the agent's RPCs over
// gRPC on HTTP/2 cleartext.
//
// The guest side lives in package guestd; both take their yamux settings
// from NewYamuxConfig so the two ends always agree.
package agent

import (
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// NewYamuxConfig returns the yamux settings both ends of the agent channel
// use. The host is always the yamux client (it opens streams: one per HTTP/2
// connection its transport makes) and the guest the server (it accepts
// them), so stream ids never collide and the host can open as many
// concurrent streams as it likes.
func NewYamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	// A guest that stopped answering pings (paused, dead, wedged) must not
	// hold a host's calls forever, and a host that vanished must not keep a
	// guest session alive.
	c.EnableKeepAlive = true
	c.KeepAliveInterval = 15 * time.Second
	// A larger window lets one stream (a file copy) use the whole channel.
	c.MaxStreamWindowSize = 1 << 20
	c.LogOutput = io.Discard
	return c
}
