package datastore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/datastore/prune"
	"github.com/pbsq/pbsq/internal/treetest"
)

// Issue 21's reproductions: a user who can write a datastore (PBS's
// "backup") plants links or FIFOs in it. Whatever pbsq operation then runs
// on the store, another datastore reached through the links and a plain
// tree of root's stay byte for byte and owner for owner unchanged, the
// problem is reported, and the operation ends by itself.
// Helpers of this file are prefixed ht (hostile test).

// htEnv is an attacked store a, a victim datastore b and a victim tree v;
// c is a third store that syncs into a.
type htEnv struct {
	a, b, c          *Store
	aDir, bDir, v    string
	beforeB, beforeV treetest.Tree
}

// htSnapTime is the time of the snapshot linked into a by the
// "snapshot" plant.
var htSnapTime = stAt(9)

// htTemplate builds the stores once; each case works on a copy.
func htTemplate(t *testing.T) string {
	t.Helper()
	tmpl := t.TempDir()
	for _, d := range []string{"a", "b", "c"} {
		if err := os.Mkdir(filepath.Join(tmpl, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a := TestStore(t, TestName("sta"), TestAt(filepath.Join(tmpl, "a")))
	b := TestStore(t, TestName("stb"), TestAt(filepath.Join(tmpl, "b")))
	c := TestStore(t, TestName("stc"), TestAt(filepath.Join(tmpl, "c")))
	// b's snapshots share their chunks with a's "x" namespace (same seeds).
	stSmall(t, b, "x", "vm/100", 1)
	stSmall(t, b, "x", "vm/100", 2)
	stSmall(t, b, "", "vm/300", 1)
	stSmall(t, a, "x", "vm/100", 1)
	stSmall(t, a, "x", "vm/100", 2)
	stSmall(t, a, "a", "vm/100", 3)
	stSmall(t, a, "a", "vm/100", 4)
	// c holds what a sync into a would write through each plant.
	stSmall(t, c, "l", "vm/100", 5)
	stSmall(t, c, "a", "vm/200", 5)
	stSmall(t, c, "a", "vm/100", 9)
	stSmall(t, c, "x", "vm/100", 5)
	v := filepath.Join(tmpl, "v")
	treetest.Victim(t, v)
	// Old registrations and journal entries GC would clean up.
	old := time.Now().Add(-time.Hour)
	for _, f := range []string{"x.json", "20240101T000000Z-1-00.json"} {
		p := filepath.Join(v, f)
		if err := os.WriteFile(p, []byte(`{"id":"v"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	return tmpl
}

// htCopy copies the template tree (files, dirs, modes, times).
func htCopy(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(dst, st.Mode().Perm())
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := os.WriteFile(dst, data, st.Mode().Perm()); err != nil {
			return err
		}
		return os.Chtimes(dst, st.ModTime(), st.ModTime())
	})
	if err != nil {
		t.Fatal(err)
	}
}

func htSetup(t *testing.T, tmpl string) *htEnv {
	t.Helper()
	dir := t.TempDir()
	htCopy(t, tmpl, dir)
	e := &htEnv{aDir: filepath.Join(dir, "a"), bDir: filepath.Join(dir, "b"), v: filepath.Join(dir, "v")}
	e.a = TestStore(t, TestName("sta"), TestAt(e.aDir))
	e.b = TestStore(t, TestName("stb"), TestAt(e.bDir))
	e.c = TestStore(t, TestName("stc"), TestAt(filepath.Join(dir, "c")))
	return e
}

func (e *htEnv) snapshotVictims(t *testing.T) {
	e.beforeB = treetest.Snapshot(t, e.bDir)
	e.beforeV = treetest.Snapshot(t, e.v)
}

func (e *htEnv) checkVictims(t *testing.T) {
	t.Helper()
	treetest.Unchanged(t, e.bDir, e.beforeB)
	treetest.Unchanged(t, e.v, e.beforeV)
}

func htLink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.RemoveAll(link); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func htFIFO(t *testing.T, p string) {
	t.Helper()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
}

// htFirstFile is the first file of dir with suffix.
func htFirstFile(t *testing.T, dir, suffix string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), suffix) {
			return filepath.Join(dir, e.Name())
		}
	}
	t.Fatalf("no *%s in %s", suffix, dir)
	return ""
}

// htPlants are the reproductions: each changes a's tree.
var htPlants = []struct {
	name  string
	plant func(t *testing.T, e *htEnv)
	// report: the words a refusal carries.
	report string
}{
	{"namespace", func(t *testing.T, e *htEnv) {
		htLink(t, filepath.Join(e.bDir, "ns/x"), filepath.Join(e.aDir, "ns/l"))
	}, "symbolic link"},
	{"group", func(t *testing.T, e *htEnv) {
		htLink(t, filepath.Join(e.bDir, "ns/x/vm/100"), filepath.Join(e.aDir, "ns/a/vm/200"))
	}, "symbolic link"},
	{"snapshot", func(t *testing.T, e *htEnv) {
		htLink(t, filepath.Join(e.bDir, "ns/x/vm/100", stAt(1).Format(time.RFC3339)),
			filepath.Join(e.aDir, "ns/a/vm/100", htSnapTime.Format(time.RFC3339)))
	}, "symbolic link"},
	{"chunk dir", func(t *testing.T, e *htEnv) {
		// The prefix dir of one of a's chunks becomes a link to b's,
		// which holds the very same chunk.
		ents, err := os.ReadDir(filepath.Join(e.aDir, ".chunks"))
		if err != nil || len(ents) == 0 {
			t.Fatal(err)
		}
		for _, ent := range ents {
			if _, err := os.Stat(filepath.Join(e.bDir, ".chunks", ent.Name())); err == nil {
				htLink(t, filepath.Join(e.bDir, ".chunks", ent.Name()), filepath.Join(e.aDir, ".chunks", ent.Name()))
				return
			}
		}
		t.Fatal("a and b share no chunk prefix")
	}, "symbolic link"},
	{"pbsq dir", func(t *testing.T, e *htEnv) {
		htLink(t, e.v, filepath.Join(e.aDir, ".pbsq"))
	}, "symbolic link"},
	{"writers", func(t *testing.T, e *htEnv) {
		htLink(t, e.v, filepath.Join(e.aDir, writersDir))
	}, "symbolic link"},
	{"journal", func(t *testing.T, e *htEnv) {
		htLink(t, e.v, filepath.Join(e.aDir, journalDir))
	}, "symbolic link"},
	{"gc lease", func(t *testing.T, e *htEnv) {
		htLink(t, filepath.Join(e.v, "x.json"), filepath.Join(e.aDir, gcLeasePath))
	}, "symbolic link"},
	{"owner", func(t *testing.T, e *htEnv) {
		htLink(t, filepath.Join(e.v, "secret"), filepath.Join(e.aDir, "ns/a/vm/100/owner"))
	}, "symbolic link"},
	{"notes", func(t *testing.T, e *htEnv) {
		htLink(t, filepath.Join(e.v, "secret"), filepath.Join(e.aDir, "ns/a/vm/100/notes"))
	}, "symbolic link"},
	{"owner hard link", func(t *testing.T, e *htEnv) {
		// Possible where fs.protected_hardlinks is off: the owner file is
		// the victim's secret itself. It is not an auth id, so it is
		// refused without being shown, and never written in place.
		p := filepath.Join(e.aDir, "ns/a/vm/100/owner")
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(filepath.Join(e.v, "secret"), p); err != nil {
			t.Fatal(err)
		}
	}, "owner file does not hold an auth id"},
	{"fifo index", func(t *testing.T, e *htEnv) {
		htFIFO(t, htFirstFile(t, filepath.Join(e.aDir, "ns/a/vm/100", stAt(3).Format(time.RFC3339)), "idx"))
	}, "not a regular file"},
	{"fifo manifest", func(t *testing.T, e *htEnv) {
		htFIFO(t, filepath.Join(e.aDir, "ns/a/vm/100", stAt(3).Format(time.RFC3339), ManifestName))
	}, "not a regular file"},
}

// htOps are the operations run on the attacked store; each returns its
// error and its result (for the reasons it reports).
var htOps = []struct {
	name string
	run  func(ctx context.Context, t *testing.T, e *htEnv) (any, error)
}{
	{"prune", func(ctx context.Context, t *testing.T, e *htEnv) (any, error) {
		return e.a.Prune(ctx, PruneRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}, Keep: prune.Options{KeepLast: 1}}, nil)
	}},
	{"move-namespace", func(ctx context.Context, t *testing.T, e *htEnv) (any, error) {
		var errs []error
		var res []any
		for _, ns := range htEntries(t, filepath.Join(e.aDir, "ns")) {
			r, err := e.a.MoveNamespace(ctx, MoveNamespaceRequest{NS: name.MustNamespace(ns),
				TargetNS: name.MustNamespace("moved-" + ns), MaxDepth: -1, DeleteSource: true, MergeGroups: true}, nil)
			errs, res = append(errs, err), append(res, r)
		}
		return res, errors.Join(errs...)
	}},
	{"move-group", func(ctx context.Context, t *testing.T, e *htEnv) (any, error) {
		var errs []error
		var res []any
		var groups []string
		for _, ns := range htEntries(t, filepath.Join(e.aDir, "ns")) {
			for _, id := range htEntries(t, filepath.Join(e.aDir, "ns", ns, "vm")) {
				groups = append(groups, ns+":vm/"+id)
			}
		}
		for _, g := range groups {
			ns, id, _ := strings.Cut(g, ":")
			grp, err := name.ParseGroup(name.MustNamespace(ns), id)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.a.CreateNamespace(ctx, name.MustNamespace("mg-"+ns)); err != nil {
				errs = append(errs, err)
				continue
			}
			r, err := e.a.MoveGroup(ctx, MoveGroupRequest{Group: grp, TargetNS: name.MustNamespace("mg-" + ns), MergeGroup: true}, nil)
			errs, res = append(errs, err), append(res, r)
		}
		return res, errors.Join(errs...)
	}},
	{"verify", func(ctx context.Context, t *testing.T, e *htEnv) (any, error) {
		return e.a.Verify(ctx, VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}}, nil)
	}},
	{"sync out", func(ctx context.Context, t *testing.T, e *htEnv) (any, error) {
		dst := TestStore(t, TestName("std"))
		return Sync(ctx, e.a, dst, SyncRequest{SourceNS: name.Root, NS: name.Root, MaxDepth: -1}, nil)
	}},
	{"sync into", func(ctx context.Context, t *testing.T, e *htEnv) (any, error) {
		return Sync(ctx, e.c, e.a, SyncRequest{SourceNS: name.Root, NS: name.Root, MaxDepth: -1, RemoveVanished: true}, nil)
	}},
	{"gc", func(ctx context.Context, t *testing.T, e *htEnv) (any, error) {
		// Chunks look a day old, and so do the victim's json files.
		later := time.Now().Add(48 * time.Hour)
		return e.a.GC(ctx, GCRequest{Now: func() time.Time { return later }, Cutoff: time.Minute}, nil)
	}},
}

func TestHostileStoreNeverActsOutside(t *testing.T) {
	reported := map[string]bool{}
	tmpl := htTemplate(t)
	for _, p := range htPlants {
		t.Run(strings.ReplaceAll(p.name, " ", "-"), func(t *testing.T) {
			for _, op := range htOps {
				t.Run(op.name, func(t *testing.T) {
					e := htSetup(t, tmpl)
					p.plant(t, e)
					e.snapshotVictims(t)
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
					defer cancel()
					res, err := op.run(ctx, t, e)
					if errors.Is(err, context.DeadlineExceeded) {
						t.Fatalf("%s did not end by itself: %v", op.name, err)
					}
					e.checkVictims(t)
					out, _ := json.Marshal(res)
					msg := fmt.Sprint(err) + " " + string(out)
					if strings.Contains(msg, "root-only secret") {
						t.Errorf("a file's content was echoed: %s", msg)
					}
					// A failure is the plant's refusal, nothing else.
					if err != nil && !strings.Contains(err.Error(), p.report) {
						t.Errorf("%s failed with %v; want a refusal saying %q", op.name, err, p.report)
					}
					if strings.Contains(msg, p.report) {
						reported[p.name] = true
					}
					t.Logf("err=%v result=%.300s", err, out)
				})
			}
			if !reported[p.name] {
				t.Errorf("no operation reported the %s plant", p.name)
			}
		})
	}
}

// htEntries lists dir's entries (links included, as names), for the
// operations to be called on everything the store holds.
func htEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestHostileLinkErrorsAreSentinels: the refusals wrap backend.ErrSymlink
// and backend.ErrNotRegular, so callers can tell them apart.
func TestHostileLinkErrorsAreSentinels(t *testing.T) {
	ctx := context.Background()
	e := htSetup(t, htTemplate(t))
	htLink(t, filepath.Join(e.bDir, "ns/x"), filepath.Join(e.aDir, "ns/l"))
	if _, err := e.a.ListGroups(ctx, name.MustNamespace("l")); !errors.Is(err, backend.ErrSymlink) {
		t.Errorf("ListGroups through a linked namespace = %v, want ErrSymlink", err)
	}
	htFIFO(t, filepath.Join(e.aDir, "ns/a/vm/100", stAt(3).Format(time.RFC3339), ManifestName))
	g, _ := name.ParseGroup(name.MustNamespace("a"), "vm/100")
	if _, err := e.a.ReadManifest(ctx, name.NewSnapshot(g, stAt(3))); !errors.Is(err, backend.ErrNotRegular) {
		t.Errorf("ReadManifest of a FIFO = %v, want ErrNotRegular", err)
	}
}

// TestBackupOwnedStoreStaysOwned is issue 15's ownership point: in a store
// owned by backup (uid 34 here), everything pbsq running as root creates
// belongs to backup, after backup, sync into it, moves, prune and verify.
func TestBackupOwnedStoreStaysOwned(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	const uid, gid = 34, 34
	ctx := context.Background()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, ".chunks"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(dir, ".chunks"), uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	s := TestStore(t, TestName("owned"), TestAt(dir))
	src := TestStore(t, TestName("src"))
	stSmall(t, src, "in", "vm/500", 1)
	stSmall(t, src, "in", "vm/500", 2)

	stSmall(t, s, "a", "vm/100", 1)
	stSmall(t, s, "a", "vm/100", 2)
	stSmall(t, s, "a/b", "ct/200", 3)
	g, _ := name.ParseGroup(name.MustNamespace("a"), "vm/100")
	if err := s.SetGroupNotes(ctx, g, "notes"); err != nil {
		t.Fatal(err)
	}
	if _, err := Sync(ctx, src, s, SyncRequest{SourceNS: name.Root, NS: name.MustNamespace("synced"), MaxDepth: -1}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateNamespace(ctx, name.MustNamespace("moved/deep")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.MoveGroup(ctx, MoveGroupRequest{Group: g, TargetNS: name.MustNamespace("moved/deep")}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.MoveNamespace(ctx, MoveNamespaceRequest{NS: name.MustNamespace("a"), TargetNS: name.MustNamespace("renamed"),
		MaxDepth: -1, DeleteSource: true}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prune(ctx, PruneRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}, Keep: prune.Options{KeepLast: 1}}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Verify(ctx, VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}}, nil); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(48 * time.Hour)
	if _, err := s.GC(ctx, GCRequest{Now: func() time.Time { return later }, Cutoff: time.Minute}, nil); err != nil {
		t.Fatal(err)
	}
	treetest.OwnedBy(t, dir, uid, gid)
}

// TestGCFIFOEndsAndReleasesLease: a FIFO where an index should be once
// hung GC in open(2) for good, its lease renewed forever. Now GC reports
// it and ends; its lease is gone, so the next GC runs. A GC cancelled
// mid-mark (SIGTERM cancels the task's context) ends and releases its
// lease too.
func TestGCFIFOEndsAndReleasesLease(t *testing.T) {
	ctx := context.Background()
	e := htSetup(t, htTemplate(t))
	snapDir := filepath.Join(e.aDir, "ns/a/vm/100", stAt(3).Format(time.RFC3339))
	htFIFO(t, htFirstFile(t, snapDir, "idx"))
	leaseGone := func() {
		t.Helper()
		if _, err := os.Lstat(filepath.Join(e.aDir, gcLeasePath)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("GC left its lease: %v", err)
		}
	}
	for _, dry := range []bool{true, false} {
		_, err := e.a.GC(ctx, GCRequest{DryRun: dry}, nil)
		if !errors.Is(err, backend.ErrNotRegular) || !strings.Contains(err.Error(), snapDir) {
			t.Errorf("GC (dry run %v) over a FIFO index = %v, want ErrNotRegular naming it", dry, err)
		}
		leaseGone()
	}
	if err := os.RemoveAll(snapDir); err != nil {
		t.Fatal(err)
	}
	if _, err := e.a.GC(ctx, GCRequest{}, nil); err != nil {
		t.Errorf("GC after the FIFO was removed: %v", err)
	}

	s, gb := gtWrapped(t, e.a)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gb.readFile = func(p string) {
		if isIndexFile(p[strings.LastIndexByte(p, '/')+1:]) {
			cancel()
		}
	}
	if _, err := s.GC(cctx, GCRequest{}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled GC = %v, want context.Canceled", err)
	}
	leaseGone()
	if _, err := e.a.GC(ctx, GCRequest{}, nil); err != nil {
		t.Errorf("GC after a cancelled one: %v", err)
	}
}
