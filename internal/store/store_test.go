package store_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/goleak"

	"github.com/hypervm/hyper/internal/store"
	"github.com/hypervm/hyper/internal/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// engine makes fresh, empty stores of one kind for the conformance suite.
type engine struct {
	name string
	url  func(testing.TB) string
}

var engines = []engine{
	{store.EngineSQLite, storetest.SQLiteURL},
	{store.EnginePostgres, storetest.PostgresURL},
}

// open opens a new store of the engine, closed when the test ends.
func (e engine) open(t testing.TB, opts ...store.Option) *store.Store {
	t.Helper()
	return openURL(t, e.url(t), opts...)
}

func openURL(t testing.TB, u string, opts ...store.Option) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), u, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// suite is the conformance suite; every case runs on every engine, as
// TestStore/<engine>/<case>.
var suite = []struct {
	name string
	run  func(*testing.T, engine)
}{
	{"Open", testOpen},
	{"MigrateTwice", testMigrateTwice},
	{"MigrateConcurrent", testMigrateConcurrent},
	{"MigrationAtomic", testMigrationAtomic},
	{"MigrationNewerSchema", testMigrationNewerSchema},
	{"RenewLease", testRenewLease},
	{"GetNode", testGetNode},
	{"ListNodes", testListNodes},
	{"SetCordoned", testSetCordoned},
	{"PutImage", testPutImage},
	{"GetImage", testGetImage},
	{"ListImages", testListImages},
	{"DeleteImage", testDeleteImage},
	{"PutLayer", testPutLayer},
	{"ListLayers", testListLayers},
	{"DeleteLayer", testDeleteLayer},
	{"CreateVM", testCreateVM},
	{"CreateVMConcurrent", testCreateVMConcurrent},
	{"GetVM", testGetVM},
	{"ListVMsFilters", testListVMsFilters},
	{"ListVMsPageSizes", testListVMsPageSizes},
	{"ListVMsPagination", testListVMsPagination},
	{"ListVMsBadPageToken", testListVMsBadPageToken},
	{"UpdateVMState", testUpdateVMState},
	{"UpdateVMStateConcurrent", testUpdateVMStateConcurrent},
	{"IncrementRestarts", testIncrementRestarts},
	{"SetVMUID", testSetVMUID},
	{"ClaimUID", testClaimUID},
	{"ClaimUIDConcurrent", testClaimUIDConcurrent},
	{"ClaimUIDExact", testClaimUIDExact},
	{"ReleaseUID", testReleaseUID},
	{"ListUIDClaims", testListUIDClaims},
}

func TestStore(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			if e.name == store.EnginePostgres {
				storetest.RequirePostgres(t)
			}
			for _, tc := range suite {
				t.Run(tc.name, func(t *testing.T) { tc.run(t, e) })
			}
		})
	}
}

// clock is a settable time source for WithClock. Its times carry
// nanoseconds so the tests also see the store truncate to microseconds.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock {
	return &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 123456789, time.UTC)}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// stored is t as the store keeps it.
func stored(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func ptr[T any](v T) *T { return &v }

// cmpJSON compares raw JSON by meaning: PostgreSQL's JSONB does not keep
// the bytes it was given. (Two empty values are left to EquateEmpty.)
var cmpJSON = cmp.FilterValues(func(a, b json.RawMessage) bool { return len(a) > 0 || len(b) > 0 },
	cmp.Transformer("json", func(raw json.RawMessage) any {
		if raw == nil {
			return nil
		}
		var v any
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Sprintf("invalid JSON %q", raw)
		}
		return v
	}))

func diff(want, got any) string { return cmp.Diff(want, got, cmpJSON, cmpopts.EquateEmpty()) }

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want %v", err, target)
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func ok(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var ctx = context.Background()

// ---- Open and migrations ----

func TestOpenRejectsBadURLs(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"", "empty"},
		{"mysql://root@localhost/hyper", "neither"},
		{"relative/hyper.db", "neither"},
		{"sqlite://relative/hyper.db", "sqlite:///absolute/path"},
		{"sqlite:///tmp/hyper.db?mode=ro", "sqlite:///absolute/path"},
		{"postgres://u:s3cret@[::1", "store url"},
		{"mysql://u:s3cret@localhost/hyper", "neither"},
	} {
		_, err := store.Open(ctx, tc.url)
		if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%q) = %v, want ErrInvalid mentioning %q", tc.url, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Open(%q) error shows the password: %v", tc.url, err)
		}
	}
	if _, err := store.Open(ctx, "/nonexistent-dir/hyper.db"); err == nil || !strings.Contains(err.Error(), "/nonexistent-dir") {
		t.Errorf("Open in a missing directory = %v, want an error naming it", err)
	}
	_, err := store.Open(ctx, storetest.SQLiteURL(t), store.WithMaxOpenConns(0))
	wantErr(t, err, store.ErrInvalid)
}

func TestOpenUnreachablePostgresHidesPassword(t *testing.T) {
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := store.Open(c, "postgres://hyper:s3cret@127.0.0.1:1/hyper?sslmode=disable&connect_timeout=5")
	if err == nil {
		t.Fatal("Open of a closed port succeeded")
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error shows the password: %v", err)
	}
}

func TestMigrationFilesMatchAcrossEngines(t *testing.T) {
	n1, err := store.LoadMigrations(store.MigrationFiles, "migrations/sqlite")
	ok(t, err)
	n2, err := store.LoadMigrations(store.MigrationFiles, "migrations/postgres")
	ok(t, err)
	if n1 != n2 || n1 != store.LatestSchemaVersion() || n1 < 1 {
		t.Fatalf("sqlite has %d migrations, postgres %d, latest %d", n1, n2, store.LatestSchemaVersion())
	}
	for _, names := range []map[string]string{
		{"m/0001_a.sql": "", "m/0003_c.sql": ""},
		{"m/0001_a.sql": "", "m/01_b.sql": ""},
		{"m/a.sql": ""},
		{"m/0001_a.txt": ""},
	} {
		fsys := fstest.MapFS{}
		for name, body := range names {
			fsys[name] = &fstest.MapFile{Data: []byte(body)}
		}
		if _, err := store.LoadMigrations(fsys, "m"); err == nil {
			t.Errorf("migrations %v accepted", names)
		}
	}
}

