package node

import (
	"errors"
	"fmt"
	"sync"

	"github.com/hypervm/hyper/internal/units"
)

// ErrNoBudget is returned when a VM does not fit the node's hard budget.
var ErrNoBudget = errors.New("not enough budget")

// Budget tracks the hard resources (memory, disk) promised to VMs. A VM's
// share is reserved before its VMM starts and released when it is gone, so
// two concurrent creates can never both take the last gigabyte (the
// reference reserved after the boot).
type Budget struct {
	mu       sync.Mutex
	capacity Capacity
	mem      units.Size
	disk     units.Size
	held     map[string]Reservation
}

// Reservation is one VM's share.
type Reservation struct {
	Memory units.Size
	Disk   units.Size
}

// NewBudget returns an empty budget of the given capacity.
func NewBudget(c Capacity) *Budget {
	return &Budget{capacity: c, held: map[string]Reservation{}}
}

// Reserve takes r for vm, or fails with ErrNoBudget naming the resource
// that is short. Reserving twice for the same VM is an error: a VM holds
// one share.
func (b *Budget) Reserve(vm string, r Reservation) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.held[vm]; ok {
		return fmt.Errorf("vm %s already holds a budget reservation", vm)
	}
	if b.mem+r.Memory > b.capacity.Memory {
		return fmt.Errorf("%w: memory: %s wanted, %s of %s free", ErrNoBudget, r.Memory, b.capacity.Memory-b.mem, b.capacity.Memory)
	}
	if b.disk+r.Disk > b.capacity.Disk {
		return fmt.Errorf("%w: disk: %s wanted, %s of %s free", ErrNoBudget, r.Disk, b.capacity.Disk-b.disk, b.capacity.Disk)
	}
	b.mem += r.Memory
	b.disk += r.Disk
	b.held[vm] = r
	return nil
}

// Release returns vm's share; releasing twice is a no-op.
func (b *Budget) Release(vm string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.held[vm]
	if !ok {
		return
	}
	b.mem -= r.Memory
	b.disk -= r.Disk
	delete(b.held, vm)
}

// Usage is a snapshot of the budget.
type Usage struct {
	Capacity Capacity
	Memory   units.Size
	Disk     units.Size
	VMs      int
}

// Usage returns what is allocated now.
func (b *Budget) Usage() Usage {
	b.mu.Lock()
	defer b.mu.Unlock()
	return Usage{Capacity: b.capacity, Memory: b.mem, Disk: b.disk, VMs: len(b.held)}
}
