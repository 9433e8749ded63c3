package image

import (
	"errors"
	"fmt"
	"net/http"
	"syscall"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Sentinel errors. Every error Load returns for one of these conditions
// matches it with errors.Is and keeps the underlying message (for a
// registry, the registry's own words). The API server maps them to status
// codes as noted.
var (
	// ErrInvalidReference: the reference is malformed (INVALID_ARGUMENT).
	ErrInvalidReference = errors.New("invalid image reference")
	// ErrNotFound: unknown repository, tag, digest, layout, archive or
	// image id (NOT_FOUND).
	ErrNotFound = errors.New("image not found")
	// ErrUnauthorized: the registry refused our credentials or their absence
	// (PERMISSION_DENIED).
	ErrUnauthorized = errors.New("not authorized to pull image")
	// ErrNoPlatform: the image has no manifest for the node's platform; the
	// message lists the platforms it has (FAILED_PRECONDITION).
	ErrNoPlatform = errors.New("no image for this node's platform")
	// ErrNoSpace: the disk filled up, or the image exceeds Options.MaxSize;
	// nothing is left behind (RESOURCE_EXHAUSTED).
	ErrNoSpace = errors.New("no space for image")
	// ErrCorrupt: a blob's content does not match its digest (DATA_LOSS).
	ErrCorrupt = errors.New("corrupt image")
	// ErrUnsafeEntry: a layer entry would land outside the root (absolute
	// path or "..") or be written through a symlink or a file. The image is
	// refused as malformed input (INVALID_ARGUMENT).
	ErrUnsafeEntry = errors.New("unsafe layer entry")
)

// kindError ties an underlying error to one of the sentinels without
// changing its message: errors.Is matches both.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// withKind marks err as kind unless it already is.
func withKind(kind, err error) error {
	if err == nil || errors.Is(err, kind) {
		return err
	}
	return &kindError{kind: kind, err: err}
}

// errorf formats an error that matches kind.
func errorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, err: fmt.Errorf(format, args...)}
}

// classifyRegistry maps a registry's HTTP error to a sentinel.
func classifyRegistry(err error) error {
	var terr *transport.Error
	if !errors.As(err, &terr) {
		return err
	}
	for _, d := range terr.Errors {
		switch d.Code {
		case transport.NameUnknownErrorCode, transport.ManifestUnknownErrorCode, transport.BlobUnknownErrorCode:
			return withKind(ErrNotFound, err)
		case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
			return withKind(ErrUnauthorized, err)
		case transport.NameInvalidErrorCode, transport.TagInvalidErrorCode:
			return withKind(ErrInvalidReference, err)
		}
	}
	switch terr.StatusCode {
	case http.StatusNotFound:
		return withKind(ErrNotFound, err)
	case http.StatusUnauthorized, http.StatusForbidden:
		return withKind(ErrUnauthorized, err)
	}
	return err
}

// classifyIO maps a full disk or quota to ErrNoSpace.
func classifyIO(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG) {
		return withKind(ErrNoSpace, err)
	}
	return err
}
