package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Image is a loaded OCI image: an ext4 base disk on the layer medium.
type Image struct {
	ID     string // sha256 of the content
	Ref    string
	Label  string
	Digest string
	Arch   string
	Size   int64
	// Config is the subset of the OCI config the guest needs, as JSON.
	Config    json.RawMessage
	CreatedAt time.Time
}

// Layer is a frozen writable disk, on an image (ParentID "") or on another
// layer.
type Layer struct {
	ID        string
	ParentID  string
	ImageID   string
	Node      string // the node that holds it
	Label     string
	Size      int64
	CreatedAt time.Time
}

// LayerFilter selects layers; empty fields match everything.
type LayerFilter struct {
	ImageID string
	Node    string
}

const imageColumns = `id, ref, label, digest, arch, size, config, created_at`

func scanImage(row scanner) (Image, error) {
	var im Image
	err := row.Scan(&im.ID, &im.Ref, &im.Label, &im.Digest, &im.Arch, &im.Size, jsonCol{&im.Config}, timeCol{&im.CreatedAt})
	return im, err
}

// PutImage records an image. Images are content addressed, so putting an id
// that exists changes nothing: it returns the stored row and created=false.
// A zero CreatedAt means now.
func (s *Store) PutImage(ctx context.Context, im Image) (Image, bool, error) {
	if im.ID == "" {
		return Image{}, false, invalid("image id", "empty")
	}
	if im.Size < 0 {
		return Image{}, false, invalid("image size", "negative (%d)", im.Size)
	}
	config, err := rawJSONArg("image config", im.Config)
	if err != nil {
		return Image{}, false, err
	}
	if im.CreatedAt.IsZero() {
		im.CreatedAt = s.now()
	}
	got, err := scanImage(s.conn().queryRow(ctx, `INSERT INTO images (`+imageColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO NOTHING
		RETURNING `+imageColumns,
		im.ID, im.Ref, im.Label, im.Digest, im.Arch, im.Size, config, s.d.time(im.CreatedAt)))
	switch {
	case err == nil:
		return got, true, nil
	case errors.Is(err, sql.ErrNoRows):
		existing, err := s.GetImage(ctx, im.ID)
		if err != nil {
			return Image{}, false, fmt.Errorf("put image %s: %w", im.ID, err)
		}
		return existing, false, nil
	default:
		return Image{}, false, fmt.Errorf("put image %s: %w", im.ID, err)
	}
}

// GetImage returns the image with that id.
func (s *Store) GetImage(ctx context.Context, id string) (Image, error) {
	im, err := scanImage(s.conn().queryRow(ctx, `SELECT `+imageColumns+` FROM images WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Image{}, fmt.Errorf("image %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Image{}, fmt.Errorf("get image %s: %w", id, err)
	}
	return im, nil
}

// ListImages returns every image ordered by id.
func (s *Store) ListImages(ctx context.Context) ([]Image, error) {
	images, err := queryAll(ctx, s.conn(), scanImage, `SELECT `+imageColumns+` FROM images ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return images, nil
}

// DeleteImage removes an image's row. It is refused with an *InUseError
// while layers are built on it or VMs run from it (stopped, failed and lost
// VMs hold no disk, so they do not count).
func (s *Store) DeleteImage(ctx context.Context, id string) error {
	err := s.inTx(ctx, func(c conn) error {
		// Locking the row makes a concurrent CreateVM or PutLayer on this
		// image (which lock it for share) wait for the outcome.
		var found string
		err := c.queryRow(ctx, `SELECT id FROM images WHERE id = ?`+c.d.forUpdate, id).Scan(&found)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("image %s: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		users, err := collectUsers(ctx, c, id,
			userQuery{"vm", `SELECT id FROM vms WHERE image_id = ? AND state NOT IN ('stopped', 'failed', 'lost') ORDER BY id`},
			userQuery{"layer", `SELECT id FROM layers WHERE image_id = ? ORDER BY id`})
		if err != nil {
			return err
		}
		if len(users) > 0 {
			return &InUseError{Kind: "image", ID: id, Users: users}
		}
		_, err = c.exec(ctx, `DELETE FROM images WHERE id = ?`, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete image %s: %w", id, err)
	}
	return nil
}

type userQuery struct {
	kind  string
	query string // selects ids, with one ? for the object's id
}

// collectUsers lists "<kind> <user id>" for every row the queries find for
// the object id.
func collectUsers(ctx context.Context, c conn, id string, queries ...userQuery) ([]string, error) {
	var users []string
	for _, uq := range queries {
		found, err := queryAll(ctx, c, func(r scanner) (string, error) {
			var user string
			err := r.Scan(&user)
			return uq.kind + " " + user, err
		}, uq.query, id)
		if err != nil {
			return nil, err
		}
		users = append(users, found...)
	}
	return users, nil
}

const layerColumns = `id, parent_id, image_id, node, label, size, created_at`

func scanLayer(row scanner) (Layer, error) {
	var (
		l      Layer
		parent sql.NullString
	)
	err := row.Scan(&l.ID, &parent, &l.ImageID, &l.Node, &l.Label, &l.Size, timeCol{&l.CreatedAt})
	l.ParentID = parent.String
	return l, err
}

// PutLayer records a new layer. Its image, and its parent if it has one,
// must exist (ErrNotFound otherwise); an existing id is ErrExists. A zero
// CreatedAt means now.
func (s *Store) PutLayer(ctx context.Context, l Layer) (Layer, error) {
	switch {
	case l.ID == "":
		return Layer{}, invalid("layer id", "empty")
	case l.ImageID == "":
		return Layer{}, invalid("layer image id", "empty")
	case l.ParentID == l.ID:
		return Layer{}, invalid("layer parent id", "layer %s cannot be its own parent", l.ID)
	case l.Size < 0:
		return Layer{}, invalid("layer size", "negative (%d)", l.Size)
	}
	if l.CreatedAt.IsZero() {
		l.CreatedAt = s.now()
	}
	var parent any
	if l.ParentID != "" {
		parent = l.ParentID
	}
	var got Layer
	err := s.inTx(ctx, func(c conn) error {
		if err := mustExist(ctx, c, "image", `SELECT id FROM images WHERE id = ?`+c.d.forShare, l.ImageID); err != nil {
			return err
		}
		if l.ParentID != "" {
			if err := mustExist(ctx, c, "parent layer", `SELECT id FROM layers WHERE id = ?`+c.d.forShare, l.ParentID); err != nil {
				return err
			}
		}
		var err error
		got, err = scanLayer(c.queryRow(ctx, `INSERT INTO layers (`+layerColumns+`)
			VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO NOTHING
			RETURNING `+layerColumns,
			l.ID, parent, l.ImageID, l.Node, l.Label, l.Size, s.d.time(l.CreatedAt)))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("layer %s: %w", l.ID, ErrExists)
		}
		return err
	})
	if err != nil {
		return Layer{}, fmt.Errorf("put layer %s: %w", l.ID, err)
	}
	return got, nil
}

// mustExist runs a query selecting one id and turns "no row" into
// ErrNotFound for what.
func mustExist(ctx context.Context, c conn, what, query, id string) error {
	var found string
	err := c.queryRow(ctx, query, id).Scan(&found)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s %s: %w", what, id, ErrNotFound)
	}
	return err
}

// GetLayer returns the layer with that id.
func (s *Store) GetLayer(ctx context.Context, id string) (Layer, error) {
	l, err := scanLayer(s.conn().queryRow(ctx, `SELECT `+layerColumns+` FROM layers WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Layer{}, fmt.Errorf("layer %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Layer{}, fmt.Errorf("get layer %s: %w", id, err)
	}
	return l, nil
}

// ListLayers returns the layers matching f, ordered by id.
func (s *Store) ListLayers(ctx context.Context, f LayerFilter) ([]Layer, error) {
	query := `SELECT ` + layerColumns + ` FROM layers WHERE 1 = 1`
	var args []any
	if f.ImageID != "" {
		query += ` AND image_id = ?`
		args = append(args, f.ImageID)
	}
	if f.Node != "" {
		query += ` AND node = ?`
		args = append(args, f.Node)
	}
	layers, err := queryAll(ctx, s.conn(), scanLayer, query+` ORDER BY id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list layers: %w", err)
	}
	return layers, nil
}

// DeleteLayer removes a layer's row. It is refused with an *InUseError
// while child layers or VMs use it (stopped, failed and lost VMs do not).
func (s *Store) DeleteLayer(ctx context.Context, id string) error {
	err := s.inTx(ctx, func(c conn) error {
		var found string
		err := c.queryRow(ctx, `SELECT id FROM layers WHERE id = ?`+c.d.forUpdate, id).Scan(&found)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("layer %s: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		users, err := collectUsers(ctx, c, id,
			userQuery{"vm", `SELECT id FROM vms WHERE layer_id = ? AND state NOT IN ('stopped', 'failed', 'lost') ORDER BY id`},
			userQuery{"layer", `SELECT id FROM layers WHERE parent_id = ? ORDER BY id`})
		if err != nil {
			return err
		}
		if len(users) > 0 {
			return &InUseError{Kind: "layer", ID: id, Users: users}
		}
		_, err = c.exec(ctx, `DELETE FROM layers WHERE id = ?`, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete layer %s: %w", id, err)
	}
	return nil
}
