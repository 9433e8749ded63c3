// Package cluster is how nodes find each other: every node renews a lease
// row in the shared store, and a node whose lease is older than the TTL is
// dead. The store is the cluster's only coordination point, as etcd is for
// Kubernetes.
package cluster

import (
	"context"
	"log/slog"
	"time"

	"github.com/hypervm/hyper/internal/store"
)

// LeaseStore is where leases are renewed.
type LeaseStore interface {
	RenewLease(ctx context.Context, n store.Node) error
}

// Lease renews this node's lease until its context ends.
type Lease struct {
	Store    LeaseStore
	Interval time.Duration
	// Snapshot describes the node at the moment of a renewal (budget,
	// cached images), so every heartbeat carries fresh placement data.
	Snapshot func() store.Node
	Logger   *slog.Logger
}

// Renew renews the lease once.
func (l *Lease) Renew(ctx context.Context) error {
	return l.Store.RenewLease(ctx, l.Snapshot())
}

// Run renews the lease every Interval until ctx is done. A failed renewal
// is logged and retried at the next tick: a store hiccup must not take the
// node down, and if it lasts past the TTL peers rightly see the node dead.
func (l *Lease) Run(ctx context.Context) {
	t := time.NewTicker(l.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := l.Renew(ctx); err != nil && ctx.Err() == nil {
				l.Logger.WarnContext(ctx, "lease renewal failed", "op", "lease", "error", err)
			}
		}
	}
}
