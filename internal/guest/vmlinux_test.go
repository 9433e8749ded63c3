package guest_test

import (
	"debug/elf"
	"path/filepath"
	"testing"

	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/guest/guesttest"
)

func TestExtractVmlinuxFromDebianKernel(t *testing.T) {
	k := guesttest.Kernel(t)
	dst := filepath.Join(t.TempDir(), "vmlinux")
	if err := guest.ExtractVmlinux(k.Vmlinuz, dst); err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Fatalf("vmlinux is %s %s, want an x86-64 executable", f.Machine, f.Type)
	}
	if f.Section(".text") == nil {
		t.Fatal("vmlinux has no .text section")
	}
}
