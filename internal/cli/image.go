package cli

import (
	"errors"
	"fmt"
	"io"
	"os"

	"connectrpc.com/connect"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
)

func (a *app) imageCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Load and manage OCI images"}
	var label string
	var quiet bool
	load := &cobra.Command{
		Use:   "load REF",
		Short: "Load an image: a registry reference, oci:<dir>[:tag] or docker-archive:<file.tar>",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			stream, err := c.LoadImage(cmd.Context(), connect.NewRequest(&hyperv1.LoadImageRequest{Ref: args[0], Label: label}))
			if err != nil {
				return err
			}
			defer stream.Close()
			p := newProgress(a.stderr, quiet || a.output == "json")
			var image *hyperv1.Image
			for stream.Receive() {
				switch ev := stream.Msg().GetEvent().(type) {
				case *hyperv1.LoadImageResponse_Progress:
					p.update(ev.Progress)
				case *hyperv1.LoadImageResponse_Image:
					image = ev.Image
				}
			}
			p.finish()
			if err := stream.Err(); err != nil {
				return err
			}
			if image == nil {
				return errors.New("the server ended the load without an image")
			}
			return a.printImage(image, quiet)
		},
	}
	load.Flags().StringVar(&label, "label", "", "a label for the image (default: the reference)")
	load.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the image id")

	ls := &cobra.Command{
		Use: "ls", Short: "List images", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			resp, err := c.ListImages(cmd.Context(), connect.NewRequest(&hyperv1.ListImagesRequest{}))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(a.stdout, resp.Msg)
			}
			t := newTable(a.stdout, "ID", "LABEL", "ARCH", "SIZE", "CREATED")
			for _, im := range resp.Msg.GetImages() {
				t.row(shortID(im.GetId()), im.GetLabel(), enumName(im.GetArch().String(), "ARCH_"), bytesHuman(im.GetSizeBytes()), age(im.GetCreatedAt()))
			}
			return t.flush()
		},
	}
	get := &cobra.Command{
		Use: "get ID", Short: "Show an image", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			resp, err := c.GetImage(cmd.Context(), connect.NewRequest(&hyperv1.GetImageRequest{Id: args[0]}))
			if err != nil {
				return err
			}
			return a.printImage(resp.Msg, false)
		},
	}
	rm := &cobra.Command{
		Use: "rm ID...", Short: "Delete images", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			for _, id := range args {
				if _, err := c.DeleteImage(cmd.Context(), connect.NewRequest(&hyperv1.DeleteImageRequest{Id: id})); err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, id)
			}
			return nil
		},
	}
	cmd.AddCommand(load, ls, get, rm)
	return cmd
}

func (a *app) printImage(im *hyperv1.Image, quiet bool) error {
	switch {
	case quiet:
		_, err := fmt.Fprintln(a.stdout, im.GetId())
		return err
	case a.output == "json":
		return printJSON(a.stdout, im)
	}
	t := newTable(a.stdout, "ID", "LABEL", "ARCH", "SIZE", "DIGEST")
	t.row(im.GetId(), im.GetLabel(), enumName(im.GetArch().String(), "ARCH_"), bytesHuman(im.GetSizeBytes()), im.GetDigest())
	return t.flush()
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// progress shows load progress: a bar on a terminal, plain lines otherwise.
type progress struct {
	w      io.Writer
	off    bool
	tty    bool
	bar    *progressbar.ProgressBar
	stage  hyperv1.LoadProgress_Stage
	layer  string
	lastPc int
}

func newProgress(w io.Writer, off bool) *progress {
	p := &progress{w: w, off: off}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

func (p *progress) update(ev *hyperv1.LoadProgress) {
	if p.off {
		return
	}
	stage := enumName(ev.GetStage().String(), "STAGE_")
	if ev.GetStage() != p.stage || ev.GetLayer() != p.layer {
		p.finishBar()
		p.stage, p.layer, p.lastPc = ev.GetStage(), ev.GetLayer(), -1
		desc := stage
		if ev.GetLayer() != "" {
			desc += " " + shortID(trimAlgo(ev.GetLayer()))
		}
		if p.tty && ev.GetTotalBytes() > 0 {
			p.bar = progressbar.NewOptions64(int64(ev.GetTotalBytes()), progressbar.OptionSetWriter(p.w),
				progressbar.OptionSetDescription(desc), progressbar.OptionShowBytes(true),
				progressbar.OptionClearOnFinish(), progressbar.OptionThrottle(100_000_000))
		} else if msg := ev.GetMessage(); msg != "" {
			fmt.Fprintf(p.w, "%s: %s\n", desc, msg)
		} else {
			fmt.Fprintf(p.w, "%s\n", desc)
		}
	}
	if p.bar != nil {
		_ = p.bar.Set64(int64(ev.GetDoneBytes()))
		return
	}
	if total := ev.GetTotalBytes(); !p.tty && total > 0 {
		// Plain output: a line per quarter, so logs stay short.
		pc := int(ev.GetDoneBytes() * 100 / total)
		if pc/25 > p.lastPc/25 || pc == 100 && p.lastPc != 100 {
			fmt.Fprintf(p.w, "  %3d%% %s/%s\n", pc, bytesHuman(ev.GetDoneBytes()), bytesHuman(total))
			p.lastPc = pc
		}
	}
}

func (p *progress) finishBar() {
	if p.bar != nil {
		_ = p.bar.Finish()
		p.bar = nil
	}
}

func (p *progress) finish() { p.finishBar() }

func trimAlgo(d string) string {
	if i := len("sha256:"); len(d) > i && d[:i] == "sha256:" {
		return d[i:]
	}
	return d
}
