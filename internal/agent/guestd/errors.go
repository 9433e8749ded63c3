package guestd

import (
	"errors"
	"fmt"
	"io/fs"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
)

// fileError wraps err, which happened while doing what, in a connect error
// whose code says what kind of failure it was.
func fileError(what string, err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	return connect.NewError(codeOf(err), fmt.Errorf("%s: %w", what, err))
}

func codeOf(err error) connect.Code {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return connect.CodeNotFound
		case errors.Is(err, fs.ErrPermission):
			return connect.CodePermissionDenied
		case errors.Is(err, fs.ErrExist):
			return connect.CodeAlreadyExists
		}
		return connect.CodeInternal
	}
	switch errno {
	case unix.ENOENT:
		return connect.CodeNotFound
	case unix.EACCES, unix.EPERM:
		return connect.CodePermissionDenied
	case unix.EEXIST:
		return connect.CodeAlreadyExists
	case unix.ENOTDIR, unix.EISDIR, unix.ENOTEMPTY, unix.EROFS, unix.ELOOP,
		unix.ENOEXEC, unix.ETXTBSY, unix.EXDEV, unix.EBUSY:
		return connect.CodeFailedPrecondition
	case unix.ENOSPC, unix.EDQUOT, unix.ENOMEM, unix.EMFILE, unix.ENFILE:
		return connect.CodeResourceExhausted
	case unix.ENAMETOOLONG, unix.EINVAL:
		return connect.CodeInvalidArgument
	}
	return connect.CodeInternal
}