func testOpen(t *testing.T, e engine) {
	u := e.url(t)
	s := openURL(t, u)
	if got := s.Engine(); got != e.name {
		t.Errorf("Engine() = %q, want %q", got, e.name)
	}
	must[store.Image](t)(func() (store.Image, error) {
		im, _, err := s.PutImage(ctx, store.Image{ID: "img"})
		return im, err
	}())

	// The other spelling of the same store sees the same data.
	var alt string
	switch e.name {
	case store.EngineSQLite:
		alt = "sqlite://" + u
	case store.EnginePostgres:
		alt = "postgresql://" + strings.TrimPrefix(u, "postgres://")
	}
	s2 := openURL(t, alt)
	must[store.Image](t)(s2.GetImage(ctx, "img"))

	if e.name == store.EngineSQLite {
		// Characters that mean something in a URI are just a name.
		dir := t.TempDir() + "/a dir?with#odd%chars"
		ok(t, mkdir(dir))
		s3 := openURL(t, dir+"/hyper.db")
		must[store.Image](t)(func() (store.Image, error) {
			im, _, err := s3.PutImage(ctx, store.Image{ID: "img"})
			return im, err
		}())
		if !fileExists(dir + "/hyper.db") {
			t.Errorf("no database file at %s/hyper.db", dir)
		}
	}
}

func testMigrateTwice(t *testing.T, e engine) {
	u := e.url(t)
	s1, err := store.Open(ctx, u)
	ok(t, err)
	_, _, err = s1.PutImage(ctx, store.Image{ID: "img", Ref: "docker.io/library/alpine"})
	ok(t, err)
	ok(t, s1.Close())

	s2 := openURL(t, u)
	v, err := s2.SchemaVersion(ctx)
	ok(t, err)
	if v != store.LatestSchemaVersion() {
		t.Errorf("schema version %d, want %d", v, store.LatestSchemaVersion())
	}
	im := must[store.Image](t)(s2.GetImage(ctx, "img"))
	if im.Ref != "docker.io/library/alpine" {
		t.Errorf("image after reopen: %+v", im)
	}
}

func testMigrateConcurrent(t *testing.T, e engine) {
	u := e.url(t)
	const n = 4
	stores := make([]*store.Store, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			stores[i], errs[i] = store.Open(ctx, u)
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Errorf("Open %d: %v", i, errs[i])
			continue
		}
		v, err := stores[i].SchemaVersion(ctx)
		if err != nil || v != store.LatestSchemaVersion() {
			t.Errorf("store %d: schema version %d, %v; want %d", i, v, err, store.LatestSchemaVersion())
		}
		ok(t, stores[i].Close())
	}
}

// testMigrationAtomic runs a migration that fails half way: nothing of it
// may remain, and fixing it lets the next Open finish the job.
func testMigrationAtomic(t *testing.T, e engine) {
	dir := "migrations/" + e.name + "/"
	one := &fstest.MapFile{Data: []byte("CREATE TABLE one (id INTEGER PRIMARY KEY);")}
	broken := fstest.MapFS{
		dir + "0001_one.sql": one,
		dir + "0002_two.sql": {Data: []byte(`CREATE TABLE two (id INTEGER PRIMARY KEY);
			INSERT INTO one (id) VALUES (1);
			SELECT * FROM no_such_table;`)},
	}
	fixed := fstest.MapFS{
		dir + "0001_one.sql": one,
		// Fails if the broken attempt left table two or the row behind.
		dir + "0002_two.sql": {Data: []byte(`CREATE TABLE two (id INTEGER PRIMARY KEY);
			INSERT INTO one (id) VALUES (1);`)},
	}
	u := e.url(t)
	_, err := store.Open(ctx, u, store.WithMigrations(broken))
	if err == nil || !strings.Contains(err.Error(), "0002_two.sql") {
		t.Fatalf("Open with a broken migration = %v, want an error naming 0002_two.sql", err)
	}
	s := openURL(t, u, store.WithMigrations(fstest.MapFS{dir + "0001_one.sql": one}))
	if v, err := s.SchemaVersion(ctx); err != nil || v != 1 {
		t.Fatalf("after the failed migration: version %d, %v; want 1", v, err)
	}
	s = openURL(t, u, store.WithMigrations(fixed))
	if v, err := s.SchemaVersion(ctx); err != nil || v != 2 {
		t.Fatalf("after the fixed migration: version %d, %v; want 2", v, err)
	}
}

func testMigrationNewerSchema(t *testing.T, e engine) {
	dir := "migrations/" + e.name + "/"
	two := fstest.MapFS{
		dir + "0001_a.sql": {Data: []byte("CREATE TABLE a (id INTEGER);")},
		dir + "0002_b.sql": {Data: []byte("CREATE TABLE b (id INTEGER);")},
	}
	u := e.url(t)
	openURL(t, u, store.WithMigrations(two))
	delete(two, dir+"0002_b.sql")
	_, err := store.Open(ctx, u, store.WithMigrations(two))
	if err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("Open of a newer schema = %v, want a 'newer' error", err)
	}
}

// ---- nodes ----

