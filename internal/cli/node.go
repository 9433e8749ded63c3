package cli

import (
	"fmt"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
)

func (a *app) nodeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "Inspect and cordon nodes"}
	cmd.AddCommand(
		&cobra.Command{
			Use: "ls", Short: "List nodes", Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				c, err := a.client()
				if err != nil {
					return err
				}
				resp, err := c.ListNodes(cmd.Context(), connect.NewRequest(&hyperv1.ListNodesRequest{}))
				if err != nil {
					return err
				}
				if a.output == "json" {
					return printJSON(a.stdout, resp.Msg)
				}
				t := newTable(a.stdout, "NAME", "STATUS", "ARCH", "DRIVER", "VMS", "MEMORY", "DISK", "ADDRESS", "VERSION")
				for _, n := range resp.Msg.GetNodes() {
					b := n.GetBudget()
					t.row(n.GetName(), nodeStatus(n), enumName(n.GetArch().String(), "ARCH_"), dash(n.GetDriver()),
						fmt.Sprint(b.GetVms()),
						bytesHuman(b.GetMemAllocatedBytes())+"/"+bytesHuman(b.GetMemTotalBytes()),
						bytesHuman(b.GetDiskAllocatedBytes())+"/"+bytesHuman(b.GetDiskTotalBytes()),
						dash(n.GetAddress()), dash(n.GetVersion()))
				}
				return t.flush()
			},
		},
		a.nodeOne("get NODE", "Show a node", func(cmd *cobra.Command, name string) (*connect.Response[hyperv1.Node], error) {
			c, err := a.client()
			if err != nil {
				return nil, err
			}
			return c.GetNode(cmd.Context(), connect.NewRequest(&hyperv1.GetNodeRequest{Name: name}))
		}),
		a.nodeOne("cordon NODE", "Stop placing new VMs on a node", func(cmd *cobra.Command, name string) (*connect.Response[hyperv1.Node], error) {
			c, err := a.client()
			if err != nil {
				return nil, err
			}
			return c.CordonNode(cmd.Context(), connect.NewRequest(&hyperv1.CordonNodeRequest{Name: name}))
		}),
		a.nodeOne("uncordon NODE", "Let a node take new VMs again", func(cmd *cobra.Command, name string) (*connect.Response[hyperv1.Node], error) {
			c, err := a.client()
			if err != nil {
				return nil, err
			}
			return c.UncordonNode(cmd.Context(), connect.NewRequest(&hyperv1.UncordonNodeRequest{Name: name}))
		}),
	)
	return cmd
}

func (a *app) nodeOne(use, short string, call func(*cobra.Command, string) (*connect.Response[hyperv1.Node], error)) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := call(cmd, args[0])
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(a.stdout, resp.Msg)
			}
			n := resp.Msg
			t := newTable(a.stdout, "NAME", "STATUS", "ARCH", "DRIVER", "ADDRESS", "LEASE", "VERSION")
			t.row(n.GetName(), nodeStatus(n), enumName(n.GetArch().String(), "ARCH_"), dash(n.GetDriver()),
				dash(n.GetAddress()), age(n.GetLeaseRenewedAt())+" ago", dash(n.GetVersion()))
			return t.flush()
		},
	}
}

func nodeStatus(n *hyperv1.Node) string {
	s := "dead"
	if n.GetAlive() {
		s = "alive"
	}
	if n.GetCordoned() {
		s += ",cordoned"
	}
	return s
}
