package node

import (
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/hypervm/hyper/internal/ids"
)

func TestReapPlanExamples(t *testing.T) {
	a, b, c := ids.NewVM(), ids.NewVM(), ids.NewVM()
	reap, next := reapPlan([]string{a, b, "hyper-system", "..", "user.slice"}, map[string]bool{b: true}, nil)
	if len(reap) != 0 || !next[a] || next[b] || len(next) != 1 {
		t.Fatalf("first pass reaps nothing, remembers orphan a: reap=%v next=%v", reap, next)
	}
	reap, next = reapPlan([]string{a, a, c}, nil, next)
	if !slices.Equal(reap, []string{a}) || !next[c] {
		t.Fatalf("second pass reaps a once, remembers c: reap=%v next=%v", reap, next)
	}
	reap, _ = reapPlan([]string{c}, map[string]bool{c: true}, next)
	if len(reap) != 0 {
		t.Fatalf("an orphan that became live is spared: %v", reap)
	}
}

func TestReapPlanProperties(t *testing.T) {
	pool := []string{ids.NewVM(), ids.NewVM(), ids.NewVM(), ids.NewVM(), "hyper", "cpu.max", "vBAD", ids.NewLayer()}
	rapid.Check(t, func(t *rapid.T) {
		set := func(label string) map[string]bool {
			m := map[string]bool{}
			for _, s := range rapid.SliceOf(rapid.SampledFrom(pool)).Draw(t, label) {
				m[s] = true
			}
			return m
		}
		found := rapid.SliceOf(rapid.SampledFrom(pool)).Draw(t, "found")
		live, previous := set("live"), set("previous")
		reap, next := reapPlan(found, live, previous)
		for _, id := range reap {
			if live[id] {
				t.Fatalf("live VM %s reaped", id)
			}
			if !previous[id] || !next[id] {
				t.Fatalf("%s reaped without being an orphan on two consecutive passes", id)
			}
			if !ids.IsVM(id) {
				t.Fatalf("non-VM name %q reaped", id)
			}
		}
		for id := range next {
			if live[id] || !slices.Contains(found, id) || !ids.IsVM(id) {
				t.Fatalf("next holds %q, which is not an orphan seen now", id)
			}
		}
		if len(reap) != len(slices.Compact(slices.Sorted(slices.Values(reap)))) {
			t.Fatalf("duplicate reaps: %v", reap)
		}
	})
}
