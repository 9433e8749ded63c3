// Package store is Hyper's metadata store: cluster membership (node leases),
// images, layers, VMs and per-node uid claims.
//
// One schema runs on two engines: SQLite (a file, the single-node default) and
// PostgreSQL (a cluster, every node pointing at the same database). Both sit
// behind database/sql and share every query; a small dialect value covers the
// few places where the engines differ (placeholders, row locks, JSON access,
// timestamps and the migration lock). Open applies the schema migrations.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"modernc.org/sqlite" // also registers the "sqlite" database/sql driver
)

// Engine names returned by Store.Engine.
const (
	EngineSQLite   = "sqlite"
	EnginePostgres = "postgres"
)

// Store is the metadata store. It is safe for concurrent use.
type Store struct {
	db    *sql.DB
	d     *dialect
	clock func() time.Time
	// migrations holds migrations/<engine>/NNNN_*.sql.
	migrations fs.FS
}

// Option configures Open.
type Option func(*options)

type options struct {
	clock        func() time.Time
	maxOpenConns int
	migrations   fs.FS // tests replace the schema files
}

// WithClock replaces time.Now as the source of the timestamps the store sets
// itself (created, started, stopped, lease renewal); for tests.
func WithClock(now func() time.Time) Option {
	return func(o *options) { o.clock = now }
}

// WithMaxOpenConns bounds the PostgreSQL connection pool (default 8). Every
// node of a cluster holds its own pool against one server, so the default
// is kept small. SQLite always uses one connection.
func WithMaxOpenConns(n int) Option {
	return func(o *options) { o.maxOpenConns = n }
}

// Open connects to the store at rawURL and brings its schema up to date.
//
// rawURL is "postgres://..." or "postgresql://..." for PostgreSQL (the database
// must exist), and "sqlite:///abs/path/hyper.db" or a plain absolute path for
// SQLite (the file is created if missing; its directory must exist).
func Open(ctx context.Context, rawURL string, opts ...Option) (*Store, error) {
	o := options{clock: time.Now, maxOpenConns: 8, migrations: migrationFiles}
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxOpenConns < 1 {
		return nil, invalid("max open connections", "must be at least 1, got %d", o.maxOpenConns)
	}

	var (
		s   *Store
		err error
	)
	switch {
	case rawURL == "":
		return nil, invalid("store url", "empty; want postgres://..., sqlite:///abs/path or an absolute path")
	case strings.HasPrefix(rawURL, "postgres://"), strings.HasPrefix(rawURL, "postgresql://"):
		s, err = openPostgres(rawURL, o)
	case strings.HasPrefix(rawURL, "sqlite:"):
		var path string
		path, err = sqlitePathFromURL(rawURL)
		if err == nil {
			s, err = openSQLite(path, o)
		}
	case filepath.IsAbs(rawURL):
		s, err = openSQLite(rawURL, o)
	default:
		return nil, invalid("store url", "%q is neither a postgres:// or sqlite:// URL nor an absolute path", redact(rawURL))
	}
	if err != nil {
		return nil, err
	}
	if err := s.connect(ctx); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("connect to %s store %s: %w", s.d.engine, redact(rawURL), err)
	}
	if err := s.migrate(ctx); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("migrate %s store %s: %w", s.d.engine, redact(rawURL), err)
	}
	return s, nil
}

// connectTimeout bounds the retries of a first connection to a SQLite
// file that another process is setting up.
const connectTimeout = 10 * time.Second

// connect opens the first connection. SQLite answers SQLITE_BUSY at once,
// without its busy handler, to a connection that opens a new file while
// another connection switches it to WAL; that passes within milliseconds,
// so such a connection is retried.
func (s *Store) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	wait := 5 * time.Millisecond
	for {
		err := s.db.PingContext(ctx)
		if err == nil || s.d.engine != "sqlite" || !isSQLiteBusy(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// sqliteBusy is SQLite's primary result code SQLITE_BUSY.
const sqliteBusy = 5

func isSQLiteBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqliteBusy
}

// Close releases the store's connections.
func (s *Store) Close() error { return s.db.Close() }

// Engine is "sqlite" or "postgres".
func (s *Store) Engine() string { return s.d.engine }

func openPostgres(rawURL string, o options) (*Store, error) {
	cfg, err := pgx.ParseConfig(rawURL)
	if err != nil {
		return nil, invalid("store url", "%v", err)
	}
	// Names Hyper's sessions in pg_stat_activity unless the URL does.
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "hyper"
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(o.maxOpenConns)
	db.SetMaxIdleConns(o.maxOpenConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return &Store{db: db, d: postgresDialect, clock: o.clock, migrations: o.migrations}, nil
}

func sqlitePathFromURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", invalid("store url", "%v", err)
	}
	if u.Scheme != "sqlite" || u.Host != "" || u.Opaque != "" || u.RawQuery != "" || u.Fragment != "" || !filepath.IsAbs(u.Path) {
		return "", invalid("store url", "%q: want sqlite:///absolute/path with no host or query", raw)
	}
	return u.Path, nil
}

