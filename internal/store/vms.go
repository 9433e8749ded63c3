package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// VM states the store gives a meaning to. State is otherwise a plain string
// owned by the callers ("creating", "booting", "crashed", ...).
const (
	// StateRunning: entering it sets StartedAt.
	StateRunning = "running"
	// StateStopped: entering it sets StoppedAt; stopped VMs are left out of
	// ListVMs by default and do not hold their image or layer.
	StateStopped = "stopped"
	// StateFailed and StateLost: entering them sets StoppedAt.
	StateFailed = "failed"
	StateLost   = "lost"
)

// VM is one microVM's record.
type VM struct {
	ID           string
	Node         string
	ImageID      string
	LayerID      string
	InstanceType string
	Arch         string
	BootArgs     string
	Labels       map[string]string
	State        string
	LastError    string
	Restarts     int
	UID          uint32 // 0 = none
	CreatedAt    time.Time
	StartedAt    *time.Time
	StoppedAt    *time.Time
	ExpiresAt    *time.Time
}

// VMFilter selects VMs for ListVMs and pages through them.
type VMFilter struct {
	Node  string
	State string // exact state; when set, IncludeStopped is irrelevant
	// Labels must all be present with these values.
	Labels map[string]string
	// IncludeStopped lists stopped VMs too (when State is empty).
	IncludeStopped bool
	// PageSize <= 0 means DefaultPageSize; it is capped at MaxPageSize.
	PageSize int
	// PageToken is the nextPageToken of the previous page, "" for the first.
	PageToken string
}

// Page sizes of ListVMs.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

const vmColumns = `id, node, image_id, layer_id, instance_type, arch, boot_args, labels, state, last_error,
	restarts, uid, created_at, started_at, stopped_at, expires_at`

func scanVM(row scanner) (VM, error) {
	var (
		vm  VM
		uid int64
	)
	err := row.Scan(&vm.ID, &vm.Node, &vm.ImageID, &vm.LayerID, &vm.InstanceType, &vm.Arch, &vm.BootArgs,
		jsonValue{&vm.Labels}, &vm.State, &vm.LastError, &vm.Restarts, &uid,
		timeCol{&vm.CreatedAt}, nullTimeCol{&vm.StartedAt}, nullTimeCol{&vm.StoppedAt}, nullTimeCol{&vm.ExpiresAt})
	vm.UID = uint32(uid)
	if len(vm.Labels) == 0 {
		vm.Labels = nil
	}
	return vm, err
}

