package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// maxClaimAttempts bounds ClaimUID's retries. Every retry means another
// claimer took the uid we picked, so the loop only spins while others win.
const maxClaimAttempts = 1000

// ClaimUID gives vmID the lowest free uid in [lo, hi] on node. Under
// concurrency each uid goes to exactly one caller: the table's primary key
// (node, uid) settles races and the loser picks again. A VM that already
// holds a uid on the node gets that uid back, so a retried claim after a
// crash does not leak one (even if the range changed since). A full range
// is ErrExhausted.
func (s *Store) ClaimUID(ctx context.Context, node, vmID string, lo, hi uint32) (uint32, error) {
	switch {
	case node == "":
		return 0, invalid("node", "empty")
	case vmID == "":
		return 0, invalid("vm id", "empty")
	case lo == 0:
		return 0, invalid("uid range", "the lowest uid must be at least 1 (0 means no uid)")
	case lo > hi:
		return 0, invalid("uid range", "lowest %d is above highest %d", lo, hi)
	}
	c := s.conn()
	for range maxClaimAttempts {
		var held int64
		err := c.queryRow(ctx, `SELECT uid FROM uids WHERE node = ? AND vm_id = ?`, node, vmID).Scan(&held)
		if err == nil {
			return uint32(held), nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return 0, fmt.Errorf("claim uid on node %s for vm %s: %w", node, vmID, err)
		}

		// The lowest free uid is lo itself, or else one above a claimed
		// uid whose successor is free; indexed probes, no range scan.
		var next sql.NullInt64
		err = c.queryRow(ctx, `SELECT CASE
			WHEN NOT EXISTS (SELECT 1 FROM uids WHERE node = ? AND uid = CAST(? AS BIGINT)) THEN CAST(? AS BIGINT)
			ELSE (SELECT MIN(u.uid) + 1 FROM uids u
				WHERE u.node = ? AND u.uid >= ? AND u.uid < ?
				AND NOT EXISTS (SELECT 1 FROM uids n WHERE n.node = u.node AND n.uid = u.uid + 1))
			END`,
			node, int64(lo), int64(lo), node, int64(lo), int64(hi)).Scan(&next)
		if err != nil {
			return 0, fmt.Errorf("claim uid on node %s for vm %s: %w", node, vmID, err)
		}
		if !next.Valid {
			return 0, fmt.Errorf("claim uid on node %s for vm %s: all of %d-%d taken: %w", node, vmID, lo, hi, ErrExhausted)
		}
		// ON CONFLICT without a target covers both unique keys: the uid
		// was just taken, or this VM got one from a concurrent claim. Either
		// way the next round sorts it out.
		res, err := c.exec(ctx, `INSERT INTO uids (node, uid, vm_id, claimed_at) VALUES (?, ?, ?, ?)
			ON CONFLICT DO NOTHING`,
			node, next.Int64, vmID, s.d.time(s.now()))
		if err != nil {
			return 0, fmt.Errorf("claim uid %d on node %s for vm %s: %w", next.Int64, node, vmID, err)
		}
		n, err := rowsAffected(res)
		if err != nil {
			return 0, fmt.Errorf("claim uid %d on node %s for vm %s: %w", next.Int64, node, vmID, err)
		}
		if n == 1 {
			return uint32(next.Int64), nil
		}
	}
	return 0, fmt.Errorf("claim uid on node %s for vm %s: gave up after %d contended attempts", node, vmID, maxClaimAttempts)
}

// ClaimUIDExact gives vmID the uid on node if it is free, in one statement:
// for a node that tracks its own claims and knows which uid is free. It
// reports false when the uid is taken or vmID already holds a uid there;
// ClaimUID then sorts out which.
func (s *Store) ClaimUIDExact(ctx context.Context, node, vmID string, uid uint32) (bool, error) {
	switch {
	case node == "":
		return false, invalid("node", "empty")
	case vmID == "":
		return false, invalid("vm id", "empty")
	case uid == 0:
		return false, invalid("uid", "must be at least 1 (0 means no uid)")
	}
	res, err := s.conn().exec(ctx, `INSERT INTO uids (node, uid, vm_id, claimed_at) VALUES (?, ?, ?, ?)
		ON CONFLICT DO NOTHING`,
		node, int64(uid), vmID, s.d.time(s.now()))
	if err != nil {
		return false, fmt.Errorf("claim uid %d on node %s for vm %s: %w", uid, node, vmID, err)
	}
	n, err := rowsAffected(res)
	if err != nil {
		return false, fmt.Errorf("claim uid %d on node %s for vm %s: %w", uid, node, vmID, err)
	}
	return n == 1, nil
}

// ReleaseUID frees a uid on node. Releasing a free uid is not an error.
func (s *Store) ReleaseUID(ctx context.Context, node string, uid uint32) error {
	if _, err := s.conn().exec(ctx, `DELETE FROM uids WHERE node = ? AND uid = ?`, node, int64(uid)); err != nil {
		return fmt.Errorf("release uid %d on node %s: %w", uid, node, err)
	}
	return nil
}

// ListUIDClaims returns the node's claimed uids and the VM holding each.
func (s *Store) ListUIDClaims(ctx context.Context, node string) (map[uint32]string, error) {
	rows, err := s.conn().query(ctx, `SELECT uid, vm_id FROM uids WHERE node = ?`, node)
	if err != nil {
		return nil, fmt.Errorf("list uid claims on node %s: %w", node, err)
	}
	defer rows.Close()
	claims := make(map[uint32]string)
	for rows.Next() {
		var (
			uid int64
			vm  string
		)
		if err := rows.Scan(&uid, &vm); err != nil {
			return nil, fmt.Errorf("list uid claims on node %s: %w", node, err)
		}
		claims[uint32(uid)] = vm
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list uid claims on node %s: %w", node, err)
	}
	return claims, nil
}
