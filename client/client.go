// Package client is the Go SDK for Hyper's API. It speaks gRPC (over
// HTTP/2) to any node, on a unix socket or TCP, so every RPC, streaming
// included, works the same everywhere.
//
//	c, err := client.New("unix:///srv/hyper/hyperd.sock")
//	vms, err := c.ListVms(ctx, connect.NewRequest(&hyperv1.ListVmsRequest{}))
package client

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	"github.com/hypervm/hyper/api/hyper/v1/hyperv1connect"
)

// Client is a Hyper API client.
type Client struct {
	hyperv1connect.HyperClient
	addr string
}

type options struct {
	token string
	tls   *tls.Config
}

// Option configures a Client.
type Option func(*options)

// WithToken sends a bearer token with every request (TCP listeners require
// one unless configured insecure).
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithTLS sets the TLS configuration for https:// addresses.
func WithTLS(c *tls.Config) Option { return func(o *options) { o.tls = c } }

// New returns a client for addr: "unix:///path/to/hyperd.sock", an
// absolute socket path, "host:port" (cleartext HTTP/2) or
// "https://host:port".
func New(addr string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	transport := &http.Transport{}
	var protos http.Protocols
	var baseURL string
	switch {
	case strings.HasPrefix(addr, "unix://") || strings.HasPrefix(addr, "/"):
		path := strings.TrimPrefix(addr, "unix://")
		if !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("address %q: a unix socket path must be absolute (unix:///path)", addr)
		}
		var d net.Dialer
		transport.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", path)
		}
		protos.SetUnencryptedHTTP2(true)
		baseURL = "http://hyperd"
	case strings.HasPrefix(addr, "https://"):
		transport.TLSClientConfig = o.tls
		transport.ForceAttemptHTTP2 = true
		protos.SetHTTP2(true)
		baseURL = strings.TrimSuffix(addr, "/")
	default:
		hostport := strings.TrimPrefix(addr, "http://")
		if _, _, err := net.SplitHostPort(hostport); err != nil {
			return nil, fmt.Errorf("address %q: want unix:///path, host:port or https://host:port", addr)
		}
		protos.SetUnencryptedHTTP2(true)
		baseURL = "http://" + hostport
	}
	transport.Protocols = &protos
	var rt http.RoundTripper = transport
	if o.token != "" {
		rt = bearer{token: o.token, next: transport}
	}
	hc := &http.Client{Transport: rt}
	return &Client{
		HyperClient: hyperv1connect.NewHyperClient(hc, baseURL, connect.WithGRPC()),
		addr:        addr,
	}, nil
}

// Addr is the address the client talks to.
func (c *Client) Addr() string { return c.addr }

type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}
