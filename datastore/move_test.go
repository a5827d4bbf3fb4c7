package datastore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// ---- environment: stores come from NewTestEnv (testing.go), one per
// backend kind from eachBackend, with flock locks (single try).

// benchLocksDir is a locks dir on tmpfs where there is one, as in
// production: pbsq's default /run/pbsq/locks and PBS's
// /run/proxmox-backup/locks live on tmpfs, where creating a lock file costs
// microseconds, not the disk's journal.
func benchLocksDir(b *testing.B) string {
	dir, err := os.MkdirTemp("/dev/shm", "pbsq-bench-locks")
	if err != nil {
		return filepath.Join(b.TempDir(), "locks")
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// ---- data

var mtT0 = time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC)

func mtAt(h int) time.Time { return mtT0.Add(time.Duration(h) * time.Hour) }

func mtNS(t testing.TB, s *Store, nss ...string) {
	t.Helper()
	for _, ns := range nss {
		if err := s.CreateNamespace(context.Background(), name.MustNamespace(ns)); err != nil {
			t.Fatal(err)
		}
	}
}

func mtGroup(t testing.TB, ns, g string) name.Group {
	t.Helper()
	gr, err := name.ParseGroup(name.MustNamespace(ns), g)
	if err != nil {
		t.Fatal(err)
	}
	return gr
}

// mtBackup writes a real snapshot with Store.Backup: a disk image (fixed
// index) and a config (blob) of random content.
func mtBackup(t testing.TB, s *Store, ns, g string, h int, owner string) {
	t.Helper()
	img := TestFile(t, "disk.img", 3000, 0)
	conf := TestFiles(t, map[string][]byte{"vm.conf": fmt.Appendf(nil, "memory: %d\n", h)})[0]
	TestBackupRequest(t, s, ns, g, BackupRequest{Time: mtAt(h), Owner: owner, Sources: []BackupSource{{Path: img}, {Path: conf}}})
}

// mtPutSnapshot writes a small valid snapshot straight to the backend,
// much faster than Backup: one chunk, a fixed index over it, blobs (none
// when blobs < 0, else a config and blobs more) and, last, the manifest.
// The owner is written unless it is "" (the caller writes it).
func mtPutSnapshot(ctx context.Context, b backend.Backend, snap name.Snapshot, owner string, blobs int) error {
	if owner != "" {
		if _, err := b.Stat(ctx, backend.Join(snap.Group.Path(), "owner")); errors.Is(err, fs.ErrNotExist) {
			if err := b.WriteFile(ctx, backend.Join(snap.Group.Path(), "owner"), []byte(owner+"\n")); err != nil {
				return err
			}
		}
	}
	data := []byte("chunk of " + snap.NS.String() + ":" + snap.String())
	d := sha256.Sum256(data)
	blob, err := format.EncodeBlob(data)
	if err != nil {
		return err
	}
	if _, err := b.CreateFile(ctx, ChunkPath(d), blob); err != nil {
		return err
	}
	idx := &format.FixedIndex{CTime: snap.Time.Unix(), Size: uint64(len(data)), ChunkSize: FixedChunkSize, Digests: [][32]byte{d}}
	m := &format.Manifest{BackupType: string(snap.Type), BackupID: snap.ID, BackupTime: snap.Time.Unix()}
	if err := b.WriteFile(ctx, snap.File("drive-scsi0.img.fidx"), idx.Marshal()); err != nil {
		return err
	}
	m.Files = append(m.Files, format.FileInfo{Filename: "drive-scsi0.img.fidx", CryptMode: "none", Size: idx.Size, Csum: idx.Checksum()})
	for i := 0; i <= blobs; i++ {
		fn := "qemu-server.conf.blob"
		if i > 0 {
			fn = fmt.Sprintf("extra%d.log.blob", i)
		}
		raw, err := format.EncodeBlob([]byte("name: " + snap.ID + "\n"))
		if err != nil {
			return err
		}
		if err := b.WriteFile(ctx, snap.File(fn), raw); err != nil {
			return err
		}
		m.Files = append(m.Files, format.FileInfo{Filename: fn, CryptMode: "none", Size: uint64(len(raw)), Csum: sha256.Sum256(raw)})
	}
	raw, err := m.Marshal()
	if err != nil {
		return err
	}
	return b.WriteFile(ctx, snap.File(ManifestName), raw)
}

// ---- observation

// mtWhereWalk is mtWhere from one flat listing (a request per 1000 keys
// on S3 instead of one per snapshot); snapshot directories without a
// manifest are errors.
func mtWhereWalk(t testing.TB, s *Store) map[string][]string {
	t.Helper()
	type key struct{ ns, snap string }
	finished := map[key]bool{}
	err := s.b.Walk(context.Background(), "", func(fi backend.FileInfo) error {
		parts := strings.Split(fi.Name, "/")
		var comps []string
		for len(parts) >= 2 && parts[0] == "ns" {
			comps, parts = append(comps, parts[1]), parts[2:]
		}
		if len(parts) != 4 || strings.HasPrefix(parts[3], ".") {
			return nil // not a snapshot file (owner, chunks, journal, temp files)
		}
		if _, err := name.ParseType(parts[0]); err != nil {
			return nil
		}
		k := key{strings.Join(comps, "/"), strings.Join(parts[:3], "/")}
		finished[k] = finished[k] || parts[3] == ManifestName
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for k, fin := range finished {
		if !fin {
			t.Errorf("unfinished snapshot %s:%s", k.ns, k.snap)
		}
		out[k.snap] = append(out[k.snap], k.ns)
	}
	return out
}

// mtWhere maps every snapshot ("type/id/time", finished or not) to the
// namespaces holding it.
func mtWhere(t testing.TB, s *Store) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, sn := range allSnapshots(t, s) {
		if !sn.Finished {
			t.Errorf("unfinished snapshot %s:%s", sn.NS, sn.Snapshot)
		}
		out[sn.Snapshot.String()] = append(out[sn.Snapshot.String()], sn.NS.String())
	}
	return out
}

// mtJournal maps each journalled target index path to its source.
func mtJournal(t testing.TB, s *Store) map[string]string {
	t.Helper()
	entries, err := s.journalEntries(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		for _, m := range e.Moves {
			out[m.To] = m.From
		}
	}
	return out
}

func mtOwner(t testing.TB, s *Store, g name.Group) string {
	t.Helper()
	o, err := s.GroupOwner(context.Background(), g)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func mtExists(t testing.TB, s *Store, ns string) bool {
	t.Helper()
	ok, err := s.NamespaceExists(context.Background(), name.MustNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func mtMustComplete(t *testing.T, res *MoveResult, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("move: %v (result %+v)", err, res)
	}
	if !res.Complete || res.Outcome() != nil || res.Partial != "" {
		t.Fatalf("move incomplete: %+v", res)
	}
}

// ---- tests

// TestMoveGroup moves vm/10 next to vm/100 and a namespace "ab" next to
// "a": prefixes that match as strings must stay untouched.
func TestMoveGroup(t *testing.T) {
	eachBackend(t, func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv) {
		env := newEnv(t, TestFlock(-1))
		s, ctx := env.Store, context.Background()
		mtNS(t, s, "a", "ab", "b")
		for h := 0; h < 3; h++ {
			mtBackup(t, s, "a", "vm/10", h, "alice@pbs")
		}
		mtBackup(t, s, "a", "vm/100", 0, "bob@pbs")
		mtBackup(t, s, "a", "vm/100", 5, "bob@pbs")
		mtBackup(t, s, "ab", "vm/10", 1, "carol@pbs")
		src := mtGroup(t, "a", "vm/10")
		if err := s.SetGroupNotes(ctx, src, "important\n"); err != nil {
			t.Fatal(err)
		}
		if err := s.SetProtected(ctx, name.NewSnapshot(src, mtAt(1)), true); err != nil {
			t.Fatal(err)
		}
		before := TestTree(t, env.Store)

		var phases []string
		res, err := s.MoveGroup(ctx, MoveGroupRequest{Group: src, TargetNS: name.MustNamespace("b"), MergeGroup: true},
			func(p Progress) { phases = append(phases, p.Phase) })
		mtMustComplete(t, res, err)
		if res.Groups != 1 || res.GroupsTotal != 1 || res.Snapshots != 3 || len(res.MergedGroups) != 0 {
			t.Errorf("result %+v", res)
		}
		if env.Kind == "fs" {
			if res.Backend != "fs" || res.ObjectsCopied != 0 {
				t.Errorf("fs result %+v", res)
			}
		} else if res.Backend != "s3" || res.ObjectsCopied < 9 || res.ObjectsDeleted < 9 {
			t.Errorf("s3 result: %+v (3 snapshots of 3+ files each)", res)
		}
		if len(phases) == 0 {
			t.Error("no progress reported")
		}

		after := TestTree(t, env.Store)
		// Everything outside the moved group is byte-for-byte unchanged.
		for _, prefix := range []string{"ns/a/vm/100/", "ns/ab/", ".chunks/"} {
			TestSameTree(t, "move-group ("+prefix+")", TestTreeUnder(before, prefix), TestTreeUnder(after, prefix))
		}
		// The moved group is byte-for-byte the old one, in its new place.
		TestSameTree(t, "move-group (moved files)", TestTreeUnder(before, "ns/a/vm/10/"), TestTreeUnder(after, "ns/b/vm/10/"))
		if n := len(TestTreeUnder(after, "ns/a/vm/10/")); n != 0 {
			t.Errorf("%d files left at the source group", n)
		}
		if ok, _ := s.GroupExists(ctx, src); ok {
			t.Error("source group still exists")
		}
		dst := src.InNS(name.MustNamespace("b"))
		if o := mtOwner(t, s, dst); o != "alice@pbs" {
			t.Errorf("owner %q", o)
		}
		if n, _ := s.GroupNotes(ctx, dst); n != "important\n" {
			t.Errorf("notes %q", n)
		}
		if info, err := s.SnapshotInfo(ctx, name.NewSnapshot(dst, mtAt(1))); err != nil || !info.Protected {
			t.Errorf("protected marker lost: %+v %v", info, err)
		}
		// Every moved index is journalled, source → target, and closed.
		j := mtJournal(t, s)
		for h := 0; h < 3; h++ {
			to := name.NewSnapshot(dst, mtAt(h)).File("disk.img.fidx")
			if from := j[to]; from != name.NewSnapshot(src, mtAt(h)).File("disk.img.fidx") {
				t.Errorf("journal: %s from %q", to, from)
			}
		}
		entries, _ := s.journalEntries(ctx)
		for _, e := range entries {
			if e.Done.IsZero() {
				t.Errorf("journal entry %s left open", e.ID)
			}
		}
		TestVerifyAll(t, s, -1, 0)
	})
}

// TestMoveGroupMerge merges into an existing group: same owner and older
// target snapshots.
func TestMoveGroupMerge(t *testing.T) {
	eachBackend(t, func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv) {
		env := newEnv(t, TestFlock(-1))
		s, ctx := env.Store, context.Background()
		mtNS(t, s, "a", "b")
		mtBackup(t, s, "b", "vm/1", 0, "alice@pbs")
		mtBackup(t, s, "b", "vm/1", 1, "alice@pbs")
		mtBackup(t, s, "a", "vm/1", 2, "alice@pbs")
		mtBackup(t, s, "a", "vm/1", 3, "alice@pbs")
		res, err := s.MoveGroup(ctx, MoveGroupRequest{Group: mtGroup(t, "a", "vm/1"), TargetNS: name.MustNamespace("b"), MergeGroup: true}, nil)
		mtMustComplete(t, res, err)
		if len(res.MergedGroups) != 1 || res.MergedGroups[0] != "b:vm/1" || res.Snapshots != 2 {
			t.Errorf("result %+v", res)
		}
		where := mtWhere(t, s)
		if len(where) != 4 {
			t.Errorf("snapshots: %v", where)
		}
		for sn, nss := range where {
			if len(nss) != 1 || nss[0] != "b" {
				t.Errorf("%s in %v", sn, nss)
			}
		}
		TestVerifyAll(t, s, -1, 0)
	})
}

// TestMoveRefusals: every failed precondition is an ErrInvalid or
// ErrNotFound naming the values, and changes nothing at all.
func TestMoveRefusals(t *testing.T) {
	eachBackend(t, func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv) {
		env := newEnv(t, TestFlock(-1))
		s, ctx := env.Store, context.Background()
		mtNS(t, s, "a/b/c", "b", "t", "t2", "deep/1/2/3/4/5", "own/b/c", "p/q/q")
		mtBackup(t, s, "a", "vm/1", 10, "alice@pbs")
		mtBackup(t, s, "a", "vm/1", 11, "alice@pbs")
		mtBackup(t, s, "a/b", "vm/2", 10, "alice@pbs")
		mtBackup(t, s, "a/b/c", "ct/3", 10, "alice@pbs")
		mtBackup(t, s, "b", "vm/1", 1, "bob@pbs")       // owner differs from a/vm/1
		mtBackup(t, s, "t", "vm/1", 15, "alice@pbs")    // not older than a/vm/1's oldest
		mtBackup(t, s, "t2", "vm/1", 10, "alice@pbs")   // a/vm/1's oldest time, other content
		mtBackup(t, s, "own/b/c", "ct/3", 1, "bob@pbs") // the last group of a, owner differs
		mtBackup(t, s, "p/q", "vm/9", 1, "alice@pbs")   //
		mtBackup(t, s, "p/q/q", "vm/8", 1, "alice@pbs") //
		before := TestTree(t, env.Store)
		// A busy-free locker with a window, so lock trouble cannot pose as
		// a refusal.
		ns := name.MustNamespace
		grp := func(n, g string) name.Group { return mtGroup(t, n, g) }
		groupCases := []struct {
			what string
			req  MoveGroupRequest
			want []error
			text []string
		}{
			{"same namespace", MoveGroupRequest{Group: grp("a", "vm/1"), TargetNS: ns("a"), MergeGroup: true}, []error{name.ErrInvalid}, []string{`"a"`}},
			{"missing target namespace", MoveGroupRequest{Group: grp("a", "vm/1"), TargetNS: ns("nope"), MergeGroup: true}, []error{name.ErrInvalid, ErrNotFound}, []string{`"nope"`}},
			{"missing source namespace", MoveGroupRequest{Group: grp("zz", "vm/1"), TargetNS: ns("b"), MergeGroup: true}, []error{ErrNotFound}, []string{`"zz"`}},
			{"missing group", MoveGroupRequest{Group: grp("a", "vm/99"), TargetNS: ns("b"), MergeGroup: true}, []error{ErrNotFound}, []string{"vm/99"}},
			{"bad group", MoveGroupRequest{Group: name.Group{NS: ns("a"), Type: "xx", ID: "1"}, TargetNS: ns("b")}, []error{name.ErrInvalid}, []string{`"xx"`}},
			{"merge off", MoveGroupRequest{Group: grp("a", "vm/1"), TargetNS: ns("b"), MergeGroup: false}, []error{name.ErrInvalid}, []string{"vm/1", `"b"`, "merge"}},
			{"owner mismatch", MoveGroupRequest{Group: grp("a", "vm/1"), TargetNS: ns("b"), MergeGroup: true}, []error{name.ErrInvalid}, []string{"alice@pbs", "bob@pbs"}},
			{"target not older", MoveGroupRequest{Group: grp("a", "vm/1"), TargetNS: ns("t"), MergeGroup: true}, []error{name.ErrInvalid}, []string{mtAt(15).Format(name.TimeLayout), mtAt(10).Format(name.TimeLayout), "not older"}},
			{"same snapshot on both sides", MoveGroupRequest{Group: grp("a", "vm/1"), TargetNS: ns("t2"), MergeGroup: true}, []error{name.ErrInvalid}, []string{mtAt(10).Format(name.TimeLayout)}},
		}
		for _, c := range groupCases {
			res, err := s.MoveGroup(ctx, c.req, nil)
			mtRefused(t, "move-group: "+c.what, res, err, c.want, c.text)
		}
		nsCases := []struct {
			what string
			req  MoveNamespaceRequest
			want []error
			text []string
		}{
			{"root source", MoveNamespaceRequest{NS: name.Root, TargetNS: ns("x"), MaxDepth: -1}, []error{name.ErrInvalid}, []string{"root"}},
			{"same namespace", MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("a"), MaxDepth: -1}, []error{name.ErrInvalid}, []string{`"a"`}},
			{"target inside source", MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("a/b/x"), MaxDepth: -1}, []error{name.ErrInvalid}, []string{`"a/b/x"`}},
			{"target parent missing", MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("nope/x"), MaxDepth: -1}, []error{name.ErrInvalid, ErrNotFound}, []string{`"nope"`}},
			{"source missing", MoveNamespaceRequest{NS: ns("zz"), TargetNS: ns("x"), MaxDepth: -1}, []error{ErrNotFound}, []string{`"zz"`}},
			{"too deep", MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("deep/1/2/3/4/5"), MaxDepth: -1}, []error{name.ErrInvalid}, []string{`"a/b/c"`, "depth 8"}},
			{"merge off", MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("t"), MaxDepth: -1, MergeGroups: false}, []error{name.ErrInvalid}, []string{"vm/1", "merg"}},
			{"target not older", MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("t"), MaxDepth: -1, MergeGroups: true}, []error{name.ErrInvalid}, []string{"not older"}},
			// The only refused group is the last one: nothing moves first.
			{"owner mismatch below", MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("own"), MaxDepth: -1, MergeGroups: true, DeleteSource: true}, []error{name.ErrInvalid}, []string{"ct/3", "bob@pbs", "nothing was changed"}},
			{"target is being moved", MoveNamespaceRequest{NS: ns("p/q"), TargetNS: ns("p"), MaxDepth: -1, MergeGroups: true}, []error{name.ErrInvalid}, []string{`"p/q"`}},
		}
		for _, c := range nsCases {
			res, err := s.MoveNamespace(ctx, c.req, nil)
			mtRefused(t, "move-namespace: "+c.what, res, err, c.want, c.text)
		}
		TestSameTree(t, "refusals", before, TestTree(t, env.Store))
	})
}

