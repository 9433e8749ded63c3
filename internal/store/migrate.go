package store

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"time"
)

// Each engine has its own directory of numbered schema files
// (0001_init.sql, 0002_...): the DDL differs in types, while every query in
// this package is shared. Both directories hold the same versions.
//
//go:embed migrations
var migrationFiles embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads dir, requiring versions 1..n without gaps.
func loadMigrations(fsys fs.FS, dir string) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("migration %s/%s: not a .sql file", dir, name)
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v < 1 {
			return nil, fmt.Errorf("migration %s/%s: name must be NNNN_description.sql", dir, name)
		}
		body, err := fs.ReadFile(fsys, path.Join(dir, name))
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: name, sql: string(body)})
	}
	// ReadDir sorts by name and the numbers are zero-padded, so the order is
	// the version order; a gap or a duplicate shows here.
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s/%s: expected version %d", dir, m.name, i+1)
		}
	}
	return ms, nil
}

// LatestSchemaVersion is the schema version this build of the store migrates to.
// The migration files are compiled in, so an error here is a build mistake,
// which the package's tests catch.
func LatestSchemaVersion() int {
	ms, err := loadMigrations(migrationFiles, sqliteDialect.migrations)
	if err != nil {
		panic(err)
	}
	return len(ms)
}

// migrate applies pending migrations, one transaction each, so a failure
// leaves the schema at the last complete version. Each transaction first
// takes the engine's migration lock (PostgreSQL: an advisory lock; SQLite:
// the write lock its transactions take at BEGIN) and only then reads the
// version, so two processes migrating at once apply each step once.
func (s *Store) migrate(ctx context.Context) error {
	ms, err := loadMigrations(s.migrations, s.d.migrations)
	if err != nil {
		return err
	}
	for {
		applied, err := s.migrateOne(ctx, ms)
		if err != nil {
			return err
		}
		if !applied {
			return nil
		}
	}
}

func (s *Store) migrateOne(ctx context.Context, ms []migration) (applied bool, err error) {
	err = s.inTx(ctx, func(c conn) error {
		if s.d.migrationLock != "" {
			if _, err := c.exec(ctx, s.d.migrationLock); err != nil {
				return fmt.Errorf("take migration lock: %w", err)
			}
		}
		if _, err := c.exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version INTEGER PRIMARY KEY,
			name TEXT NOT NULL,
			applied_at TEXT NOT NULL
		)`); err != nil {
			return fmt.Errorf("create schema_migrations: %w", err)
		}
		current, err := schemaVersion(ctx, c)
		if err != nil {
			return err
		}
		if current > len(ms) {
			return fmt.Errorf("database schema version %d is newer than this program's %d; upgrade hyper", current, len(ms))
		}
		if current == len(ms) {
			return nil
		}
		m := ms[current]
		// Unbound: schema files are not queries with placeholders.
		if _, err := c.q.ExecContext(ctx, m.sql); err != nil {
			return fmt.Errorf("apply %s: %w", m.name, err)
		}
		if _, err := c.exec(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
			m.version, m.name, s.now().Format(time.RFC3339Nano)); err != nil {
			return fmt.Errorf("record %s: %w", m.name, err)
		}
		applied = true
		return nil
	})
	return applied, err
}

func schemaVersion(ctx context.Context, c conn) (int, error) {
	var v int
	if err := c.queryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// SchemaVersion reports the version the database is at.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	return schemaVersion(ctx, s.conn())
}
