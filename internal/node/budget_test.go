package node

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"pgregory.net/rapid"

	"github.com/hypervm/hyper/internal/units"
)

func TestBudgetReserve(t *testing.T) {
	b := NewBudget(Capacity{Memory: 1 * units.GiB, Disk: 10 * units.GiB})
	if err := b.Reserve("a", Reservation{Memory: 512 * units.MiB, Disk: 4 * units.GiB}); err != nil {
		t.Fatal(err)
	}
	if err := b.Reserve("a", Reservation{}); err == nil {
		t.Fatal("a VM reserved twice")
	}
	// Exactly at capacity fits.
	if err := b.Reserve("b", Reservation{Memory: 512 * units.MiB, Disk: 6 * units.GiB}); err != nil {
		t.Fatal(err)
	}
	err := b.Reserve("c", Reservation{Memory: 1, Disk: 0})
	if !errors.Is(err, ErrNoBudget) || err.Error() == "" {
		t.Fatalf("over memory: %v", err)
	}
	b.Release("b")
	b.Release("b")
	err = b.Reserve("c", Reservation{Memory: 1, Disk: 7 * units.GiB})
	if !errors.Is(err, ErrNoBudget) {
		t.Fatalf("over disk: %v", err)
	}
	if u := b.Usage(); u.Memory != 512*units.MiB || u.Disk != 4*units.GiB || u.VMs != 1 {
		t.Fatalf("usage %+v", u)
	}
}

// Whatever the order of reserves and releases, the totals equal the sum of
// the reservations held and never exceed capacity.
func TestBudgetInvariants(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		capacity := Capacity{Memory: units.Size(rapid.Int64Range(0, 1<<34).Draw(t, "mem")), Disk: units.Size(rapid.Int64Range(0, 1<<40).Draw(t, "disk"))}
		b := NewBudget(capacity)
		held := map[string]Reservation{}
		for range rapid.IntRange(0, 60).Draw(t, "ops") {
			id := fmt.Sprint(rapid.IntRange(0, 8).Draw(t, "vm"))
			if rapid.Bool().Draw(t, "release") {
				b.Release(id)
				delete(held, id)
				continue
			}
			r := Reservation{Memory: units.Size(rapid.Int64Range(0, 1<<32).Draw(t, "m")), Disk: units.Size(rapid.Int64Range(0, 1<<38).Draw(t, "d"))}
			if err := b.Reserve(id, r); err == nil {
				held[id] = r
			}
		}
		var mem, disk units.Size
		for _, r := range held {
			mem += r.Memory
			disk += r.Disk
		}
		u := b.Usage()
		if u.Memory != mem || u.Disk != disk || u.VMs != len(held) {
			t.Fatalf("usage %+v; want mem %d disk %d vms %d", u, mem, disk, len(held))
		}
		if u.Memory > capacity.Memory || u.Disk > capacity.Disk {
			t.Fatalf("over capacity: %+v", u)
		}
	})
}

func TestBudgetConcurrentLastSlot(t *testing.T) {
	b := NewBudget(Capacity{Memory: 10 * units.GiB, Disk: 10 * units.GiB})
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if b.Reserve(fmt.Sprint(i), Reservation{Memory: units.GiB, Disk: units.GiB}) == nil {
				mu.Lock()
				won++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if won != 10 {
		t.Fatalf("%d reservations won; want exactly 10", won)
	}
}