func mtRefused(t *testing.T, what string, res *MoveResult, err error, want []error, text []string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: not refused (result %+v)", what, res)
		return
	}
	if res != nil {
		t.Errorf("%s: refusal with a result %+v", what, res)
	}
	for _, w := range want {
		if !errors.Is(err, w) {
			t.Errorf("%s: %v is not %v", what, err, w)
		}
	}
	for _, s := range text {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s: %q does not mention %s", what, err, s)
		}
	}
}

// mtTree builds a/… with four groups and six snapshots, plus "ab", a
// sibling whose name starts like "a".
func mtTree(t testing.TB, s *Store) {
	t.Helper()
	mtNS(t, s, "a/b/c", "a/e", "ab", "x")
	mtBackup(t, s, "a", "vm/1", 0, "alice@pbs")
	mtBackup(t, s, "a", "vm/1", 1, "alice@pbs")
	mtBackup(t, s, "a/b", "vm/2", 0, "alice@pbs")
	mtBackup(t, s, "a/b", "vm/2", 1, "alice@pbs")
	mtBackup(t, s, "a/b", "ct/2", 0, "bob@pbs")
	mtBackup(t, s, "a/b/c", "host/3", 0, "carol@pbs")
	mtBackup(t, s, "ab", "vm/1", 50, "dave@pbs") // a distinct snapshot: mtWhere keys by type/id/time
}