func testRenewLease(t *testing.T, e engine) {
	clk := newClock()
	s := e.open(t, store.WithClock(clk.Now))
	started := time.Date(2026, 11, 26, 11, 0, 0, 999, time.UTC)
	n := store.Node{
		Name:      "node-1",
		Address:   "10.1.2.3:7443",
		Budget:    json.RawMessage(`{"vcpus": 8, "memory": "16GiB", "disks": [1, 2]}`),
		Images:    []string{"sha256:aaa", "layer-1"},
		Arch:      "x86_64",
		Driver:    "qemu",
		Version:   "v0.1.0",
		StartedAt: started,
	}
	ok(t, s.RenewLease(ctx, n))
	want := n
	want.RenewedAt = stored(clk.Now())
	want.StartedAt = stored(started)
	if d := diff(want, must[store.Node](t)(s.GetNode(ctx, "node-1"))); d != "" {
		t.Errorf("after first lease (-want +got):\n%s", d)
	}

	// A renewal replaces everything; an explicit RenewedAt is kept.
	n2 := store.Node{Name: "node-1", Address: "10.1.2.4:7443", RenewedAt: clk.Advance(3 * time.Second).Add(-time.Second)}
	ok(t, s.RenewLease(ctx, n2))
	want = n2
	want.RenewedAt = stored(n2.RenewedAt)
	got := must[store.Node](t)(s.GetNode(ctx, "node-1"))
	if d := diff(want, got); d != "" {
		t.Errorf("after renewal (-want +got):\n%s", d)
	}
	if got.Budget != nil || !got.StartedAt.IsZero() {
		t.Errorf("cleared fields came back: budget %q, started %v", got.Budget, got.StartedAt)
	}

	wantErr(t, s.RenewLease(ctx, store.Node{Address: "x"}), store.ErrInvalid)
	wantErr(t, s.RenewLease(ctx, store.Node{Name: "n", Budget: json.RawMessage(`{"vcpus":`)}), store.ErrInvalid)
	if _, err := s.GetNode(ctx, "n"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a refused lease left a row behind: %v", err)
	}
}

func testGetNode(t *testing.T, e engine) {
	s := e.open(t)
	_, err := s.GetNode(ctx, "ghost")
	wantErr(t, err, store.ErrNotFound)
	if !strings.Contains(err.Error(), "ghost") {
		t.Errorf("error %q does not name the node", err)
	}
	ok(t, s.RenewLease(ctx, store.Node{Name: "real"}))
	if got := must[store.Node](t)(s.GetNode(ctx, "real")); got.Name != "real" || got.RenewedAt.IsZero() {
		t.Errorf("GetNode = %+v", got)
	}
}

func testListNodes(t *testing.T, e engine) {
	s := e.open(t)
	if nodes := must[[]store.Node](t)(s.ListNodes(ctx)); len(nodes) != 0 {
		t.Fatalf("empty store lists %d nodes", len(nodes))
	}
	for _, name := range []string{"b", "c", "a"} {
		ok(t, s.RenewLease(ctx, store.Node{Name: name, Address: name + ":1"}))
	}
	var names []string
	for _, n := range must[[]store.Node](t)(s.ListNodes(ctx)) {
		names = append(names, n.Name)
	}
	if d := cmp.Diff([]string{"a", "b", "c"}, names); d != "" {
		t.Errorf("ListNodes (-want +got):\n%s", d)
	}
}

func testSetCordoned(t *testing.T, e engine) {
	s := e.open(t)
	ok(t, s.RenewLease(ctx, store.Node{Name: "n1"}))
	ok(t, s.SetCordoned(ctx, "n1", true))
	if !must[store.Node](t)(s.GetNode(ctx, "n1")).Cordoned {
		t.Fatal("not cordoned after SetCordoned(true)")
	}
	// Heartbeats do not undo a cordon.
	ok(t, s.RenewLease(ctx, store.Node{Name: "n1", Cordoned: false}))
	if !must[store.Node](t)(s.GetNode(ctx, "n1")).Cordoned {
		t.Fatal("RenewLease cleared the cordon")
	}
	ok(t, s.SetCordoned(ctx, "n1", false))
	if must[store.Node](t)(s.GetNode(ctx, "n1")).Cordoned {
		t.Fatal("still cordoned after SetCordoned(false)")
	}
	wantErr(t, s.SetCordoned(ctx, "ghost", true), store.ErrNotFound)
}

// ---- images and layers ----

func putImage(t *testing.T, s *store.Store, id string) store.Image {
	t.Helper()
	im, _, err := s.PutImage(ctx, store.Image{ID: id, Size: 1 << 20})
	ok(t, err)
	return im
}

func testPutImage(t *testing.T, e engine) {
	clk := newClock()
	s := e.open(t, store.WithClock(clk.Now))
	im := store.Image{
		ID:     "sha256:0123",
		Ref:    "docker.io/library/alpine:3.20",
		Label:  "alpine",
		Digest: "sha256:feed",
		Arch:   "x86_64",
		Size:   64 << 20,
		Config: json.RawMessage(`{"Entrypoint":["/bin/sh"],"Env":["PATH=/bin"],"WorkingDir":"/"}`),
	}
	got, created, err := s.PutImage(ctx, im)
	ok(t, err)
	want := im
	want.CreatedAt = stored(clk.Now())
	if d := diff(want, got); !created || d != "" {
		t.Errorf("first put: created=%v (-want +got):\n%s", created, d)
	}

	clk.Advance(time.Hour)
	again, created, err := s.PutImage(ctx, store.Image{ID: im.ID, Ref: "other"})
	ok(t, err)
	if d := diff(want, again); created || d != "" {
		t.Errorf("second put of the same id: created=%v (-want +got):\n%s", created, d)
	}

	for _, bad := range []store.Image{
		{},
		{ID: "x", Size: -1},
		{ID: "x", Config: json.RawMessage(`{`)},
	} {
		_, _, err := s.PutImage(ctx, bad)
		wantErr(t, err, store.ErrInvalid)
	}
	_, err = s.GetImage(ctx, "x")
	wantErr(t, err, store.ErrNotFound)
}

func testGetImage(t *testing.T, e engine) {
	s := e.open(t)
	_, err := s.GetImage(ctx, "sha256:none")
	wantErr(t, err, store.ErrNotFound)
	put := putImage(t, s, "sha256:abc")
	got := must[store.Image](t)(s.GetImage(ctx, "sha256:abc"))
	if d := diff(put, got); d != "" {
		t.Errorf("GetImage (-want +got):\n%s", d)
	}
	if got.Config != nil {
		t.Errorf("no config put, got %q", got.Config)
	}
}

func testListImages(t *testing.T, e engine) {
	s := e.open(t)
	if got := must[[]store.Image](t)(s.ListImages(ctx)); len(got) != 0 {
		t.Fatalf("empty store lists %d images", len(got))
	}
	want := []store.Image{putImage(t, s, "b"), putImage(t, s, "a")}
	want[0], want[1] = want[1], want[0]
	if d := diff(want, must[[]store.Image](t)(s.ListImages(ctx))); d != "" {
		t.Errorf("ListImages (-want +got):\n%s", d)
	}
}

