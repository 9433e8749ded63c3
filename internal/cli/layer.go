package cli

import (
	"fmt"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
)

func (a *app) layerCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "layer", Short: "List and delete frozen disk layers"}
	var image string
	var tree bool
	ls := &cobra.Command{
		Use: "ls", Short: "List layers", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			resp, err := c.ListLayers(cmd.Context(), connect.NewRequest(&hyperv1.ListLayersRequest{ImageId: image}))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(a.stdout, resp.Msg)
			}
			if tree {
				return a.printLayerTree(resp.Msg.GetLayers())
			}
			return a.printLayers(resp.Msg.GetLayers(), false)
		},
	}
	ls.Flags().StringVar(&image, "image", "", "only layers of this image")
	ls.Flags().BoolVar(&tree, "tree", false, "show lineage: image -> layer -> layer")
	rm := &cobra.Command{
		Use: "rm LAYER...", Short: "Delete layers", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			for _, id := range args {
				if _, err := c.DeleteLayer(cmd.Context(), connect.NewRequest(&hyperv1.DeleteLayerRequest{Id: id})); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, id)
			}
			return nil
		},
	}
	cmd.AddCommand(ls, rm)
	return cmd
}

func (a *app) printLayers(layers []*hyperv1.Layer, quiet bool) error {
	if quiet {
		for _, l := range layers {
			fmt.Fprintln(a.stdout, l.GetId())
		}
		return nil
	}
	if a.output == "json" && len(layers) == 1 {
		return printJSON(a.stdout, layers[0])
	}
	t := newTable(a.stdout, "ID", "PARENT", "IMAGE", "NODE", "SIZE", "LABEL", "AGE")
	for _, l := range layers {
		t.row(l.GetId(), dash(l.GetParentId()), shortID(l.GetImageId()), l.GetNode(), bytesHuman(l.GetSizeBytes()), dash(l.GetLabel()), age(l.GetCreatedAt()))
	}
	return t.flush()
}

// printLayerTree prints each image with its layers nested under their
// parents.
func (a *app) printLayerTree(layers []*hyperv1.Layer) error {
	children := map[string][]*hyperv1.Layer{} // parent layer id, or "image:<id>"
	var images []string
	for _, l := range layers {
		key := l.GetParentId()
		if key == "" {
			key = "image:" + l.GetImageId()
			if len(children[key]) == 0 {
				images = append(images, l.GetImageId())
			}
		}
		children[key] = append(children[key], l)
	}
	var walk func(key string, depth int)
	walk = func(key string, depth int) {
		for _, l := range children[key] {
			fmt.Fprintf(a.stdout, "%s└─ %s %s (%s)\n", strings.Repeat("   ", depth), l.GetId(), dash(l.GetLabel()), bytesHuman(l.GetSizeBytes()))
			walk(l.GetId(), depth+1)
		}
	}
	for _, im := range images {
		fmt.Fprintf(a.stdout, "image %s\n", shortID(im))
		walk("image:"+im, 0)
	}
	return nil
}
