package vmm_test

import (
	"strings"
	"testing"

	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/units"
	"github.com/hypervm/hyper/internal/vmm"
)

func TestConfigValidate(t *testing.T) {
	good := vmm.Config{ID: "vm-1", Dir: "/d", Kernel: guest.Kernel{Vmlinuz: "/k"}, Initrd: "/i",
		BaseDisk: "/b", WritableDisk: "/w", ConfigDisk: "/c", VCPUs: 1, Memory: 256 * units.MiB}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for field, mutate := range map[string]func(*vmm.Config){
		"ID":            func(c *vmm.Config) { c.ID = "-rf" },
		"Dir":           func(c *vmm.Config) { c.Dir = "rel" },
		"Kernel":        func(c *vmm.Config) { c.Kernel = guest.Kernel{} },
		"Initrd":        func(c *vmm.Config) { c.Initrd = "" },
		"BaseDisk":      func(c *vmm.Config) { c.BaseDisk = "b" },
		"WritableDisk":  func(c *vmm.Config) { c.WritableDisk = "" },
		"ConfigDisk":    func(c *vmm.Config) { c.ConfigDisk = "c" },
		"VCPUs":         func(c *vmm.Config) { c.VCPUs = 0 },
		"Memory":        func(c *vmm.Config) { c.Memory = 100*units.MiB + 1 },
		"DiskBandwidth": func(c *vmm.Config) { c.DiskBandwidth = -1 },
	} {
		c := good
		mutate(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("bad %s: err = %v", field, err)
		}
	}
}