func createVM(t *testing.T, s *store.Store, vm store.VM) store.VM {
	t.Helper()
	if vm.Node == "" {
		vm.Node = "node-1"
	}
	if vm.State == "" {
		vm.State = store.StateRunning
	}
	got, err := s.CreateVM(ctx, vm)
	ok(t, err)
	return got
}

func wantInUse(t *testing.T, err error, kind, id string, users ...string) {
	t.Helper()
	wantErr(t, err, store.ErrInUse)
	var inUse *store.InUseError
	if !errors.As(err, &inUse) {
		t.Fatalf("%v is not an *InUseError", err)
	}
	want := &store.InUseError{Kind: kind, ID: id, Users: users}
	if d := cmp.Diff(want, inUse); d != "" {
		t.Errorf("InUseError (-want +got):\n%s", d)
	}
	for _, u := range users {
		if !strings.Contains(err.Error(), u) {
			t.Errorf("error %q does not name %q", err, u)
		}
	}
}

func testDeleteImage(t *testing.T, e engine) {
	s := e.open(t)
	putImage(t, s, "img")
	putImage(t, s, "other")
	_, err := s.PutLayer(ctx, store.Layer{ID: "l1", ImageID: "img"})
	ok(t, err)
	createVM(t, s, store.VM{ID: "v-run", ImageID: "img", State: "running"})
	createVM(t, s, store.VM{ID: "v-crash", ImageID: "img", State: "crashed"})
	createVM(t, s, store.VM{ID: "v-stop", ImageID: "img", State: "stopped"})
	// Failed and lost VMs hold no disk: they do not pin the image.
	createVM(t, s, store.VM{ID: "v-failed", ImageID: "img", State: "failed"})
	createVM(t, s, store.VM{ID: "v-lost", ImageID: "img", State: "lost"})
	createVM(t, s, store.VM{ID: "v-other", ImageID: "other", State: "running"})

	wantInUse(t, s.DeleteImage(ctx, "img"), "image", "img", "vm v-crash", "vm v-run", "layer l1")
	must[store.Image](t)(s.GetImage(ctx, "img"))

	for _, id := range []string{"v-run", "v-crash"} {
		must[store.VM](t)(s.UpdateVMState(ctx, id, nil, store.StateStopped, ""))
	}
	wantInUse(t, s.DeleteImage(ctx, "img"), "image", "img", "layer l1")
	ok(t, s.DeleteLayer(ctx, "l1"))
	ok(t, s.DeleteImage(ctx, "img"))
	_, err = s.GetImage(ctx, "img")
	wantErr(t, err, store.ErrNotFound)
	wantErr(t, s.DeleteImage(ctx, "img"), store.ErrNotFound)
	must[store.Image](t)(s.GetImage(ctx, "other"))
}

func testPutLayer(t *testing.T, e engine) {
	clk := newClock()
	s := e.open(t, store.WithClock(clk.Now))
	putImage(t, s, "img")
	l1 := store.Layer{ID: "l1", ImageID: "img", Node: "node-1", Label: "base", Size: 4096}
	got := must[store.Layer](t)(s.PutLayer(ctx, l1))
	want := l1
	want.CreatedAt = stored(clk.Now())
	if d := diff(want, got); d != "" {
		t.Errorf("PutLayer (-want +got):\n%s", d)
	}
	if d := diff(want, must[store.Layer](t)(s.GetLayer(ctx, "l1"))); d != "" {
		t.Errorf("GetLayer (-want +got):\n%s", d)
	}
	l2 := must[store.Layer](t)(s.PutLayer(ctx, store.Layer{ID: "l2", ParentID: "l1", ImageID: "img"}))
	if got := must[store.Layer](t)(s.GetLayer(ctx, "l2")); got.ParentID != "l1" || diff(l2, got) != "" {
		t.Errorf("child layer: put %+v, got %+v", l2, got)
	}

	_, err := s.PutLayer(ctx, store.Layer{ID: "l1", ImageID: "img"})
	wantErr(t, err, store.ErrExists)
	_, err = s.PutLayer(ctx, store.Layer{ID: "l3", ImageID: "ghost"})
	wantErr(t, err, store.ErrNotFound)
	_, err = s.PutLayer(ctx, store.Layer{ID: "l3", ImageID: "img", ParentID: "ghost"})
	wantErr(t, err, store.ErrNotFound)
	for _, bad := range []store.Layer{
		{ImageID: "img"},
		{ID: "l3"},
		{ID: "l3", ImageID: "img", ParentID: "l3"},
		{ID: "l3", ImageID: "img", Size: -5},
	} {
		_, err := s.PutLayer(ctx, bad)
		wantErr(t, err, store.ErrInvalid)
	}
	_, err = s.GetLayer(ctx, "l3")
	wantErr(t, err, store.ErrNotFound)
}

func testListLayers(t *testing.T, e engine) {
	s := e.open(t)
	putImage(t, s, "i1")
	putImage(t, s, "i2")
	for _, l := range []store.Layer{
		{ID: "a", ImageID: "i1", Node: "n1"},
		{ID: "b", ImageID: "i1", Node: "n2"},
		{ID: "c", ImageID: "i2", Node: "n1"},
		{ID: "d", ImageID: "i2", Node: "n2", ParentID: "c"},
	} {
		_, err := s.PutLayer(ctx, l)
		ok(t, err)
	}
	for _, tc := range []struct {
		f    store.LayerFilter
		want []string
	}{
		{store.LayerFilter{}, []string{"a", "b", "c", "d"}},
		{store.LayerFilter{ImageID: "i1"}, []string{"a", "b"}},
		{store.LayerFilter{Node: "n2"}, []string{"b", "d"}},
		{store.LayerFilter{ImageID: "i2", Node: "n1"}, []string{"c"}},
		{store.LayerFilter{ImageID: "none"}, nil},
	} {
		var ids []string
		for _, l := range must[[]store.Layer](t)(s.ListLayers(ctx, tc.f)) {
			ids = append(ids, l.ID)
		}
		if d := cmp.Diff(tc.want, ids, cmpopts.EquateEmpty()); d != "" {
			t.Errorf("ListLayers(%+v) (-want +got):\n%s", tc.f, d)
		}
	}
}

