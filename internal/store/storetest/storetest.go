// Package storetest gives tests a real, private metadata store: a SQLite
// file in the test's temporary directory, or a fresh database on the
// PostgreSQL server named by $HYPER_TEST_POSTGRES_URL.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hypervm/hyper/internal/store"
)

// PostgresEnv names the environment variable with the URL of a PostgreSQL
// server the tests may create databases on (hack/postgres.sh prints one).
const PostgresEnv = "HYPER_TEST_POSTGRES_URL"

// SQLiteURL returns the path of a new SQLite store file in t.TempDir().
func SQLiteURL(t testing.TB) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "hyper.db")
}

// SQLite opens a new SQLite store, closed when the test ends.
func SQLite(t testing.TB, opts ...store.Option) *store.Store {
	t.Helper()
	return open(t, SQLiteURL(t), opts...)
}

// RequirePostgres returns the server URL from $HYPER_TEST_POSTGRES_URL. When
// it is unset the test is skipped, except under CI (env CI set), where a
// missing PostgreSQL fails the test: CI must cover both engines.
func RequirePostgres(t testing.TB) string {
	t.Helper()
	u := os.Getenv(PostgresEnv)
	if u == "" {
		const why = PostgresEnv + " is not set; start a server with `make postgres-up` (hack/postgres.sh) and export the URL it prints"
		if os.Getenv("CI") != "" {
			t.Fatal(why + " (required under CI)")
		}
		t.Skip(why)
	}
	return u
}

// PostgresURL creates an empty database hyper_test_<random> on the server
// and returns its URL; the database is dropped when the test ends, after
// the cleanups registered later (such as closing a store on it).
func PostgresURL(t testing.TB) string {
	t.Helper()
	server := RequirePostgres(t)
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "hyper_test_" + hex.EncodeToString(b[:])
	admin(t, server, "CREATE DATABASE "+name)
	t.Cleanup(func() { admin(t, server, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })

	u, err := url.Parse(server)
	if err != nil {
		t.Fatalf("%s: %v", PostgresEnv, err)
	}
	u.Path = "/" + name
	return u.String()
}

// Postgres opens a store on a new database, closed (and dropped) when the
// test ends.
func Postgres(t testing.TB, opts ...store.Option) *store.Store {
	t.Helper()
	return open(t, PostgresURL(t), opts...)
}

func admin(t testing.TB, server, stmt string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Fatalf("connect to %s: %v", PostgresEnv, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, stmt); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
}

func open(t testing.TB, u string, opts ...store.Option) *store.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := store.Open(ctx, u, opts...)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}
