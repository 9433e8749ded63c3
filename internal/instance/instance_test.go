package instance

import (
	"testing"

	"github.com/hypervm/hyper/internal/units"
)

// The reference's table (spec section 6.3), spelled out so a change to the
// generator cannot silently change a type.
func TestTable(t *testing.T) {
	want := []struct {
		name   string
		vcpus  float64
		memMiB int64
		diskG  int64
		milli  uint64 // MilliCPU
		count  int
	}{
		{"micro", 0.25, 128, 2, 250, 1},
		{"milli", 0.5, 256, 4, 500, 1},
		{"centi", 1, 512, 8, 1000, 1},
		{"deci", 2, 1024, 16, 2000, 2},
		{"base", 4, 2048, 32, 4000, 4},
		{"deca", 8, 4096, 64, 8000, 8},
		{"hecto", 16, 8192, 128, 16000, 16},
		{"kilo", 32, 16384, 256, 32000, 32},
		{"mega", 64, 32768, 512, 64000, 64},
		{"giga", 128, 65536, 1024, 128000, 128},
		{"tera", 256, 131072, 2048, 256000, 256},
	}
	all := All()
	if len(all) != len(want) {
		t.Fatalf("%d types; want %d", len(all), len(want))
	}
	for i, w := range want {
		got := all[i]
		if got.Name != w.name || got.VCPUs != w.vcpus || got.Memory != units.Size(w.memMiB)*units.MiB ||
			got.Disk != units.Size(w.diskG)*units.GiB || got.MilliCPU() != w.milli || got.VCPUCount() != w.count {
			t.Errorf("type %d = %+v (millicpu %d, vcpus %d); want %+v", i, got, got.MilliCPU(), got.VCPUCount(), w)
		}
	}
	micro, _ := Lookup("MICRO")
	if micro.DiskBW != 16<<20 || micro.NetBW != 8<<20 {
		t.Errorf("micro = %+v", micro)
	}
	if _, err := Lookup("huge"); err == nil {
		t.Error("Lookup(huge) succeeded")
	}
}
