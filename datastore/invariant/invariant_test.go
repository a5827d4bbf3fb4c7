package invariant_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/invariant"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

func check(t *testing.T, s *datastore.Store, exp *invariant.Expect) *invariant.Report {
	t.Helper()
	rep, err := invariant.Check(context.Background(), s, exp, invariant.Options{Deep: true})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func wantProblem(t *testing.T, rep *invariant.Report, sub string) {
	t.Helper()
	for _, p := range rep.Problems {
		if strings.Contains(p, sub) {
			return
		}
	}
	t.Errorf("no problem mentioning %q in %v", sub, rep.Problems)
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	s := datastore.TestStore(t, datastore.TestName("inv"), datastore.TestAt(dir))
	at := time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC)
	a := datastore.TestBackup(t, s, "a", "vm/1", at, datastore.TestFile(t, "disk.img", 200<<10, 0)).SnapshotName()
	b := datastore.TestBackup(t, s, "b", "vm/2", at, datastore.TestFile(t, "disk.img", 200<<10, 0)).SnapshotName()
	c := datastore.TestBackup(t, s, "", "vm/3", at, datastore.TestFile(t, "disk.img", 200<<10, 0)).SnapshotName()
	exp := invariant.NewExpect()
	exp.Strict = true
	exp.Want(a, name.MustNamespace("a"), name.MustNamespace("x"))
	exp.Want(b)
	exp.Want(c)
	rep, err := invariant.Check(context.Background(), s, exp, invariant.Options{Deep: true, Verify: true})
	if err != nil || rep.Err() != nil || rep.Finished != 3 || rep.Chunks == 0 {
		t.Fatalf("clean store: %+v, %v, %v", rep, err, rep.Err())
	}

	// Wrong place, a duplicate, and a snapshot that should be gone.
	exp.Want(b, name.MustNamespace("elsewhere"))
	dup := filepath.Join(dir, "ns", "a", "vm", "2")
	if err := os.MkdirAll(filepath.Dir(dup), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, filepath.FromSlash(b.Path()), ".."), dup); err != nil {
		t.Fatal(err)
	}
	dup2 := filepath.Join(dir, "ns", "b", "vm", "3", c.TimeString())
	if err := os.CopyFS(dup2, os.DirFS(filepath.Join(dir, filepath.FromSlash(c.Path())))); err != nil {
		t.Fatal(err)
	}
	exp.Want(c)
	rep = check(t, s, exp)
	wantProblem(t, rep, "must be in one of")
	wantProblem(t, rep, "finished 2 times")
	exp.Gone(c)
	rep = check(t, s, exp)
	wantProblem(t, rep, "should be gone")

	// Lost, and a missing chunk.
	if err := os.RemoveAll(filepath.Join(dir, filepath.FromSlash(a.Path()))); err != nil {
		t.Fatal(err)
	}
	idx, err := s.ReadIndex(context.Background(), c, "disk.img.fidx")
	if err != nil {
		t.Fatal(err)
	}
	chunk := filepath.Join(dir, filepath.FromSlash(datastore.ChunkPath(datastore.Digest(idx.ChunkDigest(0)))))
	if err := os.Remove(chunk); err != nil {
		t.Fatal(err)
	}
	rep = check(t, s, exp)
	wantProblem(t, rep, "lost")
	wantProblem(t, rep, "missing")

	// A snapshot without manifest is unfinished.
	if err := os.Remove(filepath.Join(dir, filepath.FromSlash(c.File(datastore.ManifestName)))); err != nil {
		t.Fatal(err)
	}
	rep = check(t, s, invariant.NewExpect())
	wantProblem(t, rep, "unfinished snapshot")
}

func TestCheckFiles(t *testing.T) {
	dir := t.TempDir()
	s := datastore.TestStore(t, datastore.TestName("inv"), datastore.TestAt(dir))
	sn := datastore.TestBackup(t, s, "a", "vm/1", time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC), datastore.TestFile(t, "disk.img", 200<<10, 0)).SnapshotName()
	ctx := context.Background()
	rep, err := invariant.CheckFiles(ctx, s.Backend())
	if err != nil || rep.Err() != nil || rep.Files < 4 {
		t.Fatalf("clean store: %+v %v", rep, err)
	}
	// A half-written chunk under its final name, a torn index, and a temp
	// file (allowed, but listed).
	var chunk string
	_ = filepath.WalkDir(filepath.Join(dir, ".chunks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && chunk == "" {
			chunk = p
		}
		return nil
	})
	if err := os.Truncate(chunk, 20); err != nil {
		t.Fatal(err)
	}
	idx := filepath.Join(dir, filepath.FromSlash(sn.File("disk.img.fidx")))
	if err := os.Truncate(idx, 4000); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(chunk), "."+filepath.Base(chunk)+".tmp-0123456789ab")
	if err := os.WriteFile(tmp, []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err = invariant.CheckFiles(ctx, s.Backend())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 2 || len(rep.Temps) != 1 {
		t.Fatalf("problems %v, temps %v; want the chunk and the index, and one temp", rep.Problems, rep.Temps)
	}
}

