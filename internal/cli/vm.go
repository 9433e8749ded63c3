package cli

import (
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
)

func (a *app) vmCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "Create, inspect, exec into, fork and stop VMs"}
	cmd.AddCommand(a.vmCreateCmd(), a.vmListCmd(), a.vmGetCmd(), a.vmStopCmd(), a.vmForkCmd(),
		a.vmSnapshotCmd(), a.vmLogsCmd(), a.vmExecCmd(), a.vmCpCmd())
	return cmd
}

func (a *app) vmCreateCmd() *cobra.Command {
	var (
		image, layer, typ, arch, bootArgs, node string
		labels                                  []string
		ttl                                     time.Duration
		quiet                                   bool
	)
	cmd := &cobra.Command{
		Use:   "create (--image ID | --layer ID)",
		Short: "Create a VM from an image or a layer and wait until it runs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &hyperv1.CreateVmRequest{BootArgs: bootArgs, Node: node}
			switch {
			case image != "" && layer != "":
				return fmt.Errorf("--image and --layer: give one, not both")
			case image != "":
				req.Source = &hyperv1.CreateVmRequest_ImageId{ImageId: image}
			case layer != "":
				req.Source = &hyperv1.CreateVmRequest_LayerId{LayerId: layer}
			default:
				return fmt.Errorf("--image or --layer is required")
			}
			var err error
			if req.InstanceType, err = parseInstanceType(typ); err != nil {
				return err
			}
			if req.Arch, err = parseArch(arch); err != nil {
				return err
			}
			if req.Labels, err = parseLabels(labels); err != nil {
				return err
			}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			resp, err := c.CreateVm(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			return a.printVMs([]*hyperv1.Vm{resp.Msg}, quiet)
		},
	}
	f := cmd.Flags()
	f.StringVar(&image, "image", "", "image id")
	f.StringVar(&layer, "layer", "", "layer id")
	f.StringVar(&typ, "type", "micro", "instance type: micro, milli, centi, deci, base, deca, hecto, kilo, mega, giga, tera")
	f.StringVar(&arch, "arch", hostArch(), "architecture: x86_64 or aarch64")
	f.StringVar(&bootArgs, "boot-args", "", "kernel command line (replaces the default)")
	f.StringVar(&node, "node", "", "run on this node")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	f.DurationVar(&ttl, "ttl", 0, "stop the VM after this long (e.g. 1h)")
	f.BoolVarP(&quiet, "quiet", "q", false, "print only the VM id")
	return cmd
}

func (a *app) vmListCmd() *cobra.Command {
	var (
		node, state string
		labels      []string
		all         bool
	)
	cmd := &cobra.Command{
		Use: "ls", Short: "List VMs (running ones unless --all)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &hyperv1.ListVmsRequest{Node: node, IncludeStopped: all}
			if state != "" {
				v, ok := hyperv1.VmState_value["VM_STATE_"+strings.ToUpper(state)]
				if !ok || v == 0 {
					return fmt.Errorf("--state: unknown state %q", state)
				}
				req.State = hyperv1.VmState(v)
			}
			var err error
			if req.Labels, err = parseLabels(labels); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			var vms []*hyperv1.Vm
			for {
				resp, err := c.ListVms(cmd.Context(), connect.NewRequest(req))
				if err != nil {
					return err
				}
				vms = append(vms, resp.Msg.GetVms()...)
				if req.PageToken = resp.Msg.GetNextPageToken(); req.PageToken == "" {
					break
				}
			}
			if a.output == "json" {
				return printJSON(a.stdout, &hyperv1.ListVmsResponse{Vms: vms})
			}
			return a.printVMs(vms, false)
		},
	}
	f := cmd.Flags()
	f.StringVar(&node, "node", "", "only VMs on this node")
	f.StringVar(&state, "state", "", "only VMs in this state")
	f.StringArrayVar(&labels, "label", nil, "only VMs with label key=value (repeatable)")
	f.BoolVarP(&all, "all", "a", false, "include stopped VMs")
	return cmd
}

func (a *app) vmGetCmd() *cobra.Command {
	return &cobra.Command{
		Use: "get VM", Short: "Show a VM", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			resp, err := c.GetVm(cmd.Context(), connect.NewRequest(&hyperv1.GetVmRequest{Id: args[0]}))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(a.stdout, resp.Msg)
			}
			return a.printVMs([]*hyperv1.Vm{resp.Msg}, false)
		},
	}
}

