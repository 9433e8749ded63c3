// Package guestd is the guest side of the agent protocol (api/agent/v1):
// the service hyper-agent runs as PID 1 inside every guest. It runs the
// image's main process and the host's execs, serves files, freezes the
// writable disk for forks and reports health.
//
// Everything that only makes sense as a guest's PID 1 (mounts, power-off,
// killing every process) reaches it through Config hooks, so the whole
// service runs, and is tested, as an ordinary process on the host.
package guestd

import (
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/hypervm/hyper/api/agent/v1/agentv1connect"
	"github.com/hypervm/hyper/internal/guestcfg"
)

// Config is what the service needs to know about its guest.
type Config struct {
	// VMID is reported by Health.
	VMID string
	// Image supplies the main process's command and the defaults (env,
	// working directory, user) of every exec.
	Image guestcfg.Image
	// Root is the directory whose etc/passwd and etc/group resolve user
	// names; "" means "/".
	Root string
	// FreezePath is the mount point Freeze and Thaw act on; ""
	// means guestcfg.MountWritable.
	FreezePath string
	// Reaper waits for every process the service starts. Required.
	Reaper *Reaper
	// MainOutput receives the main process's stdout and stderr (the
	// console); nil discards them.
	MainOutput *os.File
	// PowerOff is called once Shutdown has been answered. It must stop
	// every process (SIGTERM, grace, SIGKILL), sync, and power off or
	// reboot; as PID 1 it does not return. Nil makes Shutdown
	// UNIMPLEMENTED.
	PowerOff func(reboot bool, grace time.Duration)
	// Logger receives the service's own events; nil discards them.
	Logger *slog.Logger
}

// Server implements agentv1connect.AgentHandler.
type Server struct {
	cfg Config
	log *slog.Logger

	freezer *freezer
	main    mainProcess

	// bg tracks the goroutines that outlive a call (main process waiter,
	// shutdown), so Close can wait for them.
	bg        sync.WaitGroup
	closing   chan struct{}
	closeOnce sync.Once
	shutdown  sync.Once
}

var _ agentv1connect.AgentHandler = (*Server)(nil)

// New returns a service for cfg.
func New(cfg Config) *Server {
	if cfg.Root == "" {
		cfg.Root = "/"
	}
	if cfg.FreezePath == "" {
		cfg.FreezePath = guestcfg.MountWritable
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{
		cfg:     cfg,
		log:     log,
		freezer: newFreezer(cfg.FreezePath, log),
		closing: make(chan struct{}),
	}
}

// Handler returns the HTTP handler serving the agent's RPCs.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	// The host link is local: never spend the guest's CPU compressing
	// (the host's client does not accept it either).
	mux.Handle(agentv1connect.NewAgentHandler(s, connect.WithCompression("gzip", nil, nil)))
	return mux
}

// Close thaws the writable filesystem if it is frozen and waits for the
// service's background work. Processes still running are left alone.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.freezer.thaw()
	})
	s.bg.Wait()
}
