package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Node is a cluster member as its lease row describes it. A node whose
// RenewedAt is older than the cluster's lease TTL is dead.
type Node struct {
	Name      string
	Address   string
	RenewedAt time.Time
	// Budget is the node's budget snapshot, opaque to the store.
	Budget json.RawMessage
	// Images are the image and layer ids the node caches locally.
	Images   []string
	Cordoned bool
	Arch     string
	Driver   string
	Version  string
	// StartedAt is when the node's daemon started; zero if unknown.
	StartedAt time.Time
}

const nodeColumns = `name, address, renewed_at, budget, images, cordoned, arch, driver, version, started_at`

func scanNode(row scanner) (Node, error) {
	var n Node
	err := row.Scan(&n.Name, &n.Address, timeCol{&n.RenewedAt}, jsonCol{&n.Budget}, jsonValue{&n.Images},
		&n.Cordoned, &n.Arch, &n.Driver, &n.Version, zeroTimeCol{&n.StartedAt})
	return n, err
}

// RenewLease records a heartbeat of node n: it creates the node's row (with
// n.Cordoned) or replaces everything in it but Cordoned, which after that
// only SetCordoned changes. A zero RenewedAt means now, by this process's
// clock.
func (s *Store) RenewLease(ctx context.Context, n Node) error {
	if n.Name == "" {
		return invalid("node name", "empty")
	}
	renewed := n.RenewedAt
	if renewed.IsZero() {
		renewed = s.now()
	}
	budget, err := rawJSONArg("node budget", n.Budget)
	if err != nil {
		return err
	}
	images := n.Images
	if images == nil {
		images = []string{}
	}
	imagesJSON, err := jsonArg(images)
	if err != nil {
		return fmt.Errorf("renew lease of node %s: encode images: %w", n.Name, err)
	}
	_, err = s.conn().exec(ctx, `INSERT INTO nodes (`+nodeColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET
			address = excluded.address,
			renewed_at = excluded.renewed_at,
			budget = excluded.budget,
			images = excluded.images,
			arch = excluded.arch,
			driver = excluded.driver,
			version = excluded.version,
			started_at = excluded.started_at`,
		n.Name, n.Address, s.d.time(renewed), budget, imagesJSON, n.Cordoned,
		n.Arch, n.Driver, n.Version, s.d.timeOrNull(n.StartedAt))
	if err != nil {
		return fmt.Errorf("renew lease of node %s: %w", n.Name, err)
	}
	return nil
}

// GetNode returns the node called name.
func (s *Store) GetNode(ctx context.Context, name string) (Node, error) {
	n, err := scanNode(s.conn().queryRow(ctx, `SELECT `+nodeColumns+` FROM nodes WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return Node{}, fmt.Errorf("node %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return Node{}, fmt.Errorf("get node %s: %w", name, err)
	}
	return n, nil
}

// ListNodes returns every node, live or not, ordered by name.
func (s *Store) ListNodes(ctx context.Context) ([]Node, error) {
	nodes, err := queryAll(ctx, s.conn(), scanNode, `SELECT `+nodeColumns+` FROM nodes ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return nodes, nil
}

// SetCordoned sets or clears the node's cordon (no new VMs placed on it).
func (s *Store) SetCordoned(ctx context.Context, name string, cordoned bool) error {
	res, err := s.conn().exec(ctx, `UPDATE nodes SET cordoned = ? WHERE name = ?`, cordoned, name)
	if err != nil {
		return fmt.Errorf("cordon node %s: %w", name, err)
	}
	n, err := rowsAffected(res)
	if err != nil {
		return fmt.Errorf("cordon node %s: %w", name, err)
	}
	if n == 0 {
		return fmt.Errorf("node %s: %w", name, ErrNotFound)
	}
	return nil
}