func testDeleteLayer(t *testing.T, e engine) {
	s := e.open(t)
	putImage(t, s, "img")
	for _, l := range []store.Layer{
		{ID: "l1", ImageID: "img"},
		{ID: "l2", ImageID: "img", ParentID: "l1"},
		{ID: "l3", ImageID: "img", ParentID: "l1"},
	} {
		_, err := s.PutLayer(ctx, l)
		ok(t, err)
	}
	createVM(t, s, store.VM{ID: "v1", ImageID: "img", LayerID: "l2", State: "booting"})
	createVM(t, s, store.VM{ID: "v2", ImageID: "img", LayerID: "l2", State: store.StateStopped})

	wantInUse(t, s.DeleteLayer(ctx, "l1"), "layer", "l1", "layer l2", "layer l3")
	wantInUse(t, s.DeleteLayer(ctx, "l2"), "layer", "l2", "vm v1")
	must[store.VM](t)(s.UpdateVMState(ctx, "v1", []string{"booting"}, store.StateStopped, ""))
	ok(t, s.DeleteLayer(ctx, "l2"))
	ok(t, s.DeleteLayer(ctx, "l3"))
	ok(t, s.DeleteLayer(ctx, "l1"))
	_, err := s.GetLayer(ctx, "l1")
	wantErr(t, err, store.ErrNotFound)
	wantErr(t, s.DeleteLayer(ctx, "l1"), store.ErrNotFound)
}

// ---- VMs ----

func testCreateVM(t *testing.T, e engine) {
	clk := newClock()
	s := e.open(t, store.WithClock(clk.Now))
	putImage(t, s, "img")
	_, err := s.PutLayer(ctx, store.Layer{ID: "layer", ImageID: "img"})
	ok(t, err)
	vm := store.VM{
		ID:           "vabcdefghijklmnop",
		Node:         "node-1",
		ImageID:      "img",
		LayerID:      "layer",
		InstanceType: "small",
		Arch:         "x86_64",
		BootArgs:     "console=ttyS0 quiet",
		Labels:       map[string]string{"app": "web", "tier": "front", "a.b/c": `we"ird`},
		State:        "creating",
		UID:          4294967295,
		ExpiresAt:    ptr(time.Date(2026, 12, 1, 0, 0, 0, 1500, time.UTC)),
	}
	got := must[store.VM](t)(s.CreateVM(ctx, vm))
	want := vm
	want.CreatedAt = stored(clk.Now())
	want.ExpiresAt = ptr(stored(*vm.ExpiresAt))
	if d := diff(want, got); d != "" {
		t.Errorf("CreateVM (-want +got):\n%s", d)
	}
	if d := diff(want, must[store.VM](t)(s.GetVM(ctx, vm.ID))); d != "" {
		t.Errorf("GetVM (-want +got):\n%s", d)
	}

	_, err = s.CreateVM(ctx, store.VM{ID: vm.ID, Node: "node-2", State: "creating"})
	wantErr(t, err, store.ErrExists)
	if got := must[store.VM](t)(s.GetVM(ctx, vm.ID)); got.Node != "node-1" {
		t.Errorf("a refused duplicate changed the VM: %+v", got)
	}
	_, err = s.CreateVM(ctx, store.VM{ID: "v2", Node: "n", State: "creating", ImageID: "ghost"})
	wantErr(t, err, store.ErrNotFound)
	_, err = s.CreateVM(ctx, store.VM{ID: "v2", Node: "n", State: "creating", LayerID: "ghost"})
	wantErr(t, err, store.ErrNotFound)
	for _, bad := range []store.VM{
		{Node: "n", State: "creating"},
		{ID: "v2", State: "creating"},
		{ID: "v2", Node: "n"},
		{ID: "v2", Node: "n", State: "creating", Labels: map[string]string{"": "x"}},
		{ID: "v2", Node: "n", State: "creating", Restarts: -1},
	} {
		_, err := s.CreateVM(ctx, bad)
		wantErr(t, err, store.ErrInvalid)
	}
	_, err = s.GetVM(ctx, "v2")
	wantErr(t, err, store.ErrNotFound)

	// A VM with neither image nor layer and no labels.
	bare := createVM(t, s, store.VM{ID: "bare"})
	if bare.Labels != nil || bare.StartedAt != nil || bare.UID != 0 {
		t.Errorf("bare VM: %+v", bare)
	}
}

func testGetVM(t *testing.T, e engine) {
	s := e.open(t)
	_, err := s.GetVM(ctx, "ghost")
	wantErr(t, err, store.ErrNotFound)
	if !strings.Contains(err.Error(), "ghost") {
		t.Errorf("error %q does not name the VM", err)
	}
	want := createVM(t, s, store.VM{ID: "v1", Labels: map[string]string{"k": "v"}})
	if d := diff(want, must[store.VM](t)(s.GetVM(ctx, "v1"))); d != "" {
		t.Errorf("GetVM (-want +got):\n%s", d)
	}
}