func TestAuditOverlaps(t *testing.T) {
	at := func(ms int) time.Time { return time.Unix(1700000000, 0).Add(time.Duration(ms) * time.Millisecond) }
	g, _ := name.ParseGroup(name.MustNamespace("a/b"), "vm/1")
	snap := name.NewSnapshot(g, at(0))
	ns := func(s string, m lock.Mode) lock.Request { return lock.NamespaceRequest("st", name.MustNamespace(s), m) }
	type hold struct {
		req        lock.Request
		task       string
		start, end int
	}
	run := func(hs ...hold) []string {
		a := &invariant.Audit{}
		for i, h := range hs {
			holder := lock.Holder{Host: "h", PID: 1, TaskID: h.task}
			a.Add(lock.AuditEvent{Op: lock.AuditGrant, Time: at(h.start), Request: h.req, Holder: holder, Guard: uint64(i + 1)})
			a.Add(lock.AuditEvent{Op: lock.AuditRelease, Time: at(h.end), Request: h.req, Holder: holder, Guard: uint64(i + 1)})
		}
		return a.Overlaps()
	}
	for _, c := range []struct {
		what  string
		holds []hold
		bad   bool
	}{
		{"exclusive twice at once", []hold{{ns("a", lock.Exclusive), "t1", 0, 10}, {ns("a", lock.Exclusive), "t2", 5, 15}}, true},
		{"exclusive one after the other", []hold{{ns("a", lock.Exclusive), "t1", 0, 10}, {ns("a", lock.Exclusive), "t2", 10, 15}}, false},
		{"shared and shared", []hold{{ns("a", lock.Shared), "t1", 0, 10}, {ns("a", lock.Shared), "t2", 5, 15}}, false},
		{"same task", []hold{{ns("a", lock.Exclusive), "t1", 0, 10}, {lock.GroupRequest("st", g), "t1", 5, 15}}, false},
		{"exclusive ancestor vs child namespace", []hold{{ns("a", lock.Exclusive), "t1", 0, 10}, {ns("a/b", lock.Shared), "t2", 5, 15}}, true},
		{"exclusive namespace vs group below", []hold{{ns("a", lock.Exclusive), "t1", 0, 10}, {lock.GroupRequest("st", g), "t2", 5, 15}}, true},
		{"exclusive child vs shared parent", []hold{{ns("a/b", lock.Exclusive), "t1", 0, 10}, {ns("a", lock.Shared), "t2", 5, 15}}, false},
		{"sibling namespaces", []hold{{ns("a/b", lock.Exclusive), "t1", 0, 10}, {ns("a/c", lock.Exclusive), "t2", 5, 15}}, false},
		{"group twice", []hold{{lock.GroupRequest("st", g), "t1", 0, 10}, {lock.GroupRequest("st", g), "t2", 9, 15}}, true},
		{"snapshot shared twice", []hold{{lock.SnapshotRequest("st", snap, lock.Shared), "t1", 0, 10}, {lock.SnapshotRequest("st", snap, lock.Shared), "t2", 5, 15}}, false},
		{"snapshot shared vs exclusive", []hold{{lock.SnapshotRequest("st", snap, lock.Shared), "t1", 0, 10}, {lock.SnapshotRequest("st", snap, lock.Exclusive), "t2", 5, 15}}, true},
		{"other store", []hold{{ns("a", lock.Exclusive), "t1", 0, 10}, {lock.NamespaceRequest("other", name.MustNamespace("a"), lock.Exclusive), "t2", 5, 15}}, false},
	} {
		got := run(c.holds...)
		if (len(got) > 0) != c.bad {
			t.Errorf("%s: overlaps %v, want forbidden=%v", c.what, got, c.bad)
		}
	}
}

func TestAuditFileAndStats(t *testing.T) {
	p := filepath.Join(t.TempDir(), "audit.jsonl")
	a, err := invariant.NewAuditFile(p)
	if err != nil {
		t.Fatal(err)
	}
	l := lock.New(&memBackend{held: map[string]bool{}}, lock.Options{Wait: -1, Audit: a.Add})
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		g, err := l.WithTask("t").Namespace(ctx, "store1", name.MustNamespace("a"), lock.Exclusive)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.WithTask("u").Namespace(ctx, "store1", name.MustNamespace("a"), lock.Shared); err == nil {
			t.Fatal("granted twice")
		}
		_ = g.Release()
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	back := &invariant.Audit{}
	if err := back.ReadAuditFile(p); err != nil {
		t.Fatal(err)
	}
	st := back.Stats()
	if back.Len() != 60 || st.Grants != 20 || st.Busy != 20 || st.BusyRate != 0.5 || st.Unreleased != 0 {
		t.Fatalf("read back %d events: %+v", back.Len(), st)
	}
	if ov := back.Overlaps(); len(ov) != 0 {
		t.Fatalf("overlaps: %v", ov)
	}
}

// memBackend grants each lock ID to one holder at a time.
type memBackend struct {
	held map[string]bool
}

type memLease struct {
	b  *memBackend
	id string
}

func (l memLease) Release() error                                  { delete(l.b.held, l.id); return nil }
func (l memLease) Lost() <-chan struct{}                           { return nil }
func (b *memBackend) Close() error                                 { return nil }
func (b *memBackend) Holders(context.Context) ([]lock.Held, error) { return nil, nil }
func (b *memBackend) TryLock(_ context.Context, req lock.Request, _ lock.Holder) (lock.Lease, error) {
	if b.held[req.ID()] {
		return nil, &lock.BusyError{Request: req, Conflict: req}
	}
	b.held[req.ID()] = true
	return memLease{b, req.ID()}, nil
}
