package server

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"github.com/hypervm/hyper/internal/agent"
	"github.com/hypervm/hyper/internal/image"
	"github.com/hypervm/hyper/internal/node"
	"github.com/hypervm/hyper/internal/store"
)

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// invalid reports a bad request field.
func invalid(field, format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

// codeFor maps the sentinel errors of Hyper's packages to API codes. It is
// the only place that does; subsystems return wrapped sentinels.
var codeFor = []struct {
	err  error
	code connect.Code
}{
	{store.ErrNotFound, connect.CodeNotFound},
	{store.ErrExists, connect.CodeAlreadyExists},
	{store.ErrInUse, connect.CodeFailedPrecondition},
	{store.ErrExhausted, connect.CodeResourceExhausted},
	{store.ErrConflict, connect.CodeAborted},
	{store.ErrBadPageToken, connect.CodeInvalidArgument},
	{node.ErrNotRunning, connect.CodeFailedPrecondition},
	{node.ErrArchMismatch, connect.CodeFailedPrecondition},
	{node.ErrCordoned, connect.CodeFailedPrecondition},
	{node.ErrNoBudget, connect.CodeResourceExhausted},
	{node.ErrInvalid, connect.CodeInvalidArgument},
	{store.ErrInvalid, connect.CodeInvalidArgument},
	// The VM runs but its guest agent does not answer (yet): worth a retry.
	{agent.ErrNotReady, connect.CodeUnavailable},
	{image.ErrInvalidReference, connect.CodeInvalidArgument},
	{image.ErrUnsafeEntry, connect.CodeInvalidArgument},
	{image.ErrNotFound, connect.CodeNotFound},
	{image.ErrUnauthorized, connect.CodePermissionDenied},
	{image.ErrNoPlatform, connect.CodeFailedPrecondition},
	{image.ErrNoSpace, connect.CodeResourceExhausted},
	{image.ErrCorrupt, connect.CodeDataLoss},
	{context.Canceled, connect.CodeCanceled},
	{context.DeadlineExceeded, connect.CodeDeadlineExceeded},
}

// apiError turns err into a connect error with the right code, keeping its
// message. Errors that already carry a code pass through.
func apiError(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	for _, m := range codeFor {
		if errors.Is(err, m.err) {
			return connect.NewError(m.code, err)
		}
	}
	return connect.NewError(connect.CodeInternal, err)
}
