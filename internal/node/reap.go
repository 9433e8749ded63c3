package node

import "github.com/hypervm/hyper/internal/ids"

// reapPlan decides which leftovers to remove on one reaper pass.
//
// found are the VM ids seen in the node's resources (cgroups, jails, VM
// directories); live are the ids of VMs this node owns; previous is what
// the last pass returned as next. Only names that are VM ids are ever
// considered, so a cgroup or directory someone else put under Hyper's
// parent is never touched (the reference's reaper killed any sub-cgroup).
// An orphan is reaped only when it was also an orphan on the previous pass,
// so a VM that is being created between a resource appearing and its row
// being visible is never taken.
func reapPlan(found []string, live, previous map[string]bool) (reap []string, next map[string]bool) {
	next = map[string]bool{}
	for _, id := range found {
		if !ids.IsVM(id) || live[id] || next[id] {
			continue
		}
		next[id] = true
		if previous[id] {
			reap = append(reap, id)
		}
	}
	return reap, next
}
