package guest_test

import (
	"testing"

	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/guest/guesttest"
)

func TestHasPVHEntry(t *testing.T) {
	k := guesttest.Kernel(t)
	if k.Vmlinux == "" {
		t.Skip("the pinned kernel gave no vmlinux")
	}
	ok, err := guest.HasPVHEntry(k.Vmlinux)
	if err != nil || !ok {
		t.Fatalf("guest.HasPVHEntry(%s) = %v, %v; Debian's cloud kernel has a PVH entry", k.Vmlinux, ok, err)
	}
	if _, err := guest.HasPVHEntry(k.Vmlinuz); err == nil {
		t.Errorf("HasPVHEntry of a bzImage: no error")
	}
}
