// Package daemon assembles hyperd: it loads nothing itself but wires the
// configuration, the store, the node, the cluster lease and the API server
// together, serves until its context ends, and shuts down in order.
package daemon

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/hypervm/hyper/internal/cluster"
	"github.com/hypervm/hyper/internal/config"
	"github.com/hypervm/hyper/internal/image"
	"github.com/hypervm/hyper/internal/node"
	"github.com/hypervm/hyper/internal/server"
	"github.com/hypervm/hyper/internal/store"
)

// Version is stamped at build time.
var Version = "dev"

// Run serves the node until ctx is cancelled.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	if err := makeDirs(cfg); err != nil {
		return err
	}
	url := cfg.Store.URL
	if url == "" {
		url = cfg.SQLitePath()
	}
	st, err := store.Open(ctx, url)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer st.Close()
	log.Info("store open", "engine", st.Engine())

	loader, err := image.NewLoader(image.Options{ImagesDir: cfg.ImagesDir(), TmpDir: cfg.TmpDir(), Arch: node.Arch()})
	if err != nil {
		return fmt.Errorf("image loader: %w", err)
	}
	if err := loader.CleanTmp(); err != nil {
		log.Warn("clean temporary image files", "error", err)
	}

	// The VM manager, unless this node only serves the API (driver none).
	var (
		vms     *node.Manager
		usage   = func() node.Usage { return node.Usage{} }
		drvName = "none"
	)
	capacity, err := node.HostCapacity(cfg)
	if err != nil {
		return fmt.Errorf("node capacity: %w", err)
	}
	if cfg.VMM.Driver != "none" {
		opts, err := vmDeps(ctx, cfg, st, log)
		if err != nil {
			return err
		}
		vms = node.NewManager(opts)
		usage, drvName, capacity = vms.Usage, opts.Driver.Name(), opts.Budget.Usage().Capacity
		log.Info("vmm driver", "driver", drvName)
	}

	started := time.Now().UTC()
	lease := &cluster.Lease{
		Store:    st,
		Interval: cfg.Cluster.LeaseInterval.Duration,
		Logger:   log,
		Snapshot: func() store.Node {
			u := usage()
			budget, _ := json.Marshal(cluster.Budget{
				MemTotal: uint64(capacity.Memory), DiskTotal: uint64(capacity.Disk),
				MemAllocated: uint64(u.Memory), DiskAllocated: uint64(u.Disk), VMs: uint32(u.VMs),
				CPUs: uint32(capacity.CPUs), CPUMaxLoad: cfg.Budget.CPUMaxLoad,
			})
			return store.Node{
				Name:      cfg.Cluster.NodeName,
				Address:   cfg.Cluster.Advertise,
				Arch:      node.Arch(),
				Driver:    drvName,
				Version:   Version,
				StartedAt: started,
				Budget:    budget,
			}
		},
	}
	if err := lease.Renew(ctx); err != nil {
		return fmt.Errorf("register node %s: %w", cfg.Cluster.NodeName, err)
	}

	// Every goroutine below ends with runCtx, so an early return (a
	// listener that cannot open, say) stops them and waits for them.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(runCtx)
	sopts := server.Options{
		Store:    st,
		Images:   &server.ImageService{Loader: loader, Store: st, Logger: log},
		Node:     cfg.Cluster.NodeName,
		LeaseTTL: cfg.Cluster.LeaseTTL.Duration,
		Logger:   log,
	}
	if vms != nil {
		// Re-adopt and reclaim before serving: requests must not race the
		// reclaim of what a previous daemon left.
		ready := make(chan struct{})
		g.Go(func() error { return vms.Run(gctx, func() { close(ready) }) })
		select {
		case <-ready:
		case <-gctx.Done():
			return g.Wait()
		}
		sopts.VMs = vms
	}
	handler := server.New(sopts).Handler()

	listeners, err := listen(cfg)
	if err != nil {
		cancel()
		_ = g.Wait()
		return err
	}
	g.Go(func() error { lease.Run(gctx); return nil })
	for _, l := range listeners {
		h := handler
		if l.token != "" {
			h = requireToken(l.token, handler)
		}
		hs := &http.Server{
			Handler:           h,
			Protocols:         l.protocols,
			TLSConfig:         l.tls,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		log.Info("serving API", "addr", l.Addr().String(), "tls", l.tls != nil)
		g.Go(func() error {
			err := hs.Serve(l)
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("serve %s: %w", l.Addr(), err)
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), 10*time.Second)
			defer cancel()
			return hs.Shutdown(sctx)
		})
	}
	log.Info("hyperd ready", "node", cfg.Cluster.NodeName, "work_dir", cfg.WorkDir, "version", Version)
	err = g.Wait()
	_ = os.Remove(cfg.API.Socket)
	log.Info("hyperd stopped")
	return err
}

func makeDirs(cfg *config.Config) error {
	for _, d := range []string{cfg.VMsDir(), cfg.TmpDir(), cfg.ImagesDir(), cfg.LayersDir(), filepath.Dir(cfg.API.Socket)} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	return nil
}

type listener struct {
	net.Listener
	protocols *http.Protocols
	tls       *tls.Config
	token     string
}

func listen(cfg *config.Config) ([]listener, error) {
	sock := cfg.API.Socket
	// Only a stale socket is removed: never a file someone put there.
	if fi, err := os.Lstat(sock); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("api.socket %s exists and is not a socket", sock)
		}
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return nil, fmt.Errorf("api.socket %s: another hyperd is serving it", sock)
		}
		if err := os.Remove(sock); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", sock, err)
		}
	}
	ul, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", sock, err)
	}
	// Owner and group may use the API; the unix socket is the local trust
	// boundary, as Docker's is.
	if err := os.Chmod(sock, 0o660); err != nil {
		ul.Close()
		return nil, fmt.Errorf("chmod %s: %w", sock, err)
	}
	var plain http.Protocols
	plain.SetHTTP1(true)
	plain.SetUnencryptedHTTP2(true)
	out := []listener{{Listener: ul, protocols: &plain}}
	if cfg.API.TCP == "" {
		return out, nil
	}
	tl, err := tcpListener(cfg)
	if err != nil {
		ul.Close()
		return nil, err
	}
	return append(out, tl), nil
}

func tcpListener(cfg *config.Config) (listener, error) {
	l := listener{}
	var protos http.Protocols
	protos.SetHTTP1(true)
	if cfg.API.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.API.TLSCert, cfg.API.TLSKey)
		if err != nil {
			return l, fmt.Errorf("api.tls_cert/api.tls_key: %w", err)
		}
		l.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
		protos.SetHTTP2(true)
	} else {
		protos.SetUnencryptedHTTP2(true)
	}
	if cfg.API.TokenFile != "" {
		b, err := os.ReadFile(cfg.API.TokenFile)
		if err != nil {
			return l, fmt.Errorf("api.token_file: %w", err)
		}
		l.token = strings.TrimSpace(string(b))
		if l.token == "" {
			return l, fmt.Errorf("api.token_file %s is empty", cfg.API.TokenFile)
		}
	}
	tl, err := net.Listen("tcp", cfg.API.TCP)
	if err != nil {
		return l, fmt.Errorf("listen on api.tcp %s: %w", cfg.API.TCP, err)
	}
	if l.tls != nil {
		tl = tls.NewListener(tl, l.tls)
	}
	l.Listener, l.protocols = tl, &protos
	return l, nil
}

// requireToken admits requests bearing the configured token.
func requireToken(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"code":"unauthenticated","message":"missing or wrong bearer token"}`))
			return
		}
		next.ServeHTTP(w, r)
	})
}
