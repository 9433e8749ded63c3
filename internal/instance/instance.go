// Package instance defines Hyper's instance types: the fixed shapes (vCPU,
// memory, disk, bandwidth) a VM is created with, and the limits derived
// from them for the VMM and the VM's cgroup.
package instance

import (
	"fmt"
	"math"
	"strings"

	"github.com/hypervm/hyper/internal/units"
)

// Type is one instance type.
type Type struct {
	Name   string
	VCPUs  float64 // may be fractional: a cgroup CPU quota
	Memory units.Size
	Disk   units.Size
	DiskBW units.Bandwidth
	NetBW  units.Bandwidth
}

// VMMOverhead is added to the guest's memory for the VMM's own memory when
// capping the VM's cgroup and counting its budget share; capping at the
// guest size alone can OOM-kill the VMM during boot (a defect of the
// reference system). A driver whose VMM needs more says so (QEMU under TCG
// adds its translation cache).
const VMMOverhead = 64 * units.MiB

// Types in ascending size; each doubles the one before.
var types = func() []Type {
	names := []string{"micro", "milli", "centi", "deci", "base", "deca", "hecto", "kilo", "mega", "giga", "tera"}
	out := make([]Type, len(names))
	for i, n := range names {
		scale := math.Pow(2, float64(i))
		out[i] = Type{
			Name:   n,
			VCPUs:  0.25 * scale,
			Memory: 128 * units.MiB << i,
			Disk:   2 * units.GiB << i,
			DiskBW: 16 * units.Bandwidth(units.MiB) << i,
			NetBW:  8 * units.Bandwidth(units.MiB) << i,
		}
	}
	return out
}()

// All returns every instance type, smallest first.
func All() []Type { return append([]Type(nil), types...) }

// Lookup finds a type by name (case-insensitive).
func Lookup(name string) (Type, error) {
	for _, t := range types {
		if strings.EqualFold(t.Name, name) {
			return t, nil
		}
	}
	names := make([]string, len(types))
	for i, t := range types {
		names[i] = t.Name
	}
	return Type{}, fmt.Errorf("unknown instance type %q (want one of %s)", name, strings.Join(names, ", "))
}

// VCPUCount is the number of vCPUs the VMM gives the guest: the fractional
// share rounded up, at least one.
func (t Type) VCPUCount() int { return max(1, int(math.Ceil(t.VCPUs))) }

// MilliCPU is the VM cgroup's CPU limit in thousandths of a CPU.
func (t Type) MilliCPU() uint64 { return uint64(math.Round(t.VCPUs * 1000)) }
