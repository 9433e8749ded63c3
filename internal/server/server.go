// Package server implements Hyper's public API (api/hyper/v1) on top of a
// node's store and subsystems. Every RPC validates its request, then calls
// the subsystem that owns the work; errors are mapped to API codes in one
// place (errors.go).
package server

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"

	"github.com/hypervm/hyper/api/hyper/v1/hyperv1connect"
	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/node"
	"github.com/hypervm/hyper/internal/store"
)

// Store is what the API reads and writes directly.
type Store interface {
	GetNode(ctx context.Context, name string) (store.Node, error)
	ListNodes(ctx context.Context) ([]store.Node, error)
	SetCordoned(ctx context.Context, name string, cordoned bool) error

	GetImage(ctx context.Context, id string) (store.Image, error)
	ListImages(ctx context.Context) ([]store.Image, error)

	GetVM(ctx context.Context, id string) (store.VM, error)
	ListVMs(ctx context.Context, f store.VMFilter) ([]store.VM, string, error)

	ListLayers(ctx context.Context, f store.LayerFilter) ([]store.Layer, error)
}

// VMs runs the VMs of this node.
type VMs interface {
	// Create boots a VM and returns it Running.
	Create(ctx context.Context, req node.CreateRequest) (store.VM, error)
	// Stop stops a VM (idempotent) and returns its final row.
	Stop(ctx context.Context, id string, grace time.Duration) (store.VM, error)
	// Agent returns a client for a Running VM's guest agent; it fails with
	// store.ErrNotFound or node.ErrNotRunning. The client is shared: do not
	// close it.
	Agent(ctx context.Context, id string) (*agent.Client, error)
	// ConsoleLog returns the path of the VM's console log, which exists
	// for running and stopped VMs alike (store.ErrNotFound otherwise).
	ConsoleLog(ctx context.Context, id string) (string, error)
	// Fork boots count children of a Running VM on copy-on-write clones
	// of its disk, all or nothing.
	Fork(ctx context.Context, parentID string, count int, labels map[string]string) ([]store.VM, error)
	// Snapshot freezes a Running VM's disk state into a new layer.
	Snapshot(ctx context.Context, id, label string) (store.Layer, error)
	// DeleteLayer removes a layer nothing uses (store.ErrInUse otherwise).
	DeleteLayer(ctx context.Context, id string) error
}

// Options configure a Server.
type Options struct {
	Store    Store
	VMs      VMs    // nil: this node runs no VMs yet
	Images   Images // nil: image loading is not available on this node
	Node     string // this node's name
	LeaseTTL time.Duration
	Logger   *slog.Logger
	Now      func() time.Time
}

// Server implements hyperv1connect.HyperHandler.
type Server struct {
	hyperv1connect.UnimplementedHyperHandler
	store    Store
	vms      VMs
	images   Images
	node     string
	leaseTTL time.Duration
	log      *slog.Logger
	now      func() time.Time
}

var _ hyperv1connect.HyperHandler = (*Server)(nil)

// New returns a Server.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Server{store: o.Store, vms: o.VMs, images: o.Images, node: o.Node, leaseTTL: o.LeaseTTL, log: o.Logger, now: o.Now}
}

// Handler returns the HTTP handler serving the API (gRPC, gRPC-Web and
// Connect/JSON), gRPC health checking and gRPC reflection.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	path, h := hyperv1connect.NewHyperHandler(s, connect.WithInterceptors(logInterceptor(s.log)))
	mux.Handle(path, h)
	mux.Handle(grpchealth.NewHandler(grpchealth.NewStaticChecker(hyperv1connect.HyperName)))
	reflector := grpcreflect.NewStaticReflector(hyperv1connect.HyperName)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	return mux
}

// logInterceptor logs every failed unary call with its procedure and code;
// streaming handlers log their own failures.
func logInterceptor(log *slog.Logger) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			start := time.Now()
			resp, err := next(ctx, req)
			if err != nil {
				log.LogAttrs(ctx, slog.LevelInfo, "rpc failed",
					slog.String("op", req.Spec().Procedure),
					slog.String("code", connect.CodeOf(err).String()),
					slog.String("error", err.Error()),
					slog.Duration("took", time.Since(start)))
			}
			return resp, err
		}
	}
}

func unimplemented(what, issue string) error {
	return connect.NewError(connect.CodeUnimplemented,
		errorf("%s is not implemented on this node yet (%s)", what, issue))
}
