// Command recorder stands in for Firecracker's jailer in the helper's
// end-to-end tests. It records what it was given (argv, environment, open
// descriptors above 2, ids, cgroups, pid) to the file named at build time
// and exits 7. Run as "recorder connect <socket>" it only connects to a
// unix socket and exits 0 on success.

// The runtime would otherwise keep cgroup CPU-limit files open, which
// would look like leaked descriptors.
//
//go:debug containermaxprocs=0
//go:debug updatemaxprocs=0
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"syscall"
)

var out = "" // set with -ldflags -X main.out=...

func main() {
	// Probe descriptors before the Go runtime or this program opens any.
	fds := map[int]string{}
	for fd := 3; fd < 4096; fd++ {
		if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0); errno == 0 {
			fds[fd], _ = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		}
	}
	if len(os.Args) == 3 && os.Args[1] == "connect" {
		c, err := net.Dial("unix", os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		c.Close()
		return
	}
	environ, _ := os.ReadFile("/proc/self/environ")
	cgroup, _ := os.ReadFile("/proc/self/cgroup")
	groups, _ := syscall.Getgroups()
	rec := map[string]any{
		"argv": os.Args, "environ": string(environ), "fds": fds, "pid": os.Getpid(),
		"uid": syscall.Getuid(), "euid": syscall.Geteuid(), "gid": syscall.Getgid(), "egid": syscall.Getegid(),
		"groups": groups, "cgroup": string(cgroup),
	}
	data, _ := json.Marshal(rec)
	if err := os.WriteFile(out, data, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	os.Exit(7)
}