func (a *app) vmStopCmd() *cobra.Command {
	var grace time.Duration
	cmd := &cobra.Command{
		Use: "stop VM...", Short: "Stop VMs (idempotent)", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			for _, id := range args {
				req := &hyperv1.StopVmRequest{Id: id}
				if grace > 0 {
					req.Grace = durationpb.New(grace)
				}
				if _, err := c.StopVm(cmd.Context(), connect.NewRequest(req)); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, id)
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&grace, "grace", 0, "how long the guest may take to shut down before it is killed (default 5s)")
	return cmd
}

func (a *app) vmForkCmd() *cobra.Command {
	var (
		count  uint32
		labels []string
		quiet  bool
	)
	cmd := &cobra.Command{
		Use: "fork VM", Short: "Fork a running VM's disk into new VMs", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if count < 1 {
				return fmt.Errorf("-n/--count: must be at least 1")
			}
			l, err := parseLabels(labels)
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			resp, err := c.ForkVm(cmd.Context(), connect.NewRequest(&hyperv1.ForkVmRequest{Id: args[0], Count: count, Labels: l}))
			if err != nil {
				return err
			}
			if a.output == "json" && !quiet {
				return printJSON(a.stdout, resp.Msg)
			}
			return a.printVMs(resp.Msg.GetChildren(), quiet)
		},
	}
	cmd.Flags().Uint32VarP(&count, "count", "n", 1, "number of children")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "label key=value for the children (repeatable)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the children's ids")
	return cmd
}

func (a *app) vmSnapshotCmd() *cobra.Command {
	var label string
	var quiet bool
	cmd := &cobra.Command{
		Use: "snapshot VM", Short: "Freeze a running VM's disk into a layer", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			resp, err := c.SnapshotVm(cmd.Context(), connect.NewRequest(&hyperv1.SnapshotVmRequest{Id: args[0], Label: label}))
			if err != nil {
				return err
			}
			return a.printLayers([]*hyperv1.Layer{resp.Msg}, quiet)
		},
	}
	cmd.Flags().StringVar(&label, "label", "", "a label for the layer")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the layer id")
	return cmd
}

func (a *app) vmLogsCmd() *cobra.Command {
	var follow bool
	var tail int64
	cmd := &cobra.Command{
		Use: "logs VM", Short: "Print a VM's console", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			stream, err := c.GetVmLogs(cmd.Context(), connect.NewRequest(&hyperv1.GetVmLogsRequest{Id: args[0], Follow: follow, TailBytes: tail}))
			if err != nil {
				return err
			}
			defer stream.Close()
			for stream.Receive() {
				if _, err := a.stdout.Write(stream.Msg().GetData()); err != nil {
					return err
				}
			}
			return stream.Err()
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().Int64Var(&tail, "tail", 0, "print only the last N bytes")
	return cmd
}

func (a *app) printVMs(vms []*hyperv1.Vm, quiet bool) error {
	if quiet {
		for _, v := range vms {
			if _, err := fmt.Fprintln(a.stdout, v.GetId()); err != nil {
				return err
			}
		}
		return nil
	}
	if a.output == "json" {
		if len(vms) == 1 {
			return printJSON(a.stdout, vms[0])
		}
		return printJSON(a.stdout, &hyperv1.ListVmsResponse{Vms: vms})
	}
	t := newTable(a.stdout, "ID", "STATE", "TYPE", "NODE", "IMAGE", "AGE", "LABELS")
	for _, v := range vms {
		src := shortID(v.GetImageId())
		if v.GetLayerId() != "" {
			src = v.GetLayerId()
		}
		t.row(v.GetId(), enumName(v.GetState().String(), "VM_STATE_"), enumName(v.GetInstanceType().String(), "INSTANCE_TYPE_"),
			v.GetNode(), src, age(v.GetCreatedAt()), labelsString(v.GetLabels()))
	}
	return t.flush()
}

func parseInstanceType(s string) (hyperv1.InstanceType, error) {
	v, ok := hyperv1.InstanceType_value["INSTANCE_TYPE_"+strings.ToUpper(s)]
	if !ok || v == 0 {
		return 0, fmt.Errorf("--type: unknown instance type %q (want micro, milli, centi, deci, base, deca, hecto, kilo, mega, giga or tera)", s)
	}
	return hyperv1.InstanceType(v), nil
}

func parseArch(s string) (hyperv1.Arch, error) {
	v, ok := hyperv1.Arch_value["ARCH_"+strings.ToUpper(s)]
	if !ok || v == 0 {
		return 0, fmt.Errorf("--arch: unknown architecture %q (want x86_64 or aarch64)", s)
	}
	return hyperv1.Arch(v), nil
}

func parseLabels(in []string) (map[string]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(in))
	for _, kv := range in {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: want key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}