func TestMoveNamespace(t *testing.T) {
	eachBackend(t, func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv) {
		env := newEnv(t, TestFlock(-1))
		s, ctx := env.Store, context.Background()
		mtTree(t, s)
		before := TestTree(t, env.Store)
		res, err := s.MoveNamespace(ctx, MoveNamespaceRequest{NS: name.MustNamespace("a"), TargetNS: name.MustNamespace("x/y"),
			MaxDepth: -1, DeleteSource: true, MergeGroups: true}, nil)
		mtMustComplete(t, res, err)
		if res.Groups != 4 || res.GroupsTotal != 4 || res.Snapshots != 6 {
			t.Errorf("result %+v", res)
		}
		if got := strings.Join(res.NamespacesCreated, " "); got != "x/y x/y/b x/y/b/c x/y/e" {
			t.Errorf("created %q (parents first)", got)
		}
		if got := strings.Join(res.NamespacesRemoved, " "); got != "a/b/c a/e a/b a" {
			t.Errorf("removed %q (deepest first)", got)
		}
		after := TestTree(t, env.Store)
		TestSameTree(t, "move-namespace (ab)", TestTreeUnder(before, "ns/ab/"), TestTreeUnder(after, "ns/ab/"))
		// Moved files are byte-for-byte the old ones.
		for _, g := range []string{"vm/1/", "ns/b/vm/2/", "ns/b/ct/2/", "ns/b/ns/c/host/3/"} {
			old := TestTreeUnder(before, "ns/a/"+g)
			if len(old) == 0 {
				t.Fatalf("no files below ns/a/%s", g)
			}
			TestSameTree(t, "move-namespace ("+g+")", old, TestTreeUnder(after, "ns/x/ns/y/"+g))
		}
		if mtExists(t, s, "a") || !mtExists(t, s, "ab") || !mtExists(t, s, "x/y/e") {
			t.Error("namespaces wrong after the move")
		}
		for k := range after {
			if strings.HasPrefix(k, "ns/a/") {
				t.Errorf("left at the source: %s", k)
			}
		}
		for sn, nss := range mtWhere(t, s) {
			if len(nss) != 1 || (!strings.HasPrefix(nss[0], "x/y") && nss[0] != "ab") {
				t.Errorf("%s in %v", sn, nss)
			}
		}
		if o := mtOwner(t, s, mtGroup(t, "x/y/b", "ct/2")); o != "bob@pbs" {
			t.Errorf("owner %q", o)
		}
		if len(mtJournal(t, s)) != 6 {
			t.Errorf("journal: %v", mtJournal(t, s))
		}
		TestVerifyAll(t, s, -1, 0)
	})
}

