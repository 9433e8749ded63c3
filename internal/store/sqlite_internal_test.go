package store

import (
	"context"
	"path/filepath"
	"testing"
)

// The SQLite connection settings are what make the store safe to share
// between goroutines and processes; check they took effect.
func TestSQLiteConnectionSettings(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "hyper.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for pragma, want := range map[string]string{
		"journal_mode": "wal",
		"foreign_keys": "1",
		"busy_timeout": "10000",
		"synchronous":  "1", // NORMAL
	} {
		var got string
		if err := s.db.QueryRowContext(ctx, "PRAGMA "+pragma).Scan(&got); err != nil {
			t.Fatalf("PRAGMA %s: %v", pragma, err)
		}
		if got != want {
			t.Errorf("PRAGMA %s = %s, want %s", pragma, got, want)
		}
	}
	// The foreign keys back up the store's own checks.
	_, err = s.db.ExecContext(ctx, `INSERT INTO layers (id, image_id, created_at) VALUES ('l', 'no-such-image', 'x')`)
	if err == nil {
		t.Error("a layer on a missing image was accepted")
	}
}

func TestBindPlaceholders(t *testing.T) {
	for _, tc := range []struct{ in, sqlite, postgres string }{
		{"SELECT 1", "SELECT 1", "SELECT 1"},
		{"a = ? AND b IN (?, ?)", "a = ? AND b IN (?, ?)", "a = $1 AND b IN ($2, $3)"},
	} {
		if got := sqliteDialect.bind(tc.in); got != tc.sqlite {
			t.Errorf("sqlite bind(%q) = %q", tc.in, got)
		}
		if got := postgresDialect.bind(tc.in); got != tc.postgres {
			t.Errorf("postgres bind(%q) = %q", tc.in, got)
		}
	}
}
