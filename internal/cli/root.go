// Package cli is the `hyper` command line: one subcommand per API call,
// shaped like docker's, talking to any node through the client package.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/hypervm/hyper/client"
	"github.com/hypervm/hyper/internal/config"
)

// ExitError carries an exit code out of a command (hyper vm exec exits
// with the remote command's code).
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

type app struct {
	addr   string
	token  string
	output string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// Main runs the CLI with args and returns the process exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var exit *ExitError
	if errors.As(err, &exit) {
		return exit.Code
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		fmt.Fprintf(stderr, "hyper: %s: %s\n", ce.Code(), ce.Message())
	} else {
		fmt.Fprintf(stderr, "hyper: %v\n", err)
	}
	return 1
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "hyper",
		Short:         "Run and fork Firecracker microVMs from OCI images",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			switch a.output {
			case "table", "json":
				return nil
			}
			return fmt.Errorf("-o/--output: want table or json, got %q", a.output)
		},
	}
	f := root.PersistentFlags()
	f.StringVar(&a.addr, "addr", os.Getenv("HYPER_ADDR"), "API address: unix:///path, host:port or https://host:port (env HYPER_ADDR; default: the local node's socket)")
	f.StringVar(&a.token, "token", os.Getenv("HYPER_TOKEN"), "bearer token for TCP listeners (env HYPER_TOKEN)")
	f.StringVarP(&a.output, "output", "o", "table", "output format: table or json")
	root.AddCommand(a.imageCmd(), a.vmCmd(), a.layerCmd(), a.nodeCmd())
	return root
}

// client connects to --addr, or to the socket the local config names.
func (a *app) client() (*client.Client, error) {
	addr := a.addr
	if addr == "" {
		cfg, err := config.Load(envOr("HYPER_CONFIG", config.DefaultPath))
		if err != nil {
			cfg = config.Default()
		}
		addr = "unix://" + cfg.API.Socket
	}
	var opts []client.Option
	if a.token != "" {
		opts = append(opts, client.WithToken(a.token))
	}
	return client.New(addr, opts...)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