// CreateVM records a new VM. An existing id is ErrExists; an ImageID or
// LayerID that is set must name an existing image or layer (ErrNotFound).
// A zero CreatedAt means now.
func (s *Store) CreateVM(ctx context.Context, vm VM) (VM, error) {
	switch {
	case vm.ID == "":
		return VM{}, invalid("vm id", "empty")
	case vm.Node == "":
		return VM{}, invalid("vm node", "empty")
	case vm.State == "":
		return VM{}, invalid("vm state", "empty")
	case vm.Restarts < 0:
		return VM{}, invalid("vm restarts", "negative (%d)", vm.Restarts)
	}
	for k := range vm.Labels {
		if k == "" {
			return VM{}, invalid("vm labels", "empty key")
		}
	}
	labels := vm.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	labelsJSON, err := jsonArg(labels)
	if err != nil {
		return VM{}, fmt.Errorf("create vm %s: encode labels: %w", vm.ID, err)
	}
	if vm.CreatedAt.IsZero() {
		vm.CreatedAt = s.now()
	}
	var got VM
	err = s.inTx(ctx, func(c conn) error {
		// Locked for share, so a concurrent DeleteImage/DeleteLayer either
		// sees this VM or finishes first and we see the image gone.
		if vm.ImageID != "" {
			if err := mustExist(ctx, c, "image", `SELECT id FROM images WHERE id = ?`+c.d.forShare, vm.ImageID); err != nil {
				return err
			}
		}
		if vm.LayerID != "" {
			if err := mustExist(ctx, c, "layer", `SELECT id FROM layers WHERE id = ?`+c.d.forShare, vm.LayerID); err != nil {
				return err
			}
		}
		var err error
		got, err = scanVM(c.queryRow(ctx, `INSERT INTO vms (`+vmColumns+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO NOTHING
			RETURNING `+vmColumns,
			vm.ID, vm.Node, vm.ImageID, vm.LayerID, vm.InstanceType, vm.Arch, vm.BootArgs, labelsJSON,
			vm.State, vm.LastError, vm.Restarts, int64(vm.UID), s.d.time(vm.CreatedAt),
			s.d.timePtr(vm.StartedAt), s.d.timePtr(vm.StoppedAt), s.d.timePtr(vm.ExpiresAt)))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("vm %s: %w", vm.ID, ErrExists)
		}
		return err
	})
	if err != nil {
		return VM{}, fmt.Errorf("create vm %s: %w", vm.ID, err)
	}
	return got, nil
}

// GetVM returns the VM with that id.
func (s *Store) GetVM(ctx context.Context, id string) (VM, error) {
	vm, err := scanVM(s.conn().queryRow(ctx, `SELECT `+vmColumns+` FROM vms WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return VM{}, fmt.Errorf("vm %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return VM{}, fmt.Errorf("get vm %s: %w", id, err)
	}
	return vm, nil
}

// ListVMs returns one page of the VMs matching f, ordered by id, and the
// token of the next page ("" after the last page). Pages are keyed on the
// last id seen, so VMs created or deleted between calls neither shift nor
// repeat the others.
func (s *Store) ListVMs(ctx context.Context, f VMFilter) ([]VM, string, error) {
	size := f.PageSize
	if size <= 0 {
		size = DefaultPageSize
	}
	size = min(size, MaxPageSize)

	var (
		where []string
		args  []any
	)
	if f.PageToken != "" {
		after, err := decodePageToken(f.PageToken)
		if err != nil {
			return nil, "", fmt.Errorf("list vms: %w", err)
		}
		where = append(where, "id > ?")
		args = append(args, after)
	}
	if f.Node != "" {
		where = append(where, "node = ?")
		args = append(args, f.Node)
	}
	switch {
	case f.State != "":
		where = append(where, "state = ?")
		args = append(args, f.State)
	case !f.IncludeStopped:
		where = append(where, "state <> ?")
		args = append(args, StateStopped)
	}
	// Sorted keys give the same SQL text for the same filter shape, which
	// PostgreSQL's prepared-statement cache can reuse.
	for _, k := range slices.Sorted(maps.Keys(f.Labels)) {
		where = append(where, s.d.labelMatch)
		args = append(args, k, f.Labels[k])
	}
	query := `SELECT ` + vmColumns + ` FROM vms`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	// One row more than the page tells whether another page follows.
	query += ` ORDER BY id LIMIT ?`
	args = append(args, size+1)

	vms, err := queryAll(ctx, s.conn(), scanVM, query, args...)
	if err != nil {
		return nil, "", fmt.Errorf("list vms: %w", err)
	}
	if len(vms) <= size {
		return vms, "", nil
	}
	vms = vms[:size]
	return vms, encodePageToken(vms[size-1].ID), nil
}

// pageTokenPrefix marks tokens this package made, so that a token from
// elsewhere (or mangled) is refused instead of silently restarting a list.
const pageTokenPrefix = "vm>"

func encodePageToken(lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenPrefix + lastID))
}

func decodePageToken(token string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return "", fmt.Errorf("%w: not base64url", ErrBadPageToken)
	}
	after, ok := strings.CutPrefix(string(b), pageTokenPrefix)
	if !ok || after == "" || !utf8.ValidString(after) {
		return "", fmt.Errorf("%w: not a token of this list", ErrBadPageToken)
	}
	return after, nil
}

// UpdateVMState moves a VM to state to and records lastError (empty
// clears it). from lists the states the VM may be in; if it is in another
// one the update is refused with ErrConflict and nothing changes; an empty
// from allows any. Entering running sets StartedAt; entering stopped,
// failed or lost sets StoppedAt. It returns the updated VM.
func (s *Store) UpdateVMState(ctx context.Context, id string, from []string, to, lastError string) (VM, error) {
	if to == "" {
		return VM{}, invalid("vm state", "empty")
	}
	set := `state = ?, last_error = ?`
	args := []any{to, lastError}
	switch to {
	case StateRunning:
		set += `, started_at = ?`
		args = append(args, s.d.time(s.now()))
	case StateStopped, StateFailed, StateLost:
		set += `, stopped_at = ?`
		args = append(args, s.d.time(s.now()))
	}
	query := `UPDATE vms SET ` + set + ` WHERE id = ?`
	args = append(args, id)
	if len(from) > 0 {
		query += ` AND state IN (` + placeholders(len(from)) + `)`
		for _, st := range from {
			args = append(args, st)
		}
	}
	vm, err := scanVM(s.conn().queryRow(ctx, query+` RETURNING `+vmColumns, args...))
	if err == nil {
		return vm, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return VM{}, fmt.Errorf("set vm %s state %s: %w", id, to, err)
	}
	// Nothing matched: either no such VM or it is in a state not allowed.
	var current string
	err = s.conn().queryRow(ctx, `SELECT state FROM vms WHERE id = ?`, id).Scan(&current)
	if errors.Is(err, sql.ErrNoRows) {
		return VM{}, fmt.Errorf("vm %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return VM{}, fmt.Errorf("set vm %s state %s: %w", id, to, err)
	}
	return VM{}, fmt.Errorf("set vm %s state %s: it is %s, not %s: %w",
		id, to, current, strings.Join(from, " or "), ErrConflict)
}

// IncrementRestarts adds one to the VM's restart count and returns the new
// count.
func (s *Store) IncrementRestarts(ctx context.Context, id string) (int, error) {
	var n int
	err := s.conn().queryRow(ctx, `UPDATE vms SET restarts = restarts + 1 WHERE id = ? RETURNING restarts`, id).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("vm %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("count restart of vm %s: %w", id, err)
	}
	return n, nil
}

// SetVMUID records the jail uid the VM runs as (0 = none).
func (s *Store) SetVMUID(ctx context.Context, id string, uid uint32) error {
	res, err := s.conn().exec(ctx, `UPDATE vms SET uid = ? WHERE id = ?`, int64(uid), id)
	if err != nil {
		return fmt.Errorf("set uid of vm %s: %w", id, err)
	}
	n, err := rowsAffected(res)
	if err != nil {
		return fmt.Errorf("set uid of vm %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("vm %s: %w", id, ErrNotFound)
	}
	return nil
}
