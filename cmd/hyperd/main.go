// Command hyperd is Hyper's node daemon. It runs as an unprivileged user;
// everything that needs root goes through hyper-suidhelper.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/hypervm/hyper/internal/config"
	"github.com/hypervm/hyper/internal/daemon"
)

func main() {
	var (
		configPath = flag.String("config", envOr("HYPER_CONFIG", config.DefaultPath), "config file (env HYPER_CONFIG)")
		allowRoot  = flag.Bool("allow-root", false, "run as root (development only)")
		logLevel   = flag.String("log-level", "info", "debug, info, warn or error")
		logJSON    = flag.Bool("log-json", false, "log JSON instead of text")
	)
	flag.Parse()
	if flag.NArg() > 0 {
		fatalf("unexpected arguments: %v", flag.Args())
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fatalf("--log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if *logJSON {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	log := slog.New(h)

	if os.Geteuid() == 0 {
		if !*allowRoot {
			fatalf("refusing to run as root: run hyperd as an unprivileged user (for example `hyper`); privileged work goes through hyper-suidhelper. Pass --allow-root on a development machine only")
		}
		log.Warn("running as root because --allow-root was given; never do this in production")
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		fatalf("%v", err)
	}
	log = log.With("node", cfg.Cluster.NodeName)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := daemon.Run(ctx, cfg, log); err != nil {
		fatalf("%v", err)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "hyperd: "+format+"\n", args...)
	os.Exit(1)
}
