package node

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/hypervm/hyper/internal/store"
	"github.com/hypervm/hyper/internal/store/storetest"
)

// countingStore counts the store's uid searches, the slow path the pool
// exists to avoid.
type countingStore struct {
	*store.Store
	searches int
}

func (c *countingStore) ClaimUID(ctx context.Context, node, vmID string, lo, hi uint32) (uint32, error) {
	c.searches++
	return c.Store.ClaimUID(ctx, node, vmID, lo, hi)
}

func TestUIDPool(t *testing.T) {
	ctx := context.Background()
	st := &countingStore{Store: storetest.SQLite(t)}
	// A claim the pool did not make, as a previous daemon left it.
	if _, err := st.Store.ClaimUID(ctx, "n1", "vold", 100, 100); err != nil {
		t.Fatal(err)
	}
	p := newUIDPool(st, "n1", 100, 104)
	claim := func(vm string, want uint32) {
		t.Helper()
		got, err := p.claim(ctx, vm)
		if err != nil || got != want {
			t.Fatalf("claim %s = %d, %v; want %d", vm, got, err, want)
		}
	}
	claim("v1", 101)
	claim("v2", 102)
	claim("v3", 103)
	if st.searches != 0 {
		t.Errorf("%d store searches for claims the pool could make alone", st.searches)
	}
	// The lowest free uid is reused first.
	if err := p.release(ctx, 102); err != nil {
		t.Fatal(err)
	}
	claim("v4", 102)

	// Someone else took 104 behind the pool's back: the insert loses, the
	// store's search answers, and the pool's view is reloaded.
	if _, err := st.Store.ClaimUIDExact(ctx, "n1", "vsneaky", 104); err != nil {
		t.Fatal(err)
	}
	if _, err := p.claim(ctx, "v5"); !errors.Is(err, store.ErrExhausted) {
		t.Fatalf("claim in a full range: %v, want ErrExhausted", err)
	}
	if err := p.release(ctx, 101); err != nil {
		t.Fatal(err)
	}
	claim("v5", 101)
	// A VM that already holds a uid gets it back.
	claim("v3", 103)

	claims, err := st.Store.ListUIDClaims(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint32]string{100: "vold", 101: "v5", 102: "v4", 103: "v3", 104: "vsneaky"}
	if fmt.Sprint(claims) != fmt.Sprint(want) {
		t.Errorf("claims %v, want %v", claims, want)
	}
}

func TestUIDPoolTopOfRange(t *testing.T) {
	ctx := context.Background()
	p := newUIDPool(storetest.SQLite(t), "n1", 4294967294, 4294967295)
	for i, want := range []uint32{4294967294, 4294967295} {
		got, err := p.claim(ctx, fmt.Sprintf("v%d", i))
		if err != nil || got != want {
			t.Fatalf("claim %d = %d, %v; want %d", i, got, err, want)
		}
	}
	if _, err := p.claim(ctx, "v2"); !errors.Is(err, store.ErrExhausted) {
		t.Fatalf("claim past the top: %v, want ErrExhausted", err)
	}
}
