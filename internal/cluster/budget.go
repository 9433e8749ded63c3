package cluster

// Budget is the snapshot of a node's capacity and allocations that rides
// on every lease renewal (stored as JSON with the node's row), so any node
// can place VMs from the leases alone.
type Budget struct {
	MemTotal      uint64  `json:"mem_total"`
	MemAllocated  uint64  `json:"mem_allocated"`
	DiskTotal     uint64  `json:"disk_total"`
	DiskAllocated uint64  `json:"disk_allocated"`
	CPULoad       float64 `json:"cpu_load"`
	CPUMaxLoad    float64 `json:"cpu_max_load"`
	CPUs          uint32  `json:"cpus"`
	VMs           uint32  `json:"vms"`
}
