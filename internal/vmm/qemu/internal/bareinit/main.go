// Command bareinit is the bare-boot baseline of the boot benchmark: an
// init that prints one line and powers off. Given the argument "wait" (the
// kernel passes what follows "--" on its command line), it stays up
// instead, for the benchmark to ask QEMU what the boot cost.
package main

import (
	"os"

	"golang.org/x/sys/unix"
)

func main() {
	os.Stdout.WriteString("bare-init: up\n")
	if len(os.Args) > 1 && os.Args[1] == "wait" {
		for {
			unix.Pause()
		}
	}
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}
