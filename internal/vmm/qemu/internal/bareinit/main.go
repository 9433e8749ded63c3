// Command bareinit is the bare-boot baseline of the boot benchmark: an
// init that prints one line and powers off.
package main

import (
	"os"

	"golang.org/x/sys/unix"
)

func main() {
	os.Stdout.WriteString("bare-init: up\n")
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}
