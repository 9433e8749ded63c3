package store_test

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/hypervm/hyper/internal/store"
)

func mkdir(dir string) error { return os.MkdirAll(dir, 0o755) }

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// testListVMsPagination checks, for random VM sets, filters and page sizes,
// that paging through ListVMs yields exactly the matching VMs, in id order,
// each once, in pages of the requested size with a token on all but the
// last.
func testListVMsPagination(t *testing.T, e engine) {
	s := e.open(t)
	states := []string{"creating", "running", "stopped", "crashed"}
	labelValues := map[string][]string{"app": {"web", "db"}, "env": {"prod"}}
	round := 0
	rapid.Check(t, func(rt *rapid.T) {
		// Each round writes to its own node and filters on it, so rounds
		// share one store without seeing each other's VMs.
		round++
		node := fmt.Sprintf("node-%d", round)
		ids := rapid.SliceOfDistinct(rapid.StringMatching(`v[a-z2-7]{1,4}`), rapid.ID[string]).Draw(rt, "ids")
		if len(ids) > 30 {
			ids = ids[:30]
		}
		var all []store.VM
		for _, id := range ids {
			vm := store.VM{
				ID:     node + "-" + id,
				Node:   node,
				State:  rapid.SampledFrom(states).Draw(rt, "state"),
				Labels: map[string]string{},
			}
			for _, k := range slices.Sorted(maps.Keys(labelValues)) {
				if rapid.Bool().Draw(rt, "has "+k) {
					vm.Labels[k] = rapid.SampledFrom(labelValues[k]).Draw(rt, k)
				}
			}
			if _, err := s.CreateVM(ctx, vm); err != nil {
				rt.Fatal(err)
			}
			all = append(all, vm)
		}

		f := store.VMFilter{
			Node:           node,
			IncludeStopped: rapid.Bool().Draw(rt, "include stopped"),
			PageSize:       rapid.IntRange(1, 8).Draw(rt, "page size"),
			Labels:         map[string]string{},
		}
		if rapid.Bool().Draw(rt, "filter state") {
			f.State = rapid.SampledFrom(states).Draw(rt, "filter state value")
		}
		for _, k := range slices.Sorted(maps.Keys(labelValues)) {
			if rapid.Bool().Draw(rt, "filter "+k) {
				f.Labels[k] = rapid.SampledFrom(labelValues[k]).Draw(rt, "filter "+k+" value")
			}
		}

		var want []string
		for _, vm := range all {
			if matches(vm, f) {
				want = append(want, vm.ID)
			}
		}
		slices.Sort(want)

		var got []string
		pages := 0
		for {
			vms, next, err := s.ListVMs(ctx, f)
			if err != nil {
				rt.Fatal(err)
			}
			pages++
			if len(vms) > f.PageSize || (next != "" && len(vms) != f.PageSize) {
				rt.Fatalf("page %d: %d VMs, next %q, page size %d", pages, len(vms), next, f.PageSize)
			}
			for _, vm := range vms {
				got = append(got, vm.ID)
			}
			if next == "" {
				break
			}
			if pages > len(all)+1 {
				rt.Fatalf("more pages than VMs")
			}
			f.PageToken = next
		}
		if !slices.Equal(want, got) {
			rt.Fatalf("paged listing %v, want %v", got, want)
		}
		if wantPages := max(1, (len(want)+f.PageSize-1)/f.PageSize); pages != wantPages {
			rt.Fatalf("%d pages for %d VMs of page size %d, want %d", pages, len(want), f.PageSize, wantPages)
		}
	})
}

// matches is the model of VMFilter.
func matches(vm store.VM, f store.VMFilter) bool {
	if f.Node != "" && vm.Node != f.Node {
		return false
	}
	if f.State != "" {
		if vm.State != f.State {
			return false
		}
	} else if !f.IncludeStopped && vm.State == store.StateStopped {
		return false
	}
	for k, v := range f.Labels {
		if got, ok := vm.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