func openSQLite(path string, o options) (*Store, error) {
	path = filepath.Clean(path)
	if fi, err := os.Stat(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("sqlite store %s: %w", path, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("sqlite store %s: %s is not a directory", path, filepath.Dir(path))
	}
	// The name goes through SQLite's URI parser, so escape it: a '?' or '#'
	// in a directory name must not start the parameter list.
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "foreign_keys(1)")
	// Every transaction takes the write lock at BEGIN: a deferred
	// transaction that reads and then writes can fail with SQLITE_BUSY
	// without waiting when another connection wrote in between.
	q.Set("_txlock", "immediate")
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlite store %s: %w", path, err)
	}
	// SQLite admits one writer at a time. A single connection queues this
	// process's callers in Go's pool instead of in SQLite's busy-wait
	// polling; busy_timeout still covers another process (or another Open)
	// on the same file.
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	return &Store{db: db, d: sqliteDialect, clock: o.clock, migrations: o.migrations}, nil
}

// redact hides the password of a URL that goes into an error message.
func redact(raw string) string {
	u, err := url.Parse(raw)
	switch {
	case err != nil && strings.Contains(raw, "@"):
		return "(unparsable URL)"
	case err != nil || u.User == nil:
		return raw
	}
	return u.Redacted()
}

// now is the store's clock, in the form every engine keeps exactly:
// UTC with microsecond precision.
func (s *Store) now() time.Time { return normTime(s.clock()) }

func normTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// dialect holds what differs between the engines. Queries are written once,
// with ? placeholders.
type dialect struct {
	engine string
	// migrations is the directory of this engine's schema files.
	migrations string
	// dollarParams: placeholders are $1, $2, ... instead of ?.
	dollarParams bool
	// forUpdate / forShare lock the rows a SELECT reads until the
	// transaction ends. SQLite needs neither: a transaction there holds
	// the database's write lock from its first statement.
	forUpdate, forShare string
	// labelMatch is a predicate on vms that one label (key ?, value ?)
	// must satisfy.
	labelMatch string
	// migrationLock serialises schema migrations between processes; it
	// runs first in every migration transaction.
	migrationLock string
	// timeArg turns a timestamp into the value the engine stores.
	timeArg func(time.Time) any
}

// migrationLockKey is the PostgreSQL advisory lock that serialises Hyper's
// schema migrations ("hyperstr" in ASCII).
const migrationLockKey int64 = 0x6879706572737472

var sqliteDialect = &dialect{
	engine:     EngineSQLite,
	migrations: "migrations/sqlite",
	labelMatch: "EXISTS (SELECT 1 FROM json_each(vms.labels) AS l WHERE l.key = ? AND l.value = ?)",
	// Fixed-width text sorts in time order and stays readable in the
	// sqlite3 shell.
	timeArg: func(t time.Time) any { return normTime(t).Format(sqliteTimeFormat) },
}

const sqliteTimeFormat = "2006-01-02T15:04:05.000000Z"

var postgresDialect = &dialect{
	engine:        EnginePostgres,
	migrations:    "migrations/postgres",
	dollarParams:  true,
	forUpdate:     " FOR UPDATE",
	forShare:      " FOR SHARE",
	labelMatch:    "vms.labels ->> ? = ?",
	migrationLock: "SELECT pg_advisory_xact_lock(" + strconv.FormatInt(migrationLockKey, 10) + ")",
	timeArg:       func(t time.Time) any { return normTime(t) },
}

// bind rewrites ? placeholders for the engine. Queries in this package never
// contain a literal question mark.
func (d *dialect) bind(query string) string {
	if !d.dollarParams {
		return query
	}
	var b strings.Builder
	b.Grow(len(query) + 16)
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(query[i])
	}
	return b.String()
}

func (d *dialect) time(t time.Time) any { return d.timeArg(t) }

// timePtr stores nil as NULL.
func (d *dialect) timePtr(t *time.Time) any {
	if t == nil {
		return nil
	}
	return d.timeArg(*t)
}

// timeOrNull stores the zero time as NULL.
func (d *dialect) timeOrNull(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return d.timeArg(t)
}

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// conn runs queries written with ? placeholders on a database or a
// transaction of the store's engine.
type conn struct {
	q querier
	d *dialect
}

func (c conn) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return c.q.ExecContext(ctx, c.d.bind(query), args...)
}

func (c conn) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return c.q.QueryContext(ctx, c.d.bind(query), args...)
}

func (c conn) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	return c.q.QueryRowContext(ctx, c.d.bind(query), args...)
}

func (s *Store) conn() conn { return conn{q: s.db, d: s.d} }

// scanner is a row: *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

// queryAll runs a query and scans every row with scan.
func queryAll[T any](ctx context.Context, c conn, scan func(scanner) (T, error), query string, args ...any) ([]T, error) {
	rows, err := c.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// inTx runs fn in a transaction, committing if it returns nil.
func (s *Store) inTx(ctx context.Context, fn func(c conn) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	if err := fn(conn{q: tx, d: s.d}); err != nil {
		if rbErr := tx.Rollback(); rbErr != nil && !errors.Is(rbErr, sql.ErrTxDone) {
			return errors.Join(err, fmt.Errorf("roll back: %w", rbErr))
		}
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// placeholders returns "?, ?, ?" for n values.
func placeholders(n int) string {
	if n == 0 {
		return ""
	}
	return strings.Repeat("?, ", n-1) + "?"
}

func rowsAffected(res sql.Result) (int64, error) {
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("rows affected: %w", err)
	}
	return n, nil
}