// TestMoveNamespaceOptions covers max-depth, delete-source=false, merging
// into an existing namespace, moving up into an ancestor and to the root.
func TestMoveNamespaceOptions(t *testing.T) {
	eachBackend(t, func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv) {
		ns := name.MustNamespace
		t.Run("max-depth", func(t *testing.T) {
			env := newEnv(t, TestFlock(-1))
			s, ctx := env.Store, context.Background()
			mtTree(t, s)
			res, err := s.MoveNamespace(ctx, MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("x/y"), MaxDepth: 1, DeleteSource: true, MergeGroups: true}, nil)
			mtMustComplete(t, res, err)
			if res.Groups != 3 || mtExists(t, s, "x/y/b/c") || !mtExists(t, s, "a/b/c") || !mtExists(t, s, "a/b") || !mtExists(t, s, "a") {
				t.Errorf("result %+v", res)
			}
			if got := strings.Join(res.NamespacesRemoved, " "); got != "a/e" {
				t.Errorf("removed %q", got)
			}
			if len(res.NamespacesKept) != 2 {
				t.Errorf("kept %+v", res.NamespacesKept)
			}
			where := mtWhere(t, s)
			if nss := where["host/3/"+mtAt(0).Format(name.TimeLayout)]; len(nss) != 1 || nss[0] != "a/b/c" {
				t.Errorf("deeper group moved: %v", nss)
			}
			TestVerifyAll(t, s, -1, 0)
		})
		t.Run("keep-source", func(t *testing.T) {
			env := newEnv(t, TestFlock(-1))
			s, ctx := env.Store, context.Background()
			mtTree(t, s)
			res, err := s.MoveNamespace(ctx, MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("x/y"), MaxDepth: -1, DeleteSource: false, MergeGroups: true}, nil)
			mtMustComplete(t, res, err)
			if len(res.NamespacesRemoved) != 0 || len(res.NamespacesKept) != 4 || !mtExists(t, s, "a/b/c") {
				t.Errorf("result %+v", res)
			}
			if gs, _ := s.ListGroups(ctx, ns("a/b")); len(gs) != 0 {
				t.Errorf("groups left: %v", gs)
			}
			TestVerifyAll(t, s, -1, 0)
		})
		t.Run("merge", func(t *testing.T) {
			env := newEnv(t, TestFlock(-1))
			s, ctx := env.Store, context.Background()
			mtNS(t, s, "a/b", "x/b")
			mtBackup(t, s, "x/b", "vm/2", 0, "alice@pbs")
			mtBackup(t, s, "a/b", "vm/2", 1, "alice@pbs")
			mtBackup(t, s, "a/b", "vm/3", 1, "alice@pbs")
			res, err := s.MoveNamespace(ctx, MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("x"), MaxDepth: -1, DeleteSource: true, MergeGroups: true}, nil)
			mtMustComplete(t, res, err)
			if len(res.NamespacesCreated) != 0 || strings.Join(res.MergedGroups, " ") != "x/b:vm/2" || mtExists(t, s, "a") {
				t.Errorf("result %+v", res)
			}
			if snaps, _ := s.ListSnapshots(ctx, mtGroup(t, "x/b", "vm/2")); len(snaps) != 2 {
				t.Errorf("merged group has %d snapshots", len(snaps))
			}
			TestVerifyAll(t, s, -1, 0)
		})
		t.Run("into-ancestor", func(t *testing.T) {
			env := newEnv(t, TestFlock(-1))
			s, ctx := env.Store, context.Background()
			mtTree(t, s)
			res, err := s.MoveNamespace(ctx, MoveNamespaceRequest{NS: ns("a/b"), TargetNS: ns("a"), MaxDepth: -1, DeleteSource: true, MergeGroups: true}, nil)
			mtMustComplete(t, res, err)
			if mtExists(t, s, "a/b") || !mtExists(t, s, "a/c") {
				t.Errorf("result %+v", res)
			}
			if gs, _ := s.ListGroups(ctx, ns("a")); len(gs) != 3 {
				t.Errorf("groups in a: %v", gs)
			}
			TestVerifyAll(t, s, -1, 0)
		})
		t.Run("to-root", func(t *testing.T) {
			env := newEnv(t, TestFlock(-1))
			s, ctx := env.Store, context.Background()
			mtNS(t, s, "r/s/u")
			mtBackup(t, s, "r/s", "vm/7", 0, "alice@pbs")
			mtBackup(t, s, "r/s/u", "vm/8", 0, "alice@pbs")
			res, err := s.MoveNamespace(ctx, MoveNamespaceRequest{NS: ns("r/s"), TargetNS: name.Root, MaxDepth: -1, DeleteSource: true, MergeGroups: true}, nil)
			mtMustComplete(t, res, err)
			if mtExists(t, s, "r/s") || !mtExists(t, s, "r") || !mtExists(t, s, "u") {
				t.Errorf("result %+v", res)
			}
			if ok, _ := s.GroupExists(ctx, mtGroup(t, "", "vm/7")); !ok {
				t.Error("vm/7 not in root")
			}
			TestVerifyAll(t, s, -1, 0)
		})
	})
}

