package store

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Every error the store returns for one of these conditions
// wraps the sentinel, so callers test with errors.Is and still get a message
// that names the object.
var (
	// ErrNotFound: the named object does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: an object with that id already exists.
	ErrExists = errors.New("already exists")
	// ErrInUse: a delete was refused because other objects depend on the
	// target; errors.As with *InUseError tells which.
	ErrInUse = errors.New("in use")
	// ErrExhausted: every uid of the requested range is claimed.
	ErrExhausted = errors.New("exhausted")
	// ErrConflict: a state update found the object in a state it did not
	// allow (someone else changed it first).
	ErrConflict = errors.New("conflict")
	// ErrBadPageToken: a page token that this store did not hand out.
	ErrBadPageToken = errors.New("bad page token")
	// ErrInvalid: an argument failed validation; the message names the field.
	ErrInvalid = errors.New("invalid argument")
)

// InUseError is the error of a refused delete. Users name the dependents as
// "<kind> <id>", e.g. "vm v2xk...", "layer 4f1e...".
type InUseError struct {
	Kind  string // "image" or "layer"
	ID    string
	Users []string
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("%s %s is in use by %s", e.Kind, e.ID, strings.Join(e.Users, ", "))
}

// Is makes errors.Is(err, ErrInUse) true for an *InUseError.
func (e *InUseError) Is(target error) bool { return target == ErrInUse }

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, field, fmt.Sprintf(format, args...))
}
