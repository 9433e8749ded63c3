//go:build !amd64

package qemu

// HostTSCkHz is unknown off amd64: the guest calibrates by itself.
func HostTSCkHz() int64 { return 0 }
