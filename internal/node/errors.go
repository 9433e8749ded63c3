package node

import "errors"

// Sentinel errors; the API maps them to codes in one place.
var (
	// ErrNotRunning: the VM exists but is not Running (exec, files, fork).
	ErrNotRunning = errors.New("vm is not running")
	// ErrArchMismatch: the request's architecture is not the node's.
	ErrArchMismatch = errors.New("architecture mismatch")
	// ErrCordoned: the node takes no new VMs.
	ErrCordoned = errors.New("node is cordoned")
	// ErrInvalid: a request field is wrong; the message names it.
	ErrInvalid = errors.New("invalid request")
)
