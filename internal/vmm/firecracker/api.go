package firecracker

// The request and response bodies of Firecracker's API that the driver
// uses, as published in Firecracker's OpenAPI document
// (src/firecracker/swagger/firecracker.yaml). Optional fields are omitted
// when unset: Firecracker rejects explicit nulls for several of them.
// Required fields never carry omitempty, so a false or zero still goes on
// the wire and Firecracker, not the driver, judges it.

// MachineConfig is PUT /machine-config.
type MachineConfig struct {
	VCPUCount  int   `json:"vcpu_count"`
	MemSizeMiB int64 `json:"mem_size_mib"`
	SMT        *bool `json:"smt,omitempty"`
}

// BootSource is PUT /boot-source. Paths are inside the jail.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args,omitempty"`
}

// Drive is PUT /drives/{drive_id}: a virtio-block device backed by a file
// inside the jail.
type Drive struct {
	DriveID      string       `json:"drive_id"`
	PathOnHost   string       `json:"path_on_host"`
	IsRootDevice bool         `json:"is_root_device"`
	IsReadOnly   bool         `json:"is_read_only"`
	RateLimiter  *RateLimiter `json:"rate_limiter,omitempty"`
}

// RateLimiter limits a device with a bytes and an operations bucket.
type RateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// TokenBucket holds Size tokens and refills them all every RefillTime
// milliseconds.
type TokenBucket struct {
	Size         int64  `json:"size"`
	OneTimeBurst *int64 `json:"one_time_burst,omitempty"`
	RefillTime   int64  `json:"refill_time"`
}

// Vsock is PUT /vsock: the guest's vsock device, whose host end is the
// unix socket UDSPath (inside the jail).
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// Action types of PUT /actions.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
	ActionFlushMetrics   = "FlushMetrics"
)

// InstanceActionInfo is PUT /actions.
type InstanceActionInfo struct {
	ActionType string `json:"action_type"`
}

// VM states of PATCH /vm.
const (
	VMPaused  = "Paused"
	VMResumed = "Resumed"
)

// VMState is PATCH /vm.
type VMState struct {
	State string `json:"state"`
}

// Instance states of GET /.
const (
	InstanceNotStarted = "Not started"
	InstanceRunning    = "Running"
	InstancePaused     = "Paused"
)

// InstanceInfo is GET /.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// bandwidthLimiter renders a byte rate as a rate limiter whose bucket holds
// one second of traffic and refills every second; nil for no limit.
func bandwidthLimiter(bytesPerSecond int64) *RateLimiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	return &RateLimiter{Bandwidth: &TokenBucket{Size: bytesPerSecond, RefillTime: 1000}}
}
