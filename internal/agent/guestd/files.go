package guestd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/hypervm/hyper/api/agent/v1"
)

// fileChunk is the most file data one message carries.
const fileChunk = 128 << 10

// cleanPath checks that p is an absolute path and cleans it.
func cleanPath(p string) (string, error) {
	switch {
	case p == "":
		return "", connect.NewError(connect.CodeInvalidArgument, errors.New("path: empty"))
	case strings.IndexByte(p, 0) >= 0:
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path %q: contains a NUL byte", p))
	case !filepath.IsAbs(p):
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path %q: not absolute", p))
	}
	return filepath.Clean(p), nil
}

// checkMode validates a permission mode from a request; 0 means def.
func checkMode(mode, def uint32) (os.FileMode, error) {
	if mode == 0 {
		mode = def
	}
	if mode&^0o7777 != 0 {
		return 0, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("mode %#o: only permission, setuid, setgid and sticky bits are allowed", mode))
	}
	fm := os.FileMode(mode & 0o777)
	if mode&unix.S_ISUID != 0 {
		fm |= os.ModeSetuid
	}
	if mode&unix.S_ISGID != 0 {
		fm |= os.ModeSetgid
	}
	if mode&unix.S_ISVTX != 0 {
		fm |= os.ModeSticky
	}
	return fm, nil
}

// fileInfo describes path, whose lstat(2) is fi.
func fileInfo(path string, fi fs.FileInfo) *agentv1.FileInfo {
	info := &agentv1.FileInfo{
		Path:  path,
		Name:  fi.Name(),
		Size:  uint64(fi.Size()),
		Mtime: timestamppb.New(fi.ModTime()),
		IsDir: fi.IsDir(),
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		info.Mode, info.Uid, info.Gid = st.Mode, st.Uid, st.Gid
	}
	switch {
	case fi.Mode().IsRegular():
		info.Type = agentv1.FileType_FILE_TYPE_REGULAR
	case fi.IsDir():
		info.Type = agentv1.FileType_FILE_TYPE_DIRECTORY
	case fi.Mode()&fs.ModeSymlink != 0:
		info.Type = agentv1.FileType_FILE_TYPE_SYMLINK
		info.LinkTarget, _ = os.Readlink(path)
	default:
		info.Type = agentv1.FileType_FILE_TYPE_OTHER
	}
	return info
}

func lstatInfo(path string) (*agentv1.FileInfo, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fileError("stat "+path, err)
	}
	return fileInfo(path, fi), nil
}

// Stat describes a path.
func (s *Server) Stat(_ context.Context, req *connect.Request[agentv1.StatRequest]) (*connect.Response[agentv1.StatResponse], error) {
	path, err := cleanPath(req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	info, err := lstatInfo(path)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.StatResponse{Info: info}), nil
}

// ListDir lists a directory.
func (s *Server) ListDir(_ context.Context, req *connect.Request[agentv1.ListDirRequest]) (*connect.Response[agentv1.ListDirResponse], error) {
	path, err := cleanPath(req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		return nil, fileError("list "+path, err)
	}
	res := &agentv1.ListDirResponse{Entries: make([]*agentv1.FileInfo, 0, len(ents))}
	for _, e := range ents {
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since the directory was read
		}
		if err != nil {
			return nil, fileError("list "+path, err)
		}
		res.Entries = append(res.Entries, fileInfo(filepath.Join(path, e.Name()), fi))
	}
	return connect.NewResponse(res), nil
}

// MakeDir creates a directory.
func (s *Server) MakeDir(_ context.Context, req *connect.Request[agentv1.MakeDirRequest]) (*connect.Response[agentv1.MakeDirResponse], error) {
	path, err := cleanPath(req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	mode, err := checkMode(req.Msg.GetMode(), 0o755)
	if err != nil {
		return nil, err
	}
	if req.Msg.GetParents() {
		// An existing directory is left exactly as it is.
		if fi, err := os.Stat(path); err == nil && fi.IsDir() {
			info, err := lstatInfo(path)
			if err != nil {
				return nil, err
			}
			return connect.NewResponse(&agentv1.MakeDirResponse{Info: info}), nil
		}
		err = os.MkdirAll(path, 0o755)
	} else {
		err = os.Mkdir(path, mode)
	}
	if err != nil {
		return nil, fileError("mkdir "+path, err)
	}
	if err := setOwnerMode(path, req.Msg.Uid, req.Msg.Gid, mode); err != nil {
		return nil, err
	}
	info, err := lstatInfo(path)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.MakeDirResponse{Info: info}), nil
}

