// Command hyper-suidhelper is Hyper's setuid-root helper; see package
// internal/suid. Install it root:root mode 4755 (make install-helper).
package main

import (
	"os"

	"github.com/hypervm/hyper/internal/suid"
)

// Set at build time with -ldflags "-X main.configPath=... -X main.version=...".
// Nothing at run time (no flag, no environment variable) changes them.
var (
	configPath = "/etc/hyper/config.toml"
	version    = "dev"
)

func main() {
	suid.Drop()
	os.Exit(suid.Main(suid.Build{Version: version, ConfigPath: configPath}, os.Args[1:], os.Stdout, os.Stderr))
}