// testCreateVMConcurrent: 16 creators of one id, through two store handles
// (two pools of connections), exactly one wins.
func testCreateVMConcurrent(t *testing.T, e engine) {
	u := e.url(t)
	handles := []*store.Store{openURL(t, u), openURL(t, u)}
	const n = 16
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			_, errs[i] = handles[i%2].CreateVM(ctx, store.VM{ID: "vsame", Node: fmt.Sprintf("n%d", i), State: "creating"})
		})
	}
	close(start)
	wg.Wait()
	wins := 0
	for i, err := range errs {
		switch {
		case err == nil:
			wins++
		case errors.Is(err, store.ErrExists):
		default:
			t.Errorf("creator %d: %v", i, err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d creators succeeded, want exactly 1", wins)
	}
}

func listIDs(t *testing.T, s *store.Store, f store.VMFilter) []string {
	t.Helper()
	vms, next, err := s.ListVMs(ctx, f)
	ok(t, err)
	if next != "" {
		t.Fatalf("ListVMs(%+v) has a next page", f)
	}
	var ids []string
	for _, vm := range vms {
		ids = append(ids, vm.ID)
	}
	return ids
}

func testListVMsFilters(t *testing.T, e engine) {
	s := e.open(t)
	for _, vm := range []store.VM{
		{ID: "v1", Node: "n1", State: "running", Labels: map[string]string{"app": "web", "env": "prod"}},
		{ID: "v2", Node: "n1", State: "stopped", Labels: map[string]string{"app": "web"}},
		{ID: "v3", Node: "n2", State: "running", Labels: map[string]string{"app": "db", "env": "prod"}},
		{ID: "v4", Node: "n2", State: "booting"},
		{ID: "v5", Node: "n1", State: "crashed", Labels: map[string]string{"a.b": `x"y`, "$.app": "web"}},
	} {
		createVM(t, s, vm)
	}
	for _, tc := range []struct {
		f    store.VMFilter
		want []string
	}{
		{store.VMFilter{}, []string{"v1", "v3", "v4", "v5"}},
		{store.VMFilter{IncludeStopped: true}, []string{"v1", "v2", "v3", "v4", "v5"}},
		{store.VMFilter{State: "stopped"}, []string{"v2"}},
		{store.VMFilter{State: "running"}, []string{"v1", "v3"}},
		{store.VMFilter{Node: "n1"}, []string{"v1", "v5"}},
		{store.VMFilter{Node: "n1", IncludeStopped: true}, []string{"v1", "v2", "v5"}},
		{store.VMFilter{Labels: map[string]string{"app": "web"}}, []string{"v1"}},
		{store.VMFilter{Labels: map[string]string{"app": "web"}, IncludeStopped: true}, []string{"v1", "v2"}},
		{store.VMFilter{Labels: map[string]string{"env": "prod"}}, []string{"v1", "v3"}},
		{store.VMFilter{Labels: map[string]string{"env": "prod", "app": "db"}}, []string{"v3"}},
		{store.VMFilter{Labels: map[string]string{"env": "prod", "app": "none"}}, nil},
		{store.VMFilter{Labels: map[string]string{"a.b": `x"y`}}, []string{"v5"}},
		{store.VMFilter{Labels: map[string]string{"$.app": "web", "app": "web"}}, nil},
		{store.VMFilter{Labels: map[string]string{"missing": ""}}, nil},
		{store.VMFilter{Node: "n2", State: "booting"}, []string{"v4"}},
		{store.VMFilter{Node: "n3"}, nil},
	} {
		if d := cmp.Diff(tc.want, listIDs(t, s, tc.f), cmpopts.EquateEmpty()); d != "" {
			t.Errorf("ListVMs(%+v) (-want +got):\n%s", tc.f, d)
		}
	}
}

func testListVMsPageSizes(t *testing.T, e engine) {
	s := e.open(t)
	const n = store.MaxPageSize + 1
	for i := range n {
		createVM(t, s, store.VM{ID: fmt.Sprintf("v%05d", i)})
	}
	for _, tc := range []struct{ size, want int }{
		{0, store.DefaultPageSize},
		{-3, store.DefaultPageSize},
		{7, 7},
		{store.MaxPageSize, store.MaxPageSize},
		{5000, store.MaxPageSize},
	} {
		vms, next, err := s.ListVMs(ctx, store.VMFilter{PageSize: tc.size})
		ok(t, err)
		if len(vms) != tc.want || next == "" {
			t.Errorf("page size %d: got %d VMs, next %q; want %d and a next page", tc.size, len(vms), next, tc.want)
		}
	}
	vms, next, err := s.ListVMs(ctx, store.VMFilter{PageSize: store.MaxPageSize})
	ok(t, err)
	rest, next, err := s.ListVMs(ctx, store.VMFilter{PageSize: store.MaxPageSize, PageToken: next})
	ok(t, err)
	if len(rest) != 1 || next != "" || rest[0].ID != fmt.Sprintf("v%05d", n-1) || vms[len(vms)-1].ID >= rest[0].ID {
		t.Errorf("last page: %d VMs, next %q", len(rest), next)
	}
}

func testListVMsBadPageToken(t *testing.T, e engine) {
	s := e.open(t)
	createVM(t, s, store.VM{ID: "v1"})
	createVM(t, s, store.VM{ID: "v2"})
	for _, tok := range []string{
		"!!not base64!!",
		base64.RawURLEncoding.EncodeToString([]byte("v1")),
		base64.RawURLEncoding.EncodeToString([]byte("vm>")),
		base64.RawURLEncoding.EncodeToString([]byte("vm>\xff")),
	} {
		_, _, err := s.ListVMs(ctx, store.VMFilter{PageToken: tok})
		wantErr(t, err, store.ErrBadPageToken)
	}
	_, next, err := s.ListVMs(ctx, store.VMFilter{PageSize: 1})
	ok(t, err)
	vms, _, err := s.ListVMs(ctx, store.VMFilter{PageSize: 1, PageToken: next})
	ok(t, err)
	if len(vms) != 1 || vms[0].ID != "v2" {
		t.Errorf("second page: %+v", vms)
	}
}

func testUpdateVMState(t *testing.T, e engine) {
	clk := newClock()
	s := e.open(t, store.WithClock(clk.Now))
	createVM(t, s, store.VM{ID: "v1", State: "creating"})

	vm := must[store.VM](t)(s.UpdateVMState(ctx, "v1", []string{"creating"}, "booting", ""))
	if vm.State != "booting" || vm.StartedAt != nil || vm.StoppedAt != nil {
		t.Fatalf("after booting: %+v", vm)
	}
	t1 := clk.Advance(time.Second)
	vm = must[store.VM](t)(s.UpdateVMState(ctx, "v1", []string{"creating", "booting"}, store.StateRunning, ""))
	if vm.State != store.StateRunning || vm.StartedAt == nil || !vm.StartedAt.Equal(stored(t1)) || vm.StoppedAt != nil {
		t.Fatalf("after running: %+v", vm)
	}

	// A transition from a state the VM is not in is refused, changing nothing.
	clk.Advance(time.Second)
	_, err := s.UpdateVMState(ctx, "v1", []string{"creating", "booting"}, store.StateRunning, "")
	wantErr(t, err, store.ErrConflict)
	if !strings.Contains(err.Error(), "running") {
		t.Errorf("conflict %q does not say the current state", err)
	}
	if got := must[store.VM](t)(s.GetVM(ctx, "v1")); !got.StartedAt.Equal(stored(t1)) || got.State != store.StateRunning {
		t.Errorf("a refused update changed the VM: %+v", got)
	}

	t3 := clk.Advance(time.Second)
	vm = must[store.VM](t)(s.UpdateVMState(ctx, "v1", []string{store.StateRunning}, "crashed", "guest panicked"))
	if vm.LastError != "guest panicked" || vm.StoppedAt != nil {
		t.Fatalf("after crashed: %+v", vm)
	}
	vm = must[store.VM](t)(s.UpdateVMState(ctx, "v1", nil, store.StateFailed, "restart limit reached"))
	if vm.State != store.StateFailed || vm.LastError != "restart limit reached" || vm.StoppedAt == nil || !vm.StoppedAt.Equal(stored(t3)) {
		t.Fatalf("after failed: %+v", vm)
	}
	t4 := clk.Advance(time.Second)
	vm = must[store.VM](t)(s.UpdateVMState(ctx, "v1", nil, store.StateStopped, ""))
	if vm.LastError != "" || !vm.StoppedAt.Equal(stored(t4)) || !vm.StartedAt.Equal(stored(t1)) {
		t.Fatalf("after stopped: %+v", vm)
	}
	createVM(t, s, store.VM{ID: "v2", State: store.StateRunning})
	t5 := clk.Advance(time.Second)
	vm = must[store.VM](t)(s.UpdateVMState(ctx, "v2", nil, store.StateLost, "node died"))
	if !vm.StoppedAt.Equal(stored(t5)) {
		t.Fatalf("after lost: %+v", vm)
	}

	_, err = s.UpdateVMState(ctx, "ghost", nil, store.StateStopped, "")
	wantErr(t, err, store.ErrNotFound)
	_, err = s.UpdateVMState(ctx, "ghost", []string{"running"}, store.StateStopped, "")
	wantErr(t, err, store.ErrNotFound)
	_, err = s.UpdateVMState(ctx, "v1", nil, "", "")
	wantErr(t, err, store.ErrInvalid)
}

// testUpdateVMStateConcurrent: of many callers moving a VM out of running,
// exactly one wins; the others learn they lost.
func testUpdateVMStateConcurrent(t *testing.T, e engine) {
	u := e.url(t)
	handles := []*store.Store{openURL(t, u), openURL(t, u)}
	createVM(t, handles[0], store.VM{ID: "v1", State: store.StateRunning})
	const n = 8
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			_, errs[i] = handles[i%2].UpdateVMState(ctx, "v1", []string{store.StateRunning}, "stopping", fmt.Sprint(i))
		})
	}
	close(start)
	wg.Wait()
	wins := 0
	for i, err := range errs {
		switch {
		case err == nil:
			wins++
		case errors.Is(err, store.ErrConflict):
		default:
			t.Errorf("updater %d: %v", i, err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d updates succeeded, want exactly 1", wins)
	}
}

func testIncrementRestarts(t *testing.T, e engine) {
	s := e.open(t)
	createVM(t, s, store.VM{ID: "v1"})
	for want := 1; want <= 3; want++ {
		if got := must[int](t)(s.IncrementRestarts(ctx, "v1")); got != want {
			t.Errorf("IncrementRestarts = %d, want %d", got, want)
		}
	}
	if got := must[store.VM](t)(s.GetVM(ctx, "v1")).Restarts; got != 3 {
		t.Errorf("Restarts = %d, want 3", got)
	}
	_, err := s.IncrementRestarts(ctx, "ghost")
	wantErr(t, err, store.ErrNotFound)
}

func testSetVMUID(t *testing.T, e engine) {
	s := e.open(t)
	createVM(t, s, store.VM{ID: "v1"})
	for _, uid := range []uint32{900001, 4294967295, 0} {
		ok(t, s.SetVMUID(ctx, "v1", uid))
		if got := must[store.VM](t)(s.GetVM(ctx, "v1")).UID; got != uid {
			t.Errorf("UID = %d, want %d", got, uid)
		}
	}
	wantErr(t, s.SetVMUID(ctx, "ghost", 1), store.ErrNotFound)
}

// ---- uids ----

func claim(t *testing.T, s *store.Store, node, vm string, lo, hi uint32) uint32 {
	t.Helper()
	uid, err := s.ClaimUID(ctx, node, vm, lo, hi)
	ok(t, err)
	return uid
}

func testClaimUID(t *testing.T, e engine) {
	s := e.open(t)
	for i, want := range []uint32{100, 101, 102} {
		if got := claim(t, s, "n1", fmt.Sprintf("v%d", i), 100, 103); got != want {
			t.Errorf("claim %d = %d, want %d", i, got, want)
		}
	}
	// The lowest free uid is reused first.
	ok(t, s.ReleaseUID(ctx, "n1", 101))
	if got := claim(t, s, "n1", "v3", 100, 103); got != 101 {
		t.Errorf("claim after release = %d, want 101", got)
	}
	if got := claim(t, s, "n1", "v4", 100, 103); got != 103 {
		t.Errorf("claim = %d, want 103", got)
	}
	_, err := s.ClaimUID(ctx, "n1", "v5", 100, 103)
	wantErr(t, err, store.ErrExhausted)
	// A VM claiming again gets the uid it holds.
	if got := claim(t, s, "n1", "v0", 100, 103); got != 100 {
		t.Errorf("repeated claim of v0 = %d, want 100", got)
	}
	// Nodes have separate pools; uids outside the range do not count.
	if got := claim(t, s, "n2", "v0", 100, 103); got != 100 {
		t.Errorf("claim on n2 = %d, want 100", got)
	}
	if got := claim(t, s, "n1", "v5", 50, 200); got != 50 {
		t.Errorf("claim in a wider range = %d, want 50", got)
	}
	if got := claim(t, s, "n1", "v6", 102, 200); got != 104 {
		t.Errorf("claim from 102 = %d, want 104", got)
	}
	// The top of the uint32 range.
	if got := claim(t, s, "n3", "a", 4294967294, 4294967295); got != 4294967294 {
		t.Errorf("claim = %d", got)
	}
	if got := claim(t, s, "n3", "b", 4294967294, 4294967295); got != 4294967295 {
		t.Errorf("claim = %d", got)
	}
	_, err = s.ClaimUID(ctx, "n3", "c", 4294967294, 4294967295)
	wantErr(t, err, store.ErrExhausted)

	for _, bad := range []struct {
		node, vm string
		lo, hi   uint32
	}{
		{"", "v", 1, 2},
		{"n", "", 1, 2},
		{"n", "v", 0, 2},
		{"n", "v", 3, 2},
	} {
		_, err := s.ClaimUID(ctx, bad.node, bad.vm, bad.lo, bad.hi)
		wantErr(t, err, store.ErrInvalid)
	}
}

func testClaimUIDExact(t *testing.T, e engine) {
	s := e.open(t)
	exact := func(node, vm string, uid uint32) bool {
		t.Helper()
		won, err := s.ClaimUIDExact(ctx, node, vm, uid)
		ok(t, err)
		return won
	}
	if !exact("n1", "v0", 200) {
		t.Fatal("exact claim of a free uid lost")
	}
	if exact("n1", "v1", 200) {
		t.Error("a taken uid was claimed again")
	}
	if exact("n1", "v0", 201) {
		t.Error("a VM holding a uid got a second one")
	}
	if !exact("n2", "v1", 200) {
		t.Error("nodes do not have separate pools")
	}
	// ClaimUID sees exact claims: v0 keeps 200, the next free is 201.
	if got := claim(t, s, "n1", "v0", 200, 210); got != 200 {
		t.Errorf("ClaimUID of v0 = %d, want the 200 it holds", got)
	}
	if got := claim(t, s, "n1", "v2", 200, 210); got != 201 {
		t.Errorf("ClaimUID = %d, want 201", got)
	}
	ok(t, s.ReleaseUID(ctx, "n1", 200))
	if !exact("n1", "v3", 200) {
		t.Error("a released uid could not be claimed")
	}
	for _, bad := range []struct {
		node, vm string
		uid      uint32
	}{{"", "v", 1}, {"n", "", 1}, {"n", "v", 0}} {
		_, err := s.ClaimUIDExact(ctx, bad.node, bad.vm, bad.uid)
		wantErr(t, err, store.ErrInvalid)
	}
}

// testClaimUIDConcurrent: 32 claimers, through two store handles, race for
// 10 uids: each uid is handed out once and the rest are told it is full.
func testClaimUIDConcurrent(t *testing.T, e engine) {
	u := e.url(t)
	handles := []*store.Store{openURL(t, u), openURL(t, u)}
	const (
		n      = 32
		lo, hi = 5000, 5009
	)
	uids := make([]uint32, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			uids[i], errs[i] = handles[i%2].ClaimUID(ctx, "node-1", fmt.Sprintf("v%02d", i), lo, hi)
		})
	}
	close(start)
	wg.Wait()

	winners := map[uint32]string{}
	for i, err := range errs {
		switch {
		case err == nil:
			if other, dup := winners[uids[i]]; dup {
				t.Errorf("uid %d handed to both %s and v%02d", uids[i], other, i)
			}
			winners[uids[i]] = fmt.Sprintf("v%02d", i)
		case errors.Is(err, store.ErrExhausted):
		default:
			t.Errorf("claimer %d: %v", i, err)
		}
	}
	if len(winners) != hi-lo+1 {
		t.Errorf("%d uids handed out, want %d", len(winners), hi-lo+1)
	}
	for uid := range winners {
		if uid < lo || uid > hi {
			t.Errorf("uid %d outside %d-%d", uid, lo, hi)
		}
	}
	claims := must[map[uint32]string](t)(handles[0].ListUIDClaims(ctx, "node-1"))
	if d := cmp.Diff(winners, claims); d != "" {
		t.Errorf("ListUIDClaims disagrees with the winners (-want +got):\n%s", d)
	}
}