// setOwnerMode gives path the requested owner (unset ids are left alone)
// and then mode: chown clears setuid and setgid bits, so mode comes last.
func setOwnerMode(path string, uid, gid *uint32, mode os.FileMode) error {
	if uid != nil || gid != nil {
		u, g := -1, -1
		if uid != nil {
			u = int(*uid)
		}
		if gid != nil {
			g = int(*gid)
		}
		if err := os.Lchown(path, u, g); err != nil {
			return fileError("chown "+path, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		return fileError("chmod "+path, err)
	}
	return nil
}

// Remove removes a path.
func (s *Server) Remove(_ context.Context, req *connect.Request[agentv1.RemoveRequest]) (*connect.Response[agentv1.RemoveResponse], error) {
	path, err := cleanPath(req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	if path == "/" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("path /: refusing to remove the root"))
	}
	if _, err := os.Lstat(path); err != nil {
		return nil, fileError("remove "+path, err)
	}
	if req.Msg.GetRecursive() {
		err = os.RemoveAll(path)
	} else {
		err = os.Remove(path)
	}
	if err != nil {
		return nil, fileError("remove "+path, err)
	}
	return connect.NewResponse(&agentv1.RemoveResponse{}), nil
}

// ReadFile streams a regular file out.
func (s *Server) ReadFile(_ context.Context, req *connect.Request[agentv1.ReadFileRequest], stream *connect.ServerStream[agentv1.ReadFileResponse]) error {
	path, err := cleanPath(req.Msg.GetPath())
	if err != nil {
		return err
	}
	// O_NONBLOCK: opening a fifo must not hang the call; it is refused
	// below as not a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return fileError("read "+path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fileError("read "+path, err)
	}
	if !fi.Mode().IsRegular() {
		what := "not a regular file"
		if fi.IsDir() {
			what = "is a directory"
		}
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("read %s: %s", path, what))
	}
	if err := stream.Send(&agentv1.ReadFileResponse{Msg: &agentv1.ReadFileResponse_Info{Info: fileInfo(path, fi)}}); err != nil {
		return err
	}
	buf := make([]byte, fileChunk)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if err := stream.Send(&agentv1.ReadFileResponse{Msg: &agentv1.ReadFileResponse_Data{Data: buf[:n]}}); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fileError("read "+path, err)
		}
	}
}

// WriteFile streams a file in and replaces the target atomically.
func (s *Server) WriteFile(_ context.Context, stream *connect.ClientStream[agentv1.WriteFileRequest]) (*connect.Response[agentv1.WriteFileResponse], error) {
	if !stream.Receive() {
		if err := stream.Err(); err != nil {
			return nil, err
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("header: no header message"))
	}
	hdr := stream.Msg().GetHeader()
	if hdr == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("header: the first message must be the header"))
	}
	path, err := cleanPath(hdr.GetPath())
	if err != nil {
		return nil, err
	}
	if path == "/" {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("write /: is a directory"))
	}
	mode, err := checkMode(hdr.GetMode(), 0o644)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	if hdr.GetMakeParents() {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fileError("write "+path+": make parents", err)
		}
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("write %s: is a directory", path))
	}
	uid, gid := hdr.Uid, hdr.Gid
	if os.Geteuid() == 0 {
		// Files the agent writes belong to root unless asked otherwise,
		// whatever the directory's setgid bit says.
		zero := uint32(0)
		if uid == nil {
			uid = &zero
		}
		if gid == nil {
			gid = &zero
		}
	}

	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".hyper-*")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("write %s: parent directory %s does not exist", path, dir))
		}
		return nil, fileError("write "+path, err)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	for stream.Receive() {
		data, ok := stream.Msg().GetMsg().(*agentv1.WriteFileRequest_Data)
		if !ok {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("data: a second header message"))
		}
		if _, err := tmp.Write(data.Data); err != nil {
			return nil, fileError("write "+path, err)
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	if err := setOwnerMode(tmp.Name(), uid, gid, mode); err != nil {
		return nil, err
	}
	if err := tmp.Sync(); err != nil {
		return nil, fileError("write "+path+": sync", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fileError("write "+path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, fileError("write "+path+": rename", err)
	}
	committed = true
	// Make the rename itself durable.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	info, err := lstatInfo(path)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.WriteFileResponse{Info: info}), nil
}
