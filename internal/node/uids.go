package node

import (
	"context"
	"sync"
)

// uidStore is the part of the store the uid pool uses.
type uidStore interface {
	ClaimUID(ctx context.Context, node, vmID string, lo, hi uint32) (uint32, error)
	ClaimUIDExact(ctx context.Context, node, vmID string, uid uint32) (bool, error)
	ReleaseUID(ctx context.Context, node string, uid uint32) error
	ListUIDClaims(ctx context.Context, node string) (map[uint32]string, error)
}

// uidPool hands out the uids of this node's VMs. Only the node claims its
// own uids, so it can pick the lowest free one from memory and claim it with
// one insert, where the store's own search takes three statements (1.5 ms
// on PostgreSQL). The store stays the authority: when the insert loses
// (memory was stale, or the VM already holds a uid), the pool asks the
// store's search and reloads its view before the next claim.
type uidPool struct {
	store  uidStore
	node   string
	lo, hi uint32

	mu   sync.Mutex // serialises claims: concurrent ones would collide
	used map[uint32]bool
	next uint32 // no uid below next is free
}

func newUIDPool(st uidStore, node string, lo, hi uint32) *uidPool {
	return &uidPool{store: st, node: node, lo: lo, hi: hi}
}

// claim gives vmID the lowest free uid of the range.
func (p *uidPool) claim(ctx context.Context, vmID string) (uint32, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used == nil {
		if err := p.load(ctx); err != nil {
			return 0, err
		}
	}
	if uid, ok := p.lowestFree(); ok {
		won, err := p.store.ClaimUIDExact(ctx, p.node, vmID, uid)
		if err != nil {
			return 0, err
		}
		if won {
			p.used[uid] = true
			p.next = uid
			return uid, nil
		}
	}
	p.used = nil
	return p.store.ClaimUID(ctx, p.node, vmID, p.lo, p.hi)
}

// release frees uid.
func (p *uidPool) release(ctx context.Context, uid uint32) error {
	if err := p.store.ReleaseUID(ctx, p.node, uid); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used != nil {
		delete(p.used, uid)
		p.next = min(p.next, uid)
	}
	return nil
}

// load reads the node's claims from the store.
func (p *uidPool) load(ctx context.Context) error {
	claims, err := p.store.ListUIDClaims(ctx, p.node)
	if err != nil {
		return err
	}
	p.used = make(map[uint32]bool, len(claims))
	for uid := range claims {
		p.used[uid] = true
	}
	p.next = p.lo
	return nil
}

// lowestFree returns the lowest uid of the range that is not in use.
func (p *uidPool) lowestFree() (uint32, bool) {
	for uid := max(p.next, p.lo); ; uid++ {
		if !p.used[uid] {
			p.next = uid
			return uid, true
		}
		if uid >= p.hi {
			return 0, false
		}
	}
}
