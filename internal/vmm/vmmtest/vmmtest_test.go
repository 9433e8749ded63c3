package vmmtest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hypervm/hyper/internal/guest"
	"github.com/hypervm/hyper/internal/units"
	"github.com/hypervm/hyper/internal/vmm"
	"github.com/hypervm/hyper/internal/vmm/vmmtest"
)

func TestFakeDriverLifecycle(t *testing.T) {
	ctx := context.Background()
	var d vmmtest.Driver
	c := vmm.Config{ID: "vm-1", Dir: "/vms/vm-1", Kernel: guest.Kernel{Vmlinuz: "/k"}, Initrd: "/i",
		BaseDisk: "/b", WritableDisk: "/w", ConfigDisk: "/c", VCPUs: 1, Memory: 128 * units.MiB}
	v, err := d.Start(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Start(ctx, c); err == nil {
		t.Fatal("second start in the same dir succeeded")
	}
	if err := v.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	a, err := d.Attach(ctx, "vm-1", "/vms/vm-1")
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := a.Status(ctx); st != vmm.Paused {
		t.Fatalf("attached status = %s", st)
	}
	if !d.Crash("vm-1") {
		t.Fatal("crash found no vm")
	}
	wctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := v.Wait(wctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Resume(ctx); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("resume after crash: %v", err)
	}
	if _, err := d.Attach(ctx, "vm-1", "/vms/vm-1"); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("attach after crash: %v", err)
	}
	if err := v.Stop(ctx); err != nil || len(d.Running()) != 0 {
		t.Fatalf("stop: %v, running %v", err, d.Running())
	}
	bad := c
	bad.VCPUs = 0
	if _, err := d.Start(ctx, bad); err == nil {
		t.Fatal("invalid config started")
	}
}
