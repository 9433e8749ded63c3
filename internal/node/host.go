// Package node runs one node: what it offers to VMs (its budget), and, as
// the lifecycle lands, the supervision of the VMs it runs.
package node

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/hypervm/hyper/internal/config"
	"github.com/hypervm/hyper/internal/units"
)

// Arch is the host's architecture in Hyper's naming.
func Arch() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	}
	return runtime.GOARCH
}

// Capacity is what the node offers to VMs.
type Capacity struct {
	Memory units.Size
	Disk   units.Size
	CPUs   int
}

// share is the part of the host offered to VMs when the config sets no
// explicit budget; the rest is left to the host and the VMMs.
const share = 0.8

// HostCapacity returns the configured budget, filling unset values with a
// share of the host's memory and of work_dir's filesystem.
func HostCapacity(cfg *config.Config) (Capacity, error) {
	c := Capacity{Memory: cfg.Budget.MemMax, Disk: cfg.Budget.DiskMax, CPUs: runtime.NumCPU()}
	if c.Memory == 0 {
		total, err := memTotal()
		if err != nil {
			return Capacity{}, err
		}
		c.Memory = units.Size(float64(total) * share)
	}
	if c.Disk == 0 {
		var st unix.Statfs_t
		if err := unix.Statfs(cfg.WorkDir, &st); err != nil {
			return Capacity{}, fmt.Errorf("statfs %s: %w", cfg.WorkDir, err)
		}
		c.Disk = units.Size(float64(st.Blocks*uint64(st.Bsize)) * share)
	}
	return c, nil
}

func memTotal() (units.Size, error) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) >= 2 && string(f[0]) == "MemTotal:" {
			kb, err := strconv.ParseInt(string(f[1]), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/meminfo: MemTotal: %w", err)
			}
			return units.Size(kb) * units.KiB, nil
		}
	}
	return 0, fmt.Errorf("/proc/meminfo: no MemTotal line")
}
