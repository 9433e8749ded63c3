package store

import "io/fs"

// WithMigrations makes Open apply the schema files in fsys (laid out like
// the embedded migrations/ directory) instead of the real ones.
func WithMigrations(fsys fs.FS) Option {
	return func(o *options) { o.migrations = fsys }
}

// LoadMigrations exposes the loader's checks to the tests.
func LoadMigrations(fsys fs.FS, dir string) (int, error) {
	ms, err := loadMigrations(fsys, dir)
	return len(ms), err
}

// MigrationFiles is the embedded schema.
var MigrationFiles = migrationFiles