func TestMoveLocks(t *testing.T) {
	eachBackend(t, func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv) {
		ns := name.MustNamespace
		req := MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("x/y"), MaxDepth: -1, DeleteSource: true, MergeGroups: true}
		t.Run("busy-child-namespace", func(t *testing.T) {
			env := newEnv(t, TestFlock(-1))
			s, ctx := env.Store, context.Background()
			mtTree(t, s)
			g, err := TestFlockLocker(t, env.LockDir, -1).Namespace(ctx, "test", ns("a/b/c"), lock.Shared)
			if err != nil {
				t.Fatal(err)
			}
			defer g.Release()
			before := TestTree(t, env.Store)
			for _, wait := range []time.Duration{0, 150 * time.Millisecond} {
				start := time.Now()
				res, err := s.WithLocker(s.Locker().WithWait(wait)).MoveNamespace(ctx, req, nil)
				if !errors.Is(err, lock.ErrBusy) || res != nil {
					t.Fatalf("wait %v: got %v, %+v; want busy", wait, err, res)
				}
				if el := time.Since(start); el < wait || el > wait+5*time.Second {
					t.Errorf("wait %v: took %v", wait, el)
				}
				if !strings.Contains(err.Error(), `"a"`) {
					t.Errorf("busy error does not name the namespace: %v", err)
				}
			}
			TestSameTree(t, "busy move-namespace", before, TestTree(t, env.Store))
			// The same goes for a move-group out of a namespace held
			// exclusively.
			_ = g.Release()
			gx, err := TestFlockLocker(t, env.LockDir, -1).Namespace(ctx, "test", ns("a"), lock.Exclusive)
			if err != nil {
				t.Fatal(err)
			}
			defer gx.Release()
			if _, err := s.MoveGroup(ctx, MoveGroupRequest{Group: mtGroup(t, "a", "vm/1"), TargetNS: ns("x"), MergeGroup: true}, nil); !errors.Is(err, lock.ErrBusy) {
				t.Fatalf("move-group: %v, want busy", err)
			}
			TestSameTree(t, "busy move-group", before, TestTree(t, env.Store))
		})
		t.Run("busy-group", func(t *testing.T) {
			env := newEnv(t, TestFlock(-1))
			s, ctx := env.Store, context.Background()
			mtTree(t, s)
			busy := mtGroup(t, "a/b", "vm/2")
			g, err := TestFlockLocker(t, env.LockDir, -1).Group(ctx, "test", busy)
			if err != nil {
				t.Fatal(err)
			}
			res, err := s.WithLocker(s.Locker().WithWait(50*time.Millisecond)).MoveNamespace(ctx, req, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !errors.Is(res.Outcome(), ErrSkipped) || res.Complete || res.Partial == "" || len(res.Skipped) != 1 || res.Skipped[0].Item != "a/b:vm/2" {
				t.Fatalf("result %+v", res)
			}
			if res.Groups != 3 || !mtExists(t, s, "a/b") || !mtExists(t, s, "a") || mtExists(t, s, "a/b/c") || mtExists(t, s, "a/e") {
				t.Errorf("result %+v", res)
			}
			if snaps, _ := s.ListSnapshots(ctx, busy); len(snaps) != 2 {
				t.Errorf("busy group has %d snapshots left", len(snaps))
			}
			kept := map[string]bool{}
			for _, k := range res.NamespacesKept {
				kept[k.NS] = true
			}
			if !kept["a"] || !kept["a/b"] || len(kept) != 2 {
				t.Errorf("kept %+v", res.NamespacesKept)
			}
			_ = g.Release()
			res, err = s.MoveNamespace(ctx, req, nil)
			mtMustComplete(t, res, err)
			if res.Groups != 1 || mtExists(t, s, "a") {
				t.Errorf("rerun result %+v", res)
			}
			for sn, nss := range mtWhere(t, s) {
				if len(nss) != 1 {
					t.Errorf("%s in %v", sn, nss)
				}
			}
			TestVerifyAll(t, s, -1, 0)
		})
		t.Run("busy-snapshot", func(t *testing.T) {
			env := newEnv(t, TestFlock(-1))
			s, ctx := env.Store, context.Background()
			mtNS(t, s, "a", "b")
			for h := 0; h < 3; h++ {
				mtBackup(t, s, "a", "vm/1", h, "alice@pbs")
			}
			src := mtGroup(t, "a", "vm/1")
			g, err := TestFlockLocker(t, env.LockDir, -1).Snapshot(ctx, "test", name.NewSnapshot(src, mtAt(1)), lock.Shared)
			if err != nil {
				t.Fatal(err)
			}
			mreq := MoveGroupRequest{Group: src, TargetNS: ns("b"), MergeGroup: false}
			res, err := s.MoveGroup(ctx, mreq, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !errors.Is(res.Outcome(), ErrSkipped) || res.Snapshots != 1 || res.Groups != 0 || !strings.Contains(res.Skipped[0].Reason, "2 left") {
				t.Fatalf("result %+v", res)
			}
			// Oldest first: the target holds the older part only.
			if snaps, _ := s.ListSnapshots(ctx, src.InNS(ns("b"))); len(snaps) != 1 || !snaps[0].Time.Equal(mtAt(0)) {
				t.Errorf("target %+v", snaps)
			}
			_ = g.Release()
			// merge-group=false still finishes its own interrupted move.
			res, err = s.MoveGroup(ctx, mreq, nil)
			mtMustComplete(t, res, err)
			if res.Snapshots != 2 || res.Groups != 1 {
				t.Errorf("rerun result %+v", res)
			}
			if ok, _ := s.GroupExists(ctx, src); ok {
				t.Error("source group left")
			}
			if recs, _ := s.b.List(ctx, moveStateDir); len(recs) != 0 {
				t.Errorf("move records left: %v", recs)
			}
			TestVerifyAll(t, s, -1, 0)
		})
	})
}

