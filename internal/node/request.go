package node

import "time"

// CreateRequest asks the node to boot a VM.
type CreateRequest struct {
	// ImageID or LayerID (exactly one) is what the VM boots from.
	ImageID string
	LayerID string
	// InstanceType names an instance.Type ("micro", ...).
	InstanceType string
	// Arch must be the node's ("x86_64" or "aarch64").
	Arch     string
	BootArgs string
	Labels   map[string]string
	// TTL, if set, stops the VM when it expires.
	TTL time.Duration
	// ParentID is set for forks.
	ParentID string
}
