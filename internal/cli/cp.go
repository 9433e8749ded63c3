package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
	"github.com/hypervm/hyper/internal/ids"
)

func (a *app) vmCpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy a file into or out of a VM; one side is VM:/path, a local - means stdin/stdout",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcVM, srcPath := splitVMPath(args[0])
			dstVM, dstPath := splitVMPath(args[1])
			switch {
			case srcVM != "" && dstVM != "":
				return errors.New("cp: copy between two VMs is not supported; copy through a local file")
			case srcVM == "" && dstVM == "":
				return errors.New("cp: one side must be VM:/path")
			case srcVM != "":
				return a.copyOut(cmd, srcVM, srcPath, dstPath)
			default:
				return a.copyIn(cmd, srcPath, dstVM, dstPath)
			}
		},
	}
}

// splitVMPath splits "VM:/path"; anything else is a local path.
func splitVMPath(s string) (vm, p string) {
	if id, rest, ok := strings.Cut(s, ":"); ok && ids.IsVM(id) {
		return id, rest
	}
	return "", s
}

func (a *app) copyOut(cmd *cobra.Command, vm, src, dst string) error {
	if !path.IsAbs(src) {
		return fmt.Errorf("cp: guest path %q must be absolute", src)
	}
	c, err := a.client()
	if err != nil {
		return err
	}
	stream, err := c.ReadFile(cmd.Context(), connect.NewRequest(&hyperv1.ReadFileRequest{VmId: vm, Path: src}))
	if err != nil {
		return err
	}
	defer stream.Close()
	if !stream.Receive() {
		if err := stream.Err(); err != nil {
			return err
		}
		return errors.New("cp: the server sent no file")
	}
	info := stream.Msg().GetInfo()
	var w io.Writer = a.stdout
	if dst != "-" {
		if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
			dst = filepath.Join(dst, path.Base(src))
		}
		// Write next to the destination and rename, so a failed copy never
		// leaves a truncated file under the final name.
		f, err := os.CreateTemp(filepath.Dir(dst), ".hyper-cp-*")
		if err != nil {
			return err
		}
		defer os.Remove(f.Name())
		defer f.Close()
		if err := receiveData(stream, f); err != nil {
			return err
		}
		if err := f.Chmod(os.FileMode(info.GetMode() & 0o777)); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		return os.Rename(f.Name(), dst)
	}
	return receiveData(stream, w)
}

func receiveData(stream *connect.ServerStreamForClient[hyperv1.ReadFileResponse], w io.Writer) error {
	for stream.Receive() {
		if _, err := w.Write(stream.Msg().GetData()); err != nil {
			return err
		}
	}
	return stream.Err()
}

func (a *app) copyIn(cmd *cobra.Command, src, vm, dst string) error {
	if !path.IsAbs(dst) {
		return fmt.Errorf("cp: guest path %q must be absolute", dst)
	}
	var r io.Reader = a.stdin
	mode := uint32(0o644)
	if src != "-" {
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return fmt.Errorf("cp: %s is a directory; only files can be copied", src)
		}
		mode = uint32(fi.Mode().Perm())
		r = f
		if strings.HasSuffix(dst, "/") {
			dst += filepath.Base(src)
		}
	}
	c, err := a.client()
	if err != nil {
		return err
	}
	stream := c.WriteFile(cmd.Context())
	header := &hyperv1.WriteFileHeader{VmId: vm, Path: dst, Mode: mode}
	if err := stream.Send(&hyperv1.WriteFileRequest{Msg: &hyperv1.WriteFileRequest_Header{Header: header}}); err != nil {
		_, cerr := stream.CloseAndReceive()
		return errors.Join(cerr, err)
	}
	buf := make([]byte, 256<<10)
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			if err := stream.Send(&hyperv1.WriteFileRequest{Msg: &hyperv1.WriteFileRequest_Data{Data: append([]byte(nil), buf[:n]...)}}); err != nil {
				_, cerr := stream.CloseAndReceive()
				if cerr != nil {
					return cerr
				}
				return err
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			_, _ = stream.CloseAndReceive()
			return rerr
		}
	}
	_, err = stream.CloseAndReceive()
	return err
}