// TestMoveConcurrent runs a move-namespace against a backup writer and a
// verify in the moving subtree, and two moves on overlapping subtrees.
// Whatever the interleaving, nothing is lost or duplicated.
func TestMoveConcurrent(t *testing.T) {
	eachBackend(t, func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv) {
		rounds := 3
		if !strings.HasSuffix(t.Name(), "fs") {
			rounds = 1
		}
		ns := name.MustNamespace
		for r := 0; r < rounds; r++ {
			t.Run(fmt.Sprint("writer-verify-", r), func(t *testing.T) {
				env := newEnv(t, TestFlock(-1))
				ctx := context.Background()
				s := env.Store.WithLocker(env.Store.Locker().WithWait(3 * time.Second))
				mtTree(t, s)
				initial := len(mtWhere(t, s))
				var wg sync.WaitGroup
				var backedUp []string
				stop := make(chan struct{})
				wg.Add(2)
				go func() { // backup writer
					defer wg.Done()
					w := env.Store.WithLocker(env.Store.Locker().WithWait(20 * time.Millisecond))
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						err := mtTryBackup(t, w, "a/b", "vm/50", 100+i)
						switch {
						case err == nil:
							backedUp = append(backedUp, "vm/50/"+mtAt(100+i).Format(name.TimeLayout))
						case errors.Is(err, lock.ErrBusy), errors.Is(err, ErrNotFound):
						default:
							t.Errorf("backup: %v", err)
							return
						}
						// Leave gaps: a writer that always holds its shared
						// lock starves the move's exclusive one (locks never
						// queue), which is not what this test is about.
						time.Sleep(time.Duration(r+1) * 15 * time.Millisecond)
					}
				}()
				go func() { // verify inside a child namespace
					defer wg.Done()
					v := env.Store.WithLocker(env.Store.Locker().WithWait(20 * time.Millisecond))
					res, err := v.Verify(ctx, VerifyRequest{Scope: Scope{NS: ns("a/b"), MaxDepth: -1}}, nil)
					if err != nil && !errors.Is(err, ErrNotFound) {
						t.Errorf("verify: %v", err)
					}
					if res != nil && len(res.Failed) > 0 {
						t.Errorf("verify failed during a move: %+v", res.Failed)
					}
				}()
				time.Sleep(time.Duration(r) * 10 * time.Millisecond)
				res, err := s.MoveNamespace(ctx, MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("x/y"), MaxDepth: -1, DeleteSource: true, MergeGroups: true}, nil)
				time.Sleep(20 * time.Millisecond)
				close(stop)
				wg.Wait()
				if errors.Is(err, lock.ErrBusy) {
					t.Logf("move starved by the writer (%v); moving again without it", err)
					res, err = s.MoveNamespace(ctx, MoveNamespaceRequest{NS: ns("a"), TargetNS: ns("x/y"), MaxDepth: -1, DeleteSource: true, MergeGroups: true}, nil)
				}
				if err != nil {
					t.Fatalf("move: %v", err)
				}
				if res.Outcome() != nil {
					t.Logf("move skipped: %+v", res.Skipped)
				}
				where := mtWhere(t, s)
				if len(where) != initial+len(backedUp) {
					t.Errorf("%d snapshots, want %d + %d backed up", len(where), initial, len(backedUp))
				}
				for sn, nss := range where {
					if len(nss) != 1 {
						t.Errorf("%s in %v", sn, nss)
					}
				}
				for _, b := range backedUp {
					if len(where[b]) != 1 {
						t.Errorf("backup %s lost", b)
					}
				}
				t.Logf("%d backups during the move, %d snapshots", len(backedUp), len(where))
				TestVerifyAll(t, s, -1, 0)
			})
			t.Run(fmt.Sprint("racing-moves-", r), func(t *testing.T) {
				env := newEnv(t, TestFlock(-1))
				ctx := context.Background()
				mtTree(t, env.Store)
				initial := mtWhere(t, env.Store)
				reqs := []MoveNamespaceRequest{
					{NS: ns("a"), TargetNS: ns("x/y"), MaxDepth: -1, DeleteSource: true, MergeGroups: true},
					{NS: ns("a/b"), TargetNS: ns("z"), MaxDepth: -1, DeleteSource: true, MergeGroups: true},
				}
				errs := make([]error, len(reqs))
				var wg sync.WaitGroup
				for i, req := range reqs {
					wg.Add(1)
					go func() {
						defer wg.Done()
						s := env.Store.WithLocker(env.Store.Locker().WithWait(time.Duration(r) * 30 * time.Millisecond))
						var res *MoveResult
						res, errs[i] = s.MoveNamespace(ctx, req, nil)
						if errs[i] == nil && res.Outcome() != nil {
							errs[i] = res.Outcome()
						}
					}()
				}
				wg.Wait()
				won := 0
				for i, err := range errs {
					switch {
					case err == nil:
						won++
					case errors.Is(err, lock.ErrBusy), errors.Is(err, ErrNotFound), errors.Is(err, name.ErrInvalid):
						t.Logf("move %d lost: %v", i, err)
					default:
						t.Errorf("move %d: %v", i, err)
					}
				}
				if won == 0 {
					t.Error("no move won")
				}
				where := mtWhere(t, env.Store)
				if len(where) != len(initial) {
					t.Errorf("%d snapshots, want %d", len(where), len(initial))
				}
				for sn, nss := range where {
					if len(nss) != 1 {
						t.Errorf("%s in %v", sn, nss)
					}
				}
				TestVerifyAll(t, env.Store, -1, 0)
			})
		}
	})
}

func mtTryBackup(t testing.TB, s *Store, ns, g string, h int) error {
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, []byte(fmt.Sprint("image ", h)), 0o644); err != nil {
		return err
	}
	_, err := s.Backup(context.Background(), BackupRequest{Group: mtGroup(t, ns, g), Time: mtAt(h), Owner: "alice@pbs", Sources: []BackupSource{{Path: p}}}, nil)
	return err
}

// ---- benchmarks

// mtBenchFiles are the files of a benchmark snapshot: a fixed index (over
// one shared chunk), blobs and the manifest, as PBS writes them for a VM.
func mtBenchFiles(b testing.TB, sn name.Snapshot, blobs int) map[string][]byte {
	data := []byte("bench chunk")
	d := sha256.Sum256(data)
	idx := &format.FixedIndex{CTime: sn.Time.Unix(), Size: uint64(len(data)), ChunkSize: FixedChunkSize, Digests: [][32]byte{d}}
	m := &format.Manifest{BackupType: string(sn.Type), BackupID: sn.ID, BackupTime: sn.Time.Unix()}
	files := map[string][]byte{"drive-scsi0.img.fidx": idx.Marshal()}
	m.Files = append(m.Files, format.FileInfo{Filename: "drive-scsi0.img.fidx", CryptMode: "none", Size: idx.Size, Csum: idx.Checksum()})
	for i := 0; i < blobs; i++ {
		fn := []string{"qemu-server.conf.blob", "client.log.blob", "fw.conf.blob"}[i%3]
		raw, err := format.EncodeBlob([]byte(fn + " of " + sn.String()))
		if err != nil {
			b.Fatal(err)
		}
		files[fn] = raw
		m.Files = append(m.Files, format.FileInfo{Filename: fn, CryptMode: "none", Size: uint64(len(raw)), Csum: sha256.Sum256(raw)})
	}
	raw, err := m.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	files[ManifestName] = raw
	return files
}