func testReleaseUID(t *testing.T, e engine) {
	s := e.open(t)
	ok(t, s.ReleaseUID(ctx, "n1", 7))
	uid := claim(t, s, "n1", "v1", 7, 7)
	_, err := s.ClaimUID(ctx, "n1", "v2", 7, 7)
	wantErr(t, err, store.ErrExhausted)
	ok(t, s.ReleaseUID(ctx, "n2", uid)) // another node's uid 7 is another uid
	_, err = s.ClaimUID(ctx, "n1", "v2", 7, 7)
	wantErr(t, err, store.ErrExhausted)
	ok(t, s.ReleaseUID(ctx, "n1", uid))
	ok(t, s.ReleaseUID(ctx, "n1", uid))
	if got := claim(t, s, "n1", "v2", 7, 7); got != 7 {
		t.Errorf("claim after release = %d, want 7", got)
	}
}

func testListUIDClaims(t *testing.T, e engine) {
	s := e.open(t)
	claims := must[map[uint32]string](t)(s.ListUIDClaims(ctx, "n1"))
	if claims == nil || len(claims) != 0 {
		t.Fatalf("no claims: got %#v, want an empty map", claims)
	}
	claim(t, s, "n1", "va", 10, 20)
	claim(t, s, "n1", "vb", 10, 20)
	claim(t, s, "n2", "vc", 10, 20)
	want := map[uint32]string{10: "va", 11: "vb"}
	if d := cmp.Diff(want, must[map[uint32]string](t)(s.ListUIDClaims(ctx, "n1"))); d != "" {
		t.Errorf("ListUIDClaims (-want +got):\n%s", d)
	}
}