// mtBenchGroups lays out snapshots in groups of perGroup, spread over four
// child namespaces of ns (plus ns itself).
func mtBenchGroups(b testing.TB, ns string, snapshots, perGroup int) []name.Snapshot {
	var out []name.Snapshot
	for i := 0; i < snapshots; i++ {
		g := i / perGroup
		sub := ns
		if g%5 != 0 {
			sub = fmt.Sprintf("%s/n%d", ns, g%5)
		}
		out = append(out, name.NewSnapshot(mtGroup(b, sub, fmt.Sprintf("vm/%d", 100+g)), mtAt(i%perGroup)))
	}
	return out
}

// BenchmarkMoveNamespaceFS moves a namespace on a filesystem store (flock
// locks, journal and all), back and forth: 10,000 snapshots in 200 groups,
// and 1,000 groups of one snapshot.
func BenchmarkMoveNamespaceFS(b *testing.B) {
	for _, sh := range []struct{ groups, perGroup int }{{200, 50}, {1000, 1}} {
		b.Run(fmt.Sprintf("%dx%d", sh.groups, sh.perGroup), func(b *testing.B) {
			mtBenchMoveFS(b, sh.groups*sh.perGroup, sh.perGroup)
		})
	}
}

// mtBenchMoveFS is one shape of BenchmarkMoveNamespaceFS.
func mtBenchMoveFS(b *testing.B, snapshots, perGroup int) {
	ctx := context.Background()
	dir := b.TempDir()
	// Written directly (no fsync per file): the setup is not measured.
	snaps := mtBenchGroups(b, "src", snapshots, perGroup)
	for i, sn := range snaps {
		if i%perGroup == 0 {
			if err := os.MkdirAll(filepath.Join(dir, sn.Group.Path()), 0o755); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, sn.Group.Path(), "owner"), []byte("root@pam\n"), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		p := filepath.Join(dir, sn.Path())
		if err := os.Mkdir(p, 0o755); err != nil {
			b.Fatal(err)
		}
		for fn, data := range mtBenchFiles(b, sn, 0) {
			if err := os.WriteFile(filepath.Join(p, fn), data, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	s := TestStore(b, TestName("bench"), TestAt(dir), TestFlockAt(benchLocksDir(b), 0))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		from, to := name.MustNamespace("src"), name.MustNamespace("dst")
		if i%2 == 1 {
			from, to = to, from
		}
		res, err := s.MoveNamespace(ctx, MoveNamespaceRequest{NS: from, TargetNS: to, MaxDepth: -1, DeleteSource: true, MergeGroups: true}, nil)
		if err != nil || !res.Complete || res.Snapshots != snapshots {
			b.Fatalf("move: %v %+v", err, res)
		}
	}
	b.ReportMetric(float64(snapshots*b.N)/b.Elapsed().Seconds(), "snapshots/s")
}

// BenchmarkMoveNamespaceS3 compares pbsq's move-namespace with `rclone move`
// (server-side copies, 64 transfers) on versitygw, over tmpfs (mem) and
// over a disk directory (disk), on the very same objects: pbsq moves a namespace, then rclone moves its prefix on, and so
// on in alternating rounds (three unless PBSQ_BENCH_OBJECTS is large), which
// evens out a machine whose load changes; *_s/op are per move. Three
// shapes of snapshots of four objects (index, two blobs, manifest) plus an
// owner per group: many groups of one snapshot, tens of groups of a few,
// and few groups of many (PBSQ_BENCH_OBJECTS sets that one's object count,
// default 20000); and a move-group of one group of 500 snapshots.
func BenchmarkMoveNamespaceS3(b *testing.B) {
	objects := 20000
	if v, err := strconv.Atoi(os.Getenv("PBSQ_BENCH_OBJECTS")); err == nil && v > 0 {
		objects = v
	}
	rclone, err := exec.LookPath("rclone")
	if err != nil {
		b.Skip("rclone not installed")
	}
	const blobs = 2
	shapes := []struct {
		groups, perGroup int
		moveGroup        bool
	}{
		{150, 1, false},
		{40, 7, false},
		{max(1, objects/(blobs+2)/50), 50, false},
		{1, 500, true},
	}
	// Two servers: versitygw over tmpfs, where the server's file work is
	// memory work and what differs is the clients' requests; and over a
	// disk directory, where the server's journal and directory blocks
	// cost several times what either client does, on the same cores.
	for _, server := range []struct {
		name  string
		start func(testing.TB) *s3test.Server
	}{{"mem", s3test.StartVersityInMemory}, {"disk", s3test.StartVersity}} {
		b.Run(server.name, func(b *testing.B) {
			srv := server.start(b)
			for _, sh := range shapes {
				label := fmt.Sprintf("%dx%d", sh.groups, sh.perGroup)
				if sh.moveGroup {
					label = fmt.Sprintf("group-%d", sh.perGroup)
				}
				b.Run(label, func(b *testing.B) {
					// Three alternating rounds, where a round takes
					// seconds: one alone swung by a fifth.
					rounds := 1
					if sh.groups*sh.perGroup*(blobs+2) < 25000 {
						rounds = 3
					}
					mtBenchMoveS3(b, srv, rclone, sh.groups*sh.perGroup, sh.perGroup, blobs, rounds, sh.moveGroup)
				})
			}
		})
	}
}

// mtBenchMoveS3 is one shape of BenchmarkMoveNamespaceS3.
func mtBenchMoveS3(b *testing.B, srv *s3test.Server, rclone string, snapshots, perGroup, blobs, rounds int, moveGroup bool) {
	ctx := context.Background()
	var pbsqTime, rcloneTime time.Duration
	// CPU time of the server and of the client during each side's moves:
	// a loaded machine stretches wall times, but barely the work done.
	var pbsqServer, pbsqClient, rcloneServer, rcloneClient time.Duration
	serverCPU := func() time.Duration {
		d, err := srv.CPUTime()
		if err != nil {
			b.Fatal(err)
		}
		return d
	}
	selfCPU := func() time.Duration { return btCPU(b) }
	moved := 0
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		prefix := srv.UniquePrefix("bench")
		bk := srv.New(b, prefix)
		s := TestStore(b, TestName("bench"), TestOn("s3", bk), TestFlockAt(benchLocksDir(b), 0))
		mtNS(b, s, "src")
		snaps := mtBenchGroups(b, "src", snapshots, perGroup)
		type put struct {
			path string
			data []byte
		}
		puts := make(chan put, 256)
		var wg sync.WaitGroup
		var putErr error
		var once sync.Once
		for w := 0; w < 64; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for p := range puts {
					if err := bk.WriteFile(ctx, p.path, p.data); err != nil {
						once.Do(func() { putErr = err })
					}
				}
			}()
		}
		setup := time.Now()
		for j, sn := range snaps {
			if j%perGroup == 0 {
				puts <- put{backend.Join(sn.Group.Path(), "owner"), []byte("root@pam\n")}
			}
			for fn, data := range mtBenchFiles(b, sn, blobs) {
				puts <- put{sn.File(fn), data}
			}
		}
		close(puts)
		wg.Wait()
		if putErr != nil {
			b.Fatal(putErr)
		}
		// count leaves out namespace markers: the move writes one for
		// every target namespace, also where the source had none.
		count := func(dir string) int {
			n := 0
			err := bk.Walk(ctx, dir, func(fi backend.FileInfo) error {
				if !strings.HasSuffix(fi.Name, "/"+namespaceMarker) {
					n++
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
		total := count("ns/src")
		b.Logf("setup: %d objects in %v", total, time.Since(setup).Round(time.Millisecond))

		// The same objects move on and on: pbsq moves namespace src to
		// p1, rclone moves the prefix of p1 to r1 (a namespace again,
		// markers and all), pbsq moves r1 to p2, and so on. Alternating
		// in rounds evens out a machine whose load changes.
		root := srv.Bucket() + "/" + prefix + "/.cnt/ns/"
		var env []string
		for _, kv := range os.Environ() {
			// rclone's AWS SDK cannot combine a CA bundle with its own
			// HTTP transport; the endpoint is plain http anyway.
			if !strings.HasPrefix(kv, "AWS_CA_BUNDLE=") {
				env = append(env, kv)
			}
		}
		env = append(env,
			"RCLONE_CONFIG_BENCH_TYPE=s3", "RCLONE_CONFIG_BENCH_PROVIDER=Other",
			"RCLONE_CONFIG_BENCH_ENDPOINT="+srv.Endpoint(), "RCLONE_CONFIG_BENCH_REGION="+s3test.Region,
			"RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="+s3test.AccessKey, "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="+s3test.SecretKey,
			"RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true", "RCLONE_CONFIG_BENCH_ENV_AUTH=false")
		// A first rclone run pays for reading its 60 MB binary and more
		// (measured 3-4 s against 1.3 s after): warm it up untimed.
		warm := exec.Command(rclone, "lsf", "bench:"+root+"src", "-q")
		warm.Env = env
		if out, err := warm.CombinedOutput(); err != nil {
			b.Fatalf("rclone: %v\n%s", err, out)
		}
		from := "src"
		for r := 1; r <= rounds; r++ {
			to := fmt.Sprint("p", r)
			move := func(ctx context.Context) (*MoveResult, error) {
				return s.MoveNamespace(ctx, MoveNamespaceRequest{NS: name.MustNamespace(from), TargetNS: name.MustNamespace(to), MaxDepth: -1, DeleteSource: true, MergeGroups: true}, nil)
			}
			if moveGroup {
				// The namespace holds the one group; its move is
				// rclone's move of the namespace's prefix.
				mtNS(b, s, to)
				move = func(ctx context.Context) (*MoveResult, error) {
					return s.MoveGroup(ctx, MoveGroupRequest{Group: snaps[0].Group.InNS(name.MustNamespace(from)), TargetNS: name.MustNamespace(to)}, nil)
				}
			}
			b.StartTimer()
			server0, client0 := serverCPU(), selfCPU()
			start := time.Now()
			rctx, reqs := backend.CountRequests(ctx)
			res, err := move(rctx)
			took := time.Since(start)
			pbsqTime += took
			pbsqServer += serverCPU() - server0
			pbsqClient += selfCPU() - client0
			b.StopTimer()
			if err != nil || !res.Complete || res.Snapshots != len(snaps) {
				b.Fatalf("move: %v %+v", err, res)
			}
			if n := count("ns/" + to); n != total || count("ns/"+from) != 0 {
				b.Fatalf("pbsq moved %d of %d objects", n, total)
			}

			from, to = to, fmt.Sprint("r", r)
			cmd := exec.Command(rclone, "move", "bench:"+root+from, "bench:"+root+to, "--transfers", "64", "--s3-no-check-bucket", "-q")
			cmd.Env = env
			server0 = serverCPU()
			start = time.Now()
			out, err := cmd.CombinedOutput()
			rtook := time.Since(start)
			rcloneTime += rtook
			rcloneServer += serverCPU() - server0
			if cmd.ProcessState != nil {
				rcloneClient += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			}
			if err != nil {
				b.Fatalf("rclone: %v\n%s", err, out)
			}
			if n := count("ns/" + to); n != total || count("ns/"+from) != 0 {
				b.Fatalf("rclone moved %d of %d objects", n, total)
			}
			from = to
			moved += total
			b.Logf("round %d, %d objects: pbsq %v (%d copied, %d deleted, %d requests), rclone %v", r, total, took.Round(time.Millisecond), res.ObjectsCopied, res.ObjectsDeleted, reqs.Load(), rtook.Round(time.Millisecond))
		}
	}
	b.ReportMetric(float64(moved)/pbsqTime.Seconds(), "objects/s")
	b.ReportMetric(pbsqTime.Seconds()/float64(b.N*rounds), "pbsq_s/op")
	b.ReportMetric(rcloneTime.Seconds()/float64(b.N*rounds), "rclone_s/op")
	b.ReportMetric(rcloneTime.Seconds()/pbsqTime.Seconds(), "speedup_vs_rclone")
	b.ReportMetric(rcloneServer.Seconds()/pbsqServer.Seconds(), "server_cpu_rclone/pbsq")
	b.ReportMetric(rcloneClient.Seconds()/pbsqClient.Seconds(), "client_cpu_rclone/pbsq")
	b.Logf("CPU per move: server pbsq %v rclone %v, client pbsq %v rclone %v",
		pbsqServer/time.Duration(b.N*rounds), rcloneServer/time.Duration(b.N*rounds),
		pbsqClient/time.Duration(b.N*rounds), rcloneClient/time.Duration(b.N*rounds))
}
