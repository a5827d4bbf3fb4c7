package datastore

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// The GC tests make chunks look old either by setting their times with
// os.Chtimes or by running GC with a clock two days ahead (gtLater), which
// turns every chunk not marked in this run, and not protected by a writer,
// into garbage.

var gtT0 = time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC)

func gtLater() time.Time { return time.Now().Add(48 * time.Hour) }

// gtRandom returns n random bytes.
func gtRandom(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// gtIndex writes a dynamic index referencing ds at the backend path p.
func gtIndex(t testing.TB, s *Store, p string, ds ...Digest) {
	t.Helper()
	idx := &format.DynamicIndex{CTime: gtT0.Unix()}
	var end uint64
	for _, d := range ds {
		end += 1000
		idx.Entries = append(idx.Entries, format.DynamicEntry{End: end, Digest: d})
	}
	if err := s.Backend().WriteFile(context.Background(), p, idx.Marshal()); err != nil {
		t.Fatal(err)
	}
}

func gtPath(dir, rel string) string { return filepath.Join(dir, filepath.FromSlash(rel)) }

// gtAge sets a file's access and modification times.
func gtAge(t testing.TB, dir, rel string, at time.Time) {
	t.Helper()
	if err := os.Chtimes(gtPath(dir, rel), at, at); err != nil {
		t.Fatal(err)
	}
}

func gtStat(t testing.TB, dir, rel string) (atime, mtime time.Time, ok bool) {
	t.Helper()
	st, err := os.Lstat(gtPath(dir, rel))
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, time.Time{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	return time.Unix(sys.Atim.Unix()), st.ModTime(), true
}

func gtExists(t testing.TB, dir, rel string) bool {
	t.Helper()
	_, _, ok := gtStat(t, dir, rel)
	return ok
}

// gtFinishedChunks collects the chunks the index files of every finished
// snapshot reference (by the manifests), digest → index path.
func gtFinishedChunks(t testing.TB, s *Store) map[Digest]string {
	t.Helper()
	ctx := context.Background()
	out := map[Digest]string{}
	for _, sn := range allSnapshots(t, s) {
		if !sn.Finished {
			continue
		}
		m, err := s.ReadManifest(ctx, sn.Snapshot)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range m.Files {
			if !isIndexFile(f.Filename) {
				continue
			}
			idx, err := s.ReadIndex(ctx, sn.Snapshot, f.Filename)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < idx.ChunkCount(); i++ {
				out[Digest(idx.ChunkDigest(i))] = sn.File(f.Filename)
			}
		}
	}
	return out
}

// gtMissing lists the chunks of finished snapshots that are gone.
func gtMissing(t testing.TB, s *Store, dir string) []string {
	t.Helper()
	var out []string
	for d, idx := range gtFinishedChunks(t, s) {
		if !gtExists(t, dir, ChunkPath(d)) {
			out = append(out, d.String()+" (needed by "+idx+")")
		}
	}
	return out
}

// gtBackend wraps a backend with hooks run before the wrapped calls. Hooks
// are set before the store is used and never changed afterwards.
type gtBackend struct {
	backend.Backend
	createFile func(name string)
	list       func(dir string)
	walk       func(dir string)
	walkEach   func(fi backend.FileInfo)
	readFile   func(name string)
	touchErr   error // returned by every touch of a chunk after the first
	touches    atomic.Int64
}

func (b *gtBackend) CreateFile(ctx context.Context, name string, data []byte) (bool, error) {
	if b.createFile != nil {
		b.createFile(name)
	}
	return b.Backend.CreateFile(ctx, name, data)
}

func (b *gtBackend) List(ctx context.Context, dir string) ([]backend.FileInfo, error) {
	if b.list != nil {
		b.list(dir)
	}
	return b.Backend.List(ctx, dir)
}

func (b *gtBackend) Walk(ctx context.Context, dir string, fn func(backend.FileInfo) error) error {
	if b.walk != nil {
		b.walk(dir)
	}
	if b.walkEach == nil {
		return b.Backend.Walk(ctx, dir, fn)
	}
	return b.Backend.Walk(ctx, dir, func(fi backend.FileInfo) error {
		b.walkEach(fi)
		return fn(fi)
	})
}

func (b *gtBackend) ReadFile(ctx context.Context, name string) ([]byte, error) {
	if b.readFile != nil {
		b.readFile(name)
	}
	return b.Backend.ReadFile(ctx, name)
}

func (b *gtBackend) Touch(ctx context.Context, name string) error {
	if strings.HasPrefix(name, ".chunks/") {
		if b.touches.Add(1) > 1 && b.touchErr != nil {
			return b.touchErr
		}
	}
	return b.Backend.Touch(ctx, name)
}

// gtWrapped opens the store again on a gtBackend over the same storage
// and locks.
func gtWrapped(t testing.TB, s *Store) (*Store, *gtBackend) {
	t.Helper()
	gb := &gtBackend{Backend: s.Backend()}
	ws, err := Open(s.Name(), gb, Options{Locker: s.Locker()})
	if err != nil {
		t.Fatal(err)
	}
	return ws, gb
}

// gtScene is a store with finished and unfinished snapshots in several
// namespaces, two orphan chunks and all chunks aged three days, except
// the young orphan (an hour).
type gtScene struct {
	s             *Store
	dir           string
	refs          []Digest // referenced by finished and unfinished snapshots
	oldOrphan     Digest
	youngOrphan   Digest
	oldSize       int64
	youngSize     int64
	indexFiles    int
	unfinishedRef Digest
}

func gtSetup(t *testing.T) *gtScene {
	t.Helper()
	env := NewTestEnv(t, TestFlock(-1))
	s, dir := env.Store, env.Dir
	sc := &gtScene{s: s, dir: dir}
	disk := TestFile(t, "disk.img", 200<<10, 1<<20)
	TestBackup(t, s, "", "vm/100", gtT0, disk, TestFile(t, "root.pxar", 1500<<10, 0))
	TestBackup(t, s, "a/b", "ct/200", gtT0, TestFile(t, "root.pxar", 300<<10, 0), TestFile(t, "pct.conf", 300, 0))
	// A second snapshot of the same disk: deduplicated.
	TestBackup(t, s, "", "vm/100", gtT0.Add(24*time.Hour), disk)
	sc.indexFiles = 4
	// An unfinished snapshot (no manifest): its index protects its chunk.
	sc.unfinishedRef = TestChunk(t, s, gtRandom(5000))
	unf := name.NewSnapshot(ptGroup(t, "a/b", "ct", "200"), gtT0.Add(48*time.Hour))
	gtIndex(t, s, unf.File("root.pxar.didx"), sc.unfinishedRef)
	sc.indexFiles++
	for d := range gtFinishedChunks(t, s) {
		sc.refs = append(sc.refs, d)
	}
	sc.refs = append(sc.refs, sc.unfinishedRef)
	sc.oldOrphan = TestChunk(t, s, gtRandom(7000))
	sc.youngOrphan = TestChunk(t, s, gtRandom(3000))
	TestAgeChunks(t, dir, time.Now().Add(-72*time.Hour))
	gtAge(t, dir, ChunkPath(sc.youngOrphan), time.Now().Add(-time.Hour))
	for _, x := range []struct {
		d  Digest
		sz *int64
	}{{sc.oldOrphan, &sc.oldSize}, {sc.youngOrphan, &sc.youngSize}} {
		st, err := os.Stat(gtPath(dir, ChunkPath(x.d)))
		if err != nil {
			t.Fatal(err)
		}
		*x.sz = st.Size()
	}
	return sc
}

// TestGCSweepsOldUnreferenced: referenced chunks (of finished and of
// unfinished snapshots) are touched (atime only) and kept; an unreferenced
// chunk older than the cutoff is removed, a younger one kept as pending;
// the result adds up; progress goes mark, then sweep.
func TestGCSweepsOldUnreferenced(t *testing.T) {
	sc := gtSetup(t)
	ctx := context.Background()
	mtimes := map[Digest]time.Time{}
	for _, d := range sc.refs {
		_, mt, _ := gtStat(t, sc.dir, ChunkPath(d))
		mtimes[d] = mt
	}
	var mu sync.Mutex
	var phases []string
	var last Progress
	res, err := sc.s.GC(ctx, GCRequest{}, func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
		last = p
	})
	if err != nil {
		t.Fatal(err)
	}
	if gtExists(t, sc.dir, ChunkPath(sc.oldOrphan)) {
		t.Error("unreferenced chunk older than the cutoff was kept")
	}
	if !gtExists(t, sc.dir, ChunkPath(sc.youngOrphan)) {
		t.Error("unreferenced chunk younger than the cutoff was removed")
	}
	for _, d := range sc.refs {
		at, mt, ok := gtStat(t, sc.dir, ChunkPath(d))
		switch {
		case !ok:
			t.Errorf("referenced chunk %s removed", d)
		case at.Before(res.MarkStart.Add(-time.Second)):
			t.Errorf("referenced chunk %s not touched: atime %s, mark start %s", d, at, res.MarkStart)
		case !mt.Equal(mtimes[d]):
			t.Errorf("touch changed the mtime of %s", d)
		}
	}
	type counts struct {
		index, referenced, touched, inUse, pending, reclaimable, removed, disk int
		pendingBytes, reclaimableBytes, removedBytes                           int64
	}
	n := len(sc.refs)
	want := counts{sc.indexFiles, n, n, n, 1, 1, 1, n + 1, sc.youngSize, sc.oldSize, sc.oldSize}
	got := counts{res.IndexFiles, res.ReferencedChunks, res.TouchedChunks, res.InUseChunks, res.PendingChunks,
		res.ReclaimableChunks, res.RemovedChunks, res.DiskChunks, res.PendingBytes, res.ReclaimableBytes, res.RemovedBytes}
	if got != want {
		t.Errorf("result\n got  %+v\n want %+v", got, want)
	}
	if res.DiskBytes != res.InUseBytes+res.PendingBytes || res.DedupFactor <= 1 ||
		res.DedupFactor != float64(res.IndexDataBytes)/float64(res.InUseBytes) {
		t.Errorf("disk %d, in use %d, pending %d, dedup %.2f over %d bytes", res.DiskBytes, res.InUseBytes, res.PendingBytes, res.DedupFactor, res.IndexDataBytes)
	}
	if res.MissingChunks != 0 || len(res.Warnings) != 0 || !res.MinAccessTime.Equal(res.MarkStart.Add(-DefaultGCCutoff)) {
		t.Errorf("missing %d, warnings %q, min atime %s for mark start %s", res.MissingChunks, res.Warnings, res.MinAccessTime, res.MarkStart)
	}
	if !slices.Equal(phases, []string{"mark", "sweep"}) || last.Done != last.Total {
		t.Errorf("progress phases %v, last %+v", phases, last)
	}
	if gtExists(t, sc.dir, gcLeasePath) {
		t.Error("GC lease left behind")
	}
	TestVerifyAll(t, sc.s, 3, 1)
}

// gtListing describes the tree without reading files (which would move
// atimes): size and mtime of everything, atime of chunk files.
func gtListing(t testing.TB, dir string) map[string]string {
	t.Helper()
	return TestDirTreeBy(t, dir, func(rel, p string) (string, error) {
		at, mt, _ := gtStat(t, dir, rel)
		v := mt.String()
		if strings.HasPrefix(rel, ".chunks/") {
			v += " atime " + at.String()
		}
		st, err := os.Lstat(p)
		if err != nil {
			return "", err
		}
		return v + " size " + strconv.FormatInt(st.Size(), 10), nil
	})
}

// TestGCDryRun: a dry run changes nothing (not even atimes or the move
// journal) and reports what the real run then removes.
// TestGCTouchFailureStops: a chunk that cannot be touched would look
// unused to the sweep; GC stops with the error and removes nothing.
func TestGCTouchFailureStops(t *testing.T) {
	sc := gtSetup(t)
	s, gb := gtWrapped(t, sc.s)
	gb.touchErr = errors.New("disk gone")
	_, err := s.GC(context.Background(), GCRequest{}, nil)
	if err == nil || !strings.Contains(err.Error(), "touch chunk") || !strings.Contains(err.Error(), "disk gone") {
		t.Fatalf("GC = %v, want the touch error", err)
	}
	if !gtExists(t, sc.dir, ChunkPath(sc.oldOrphan)) {
		t.Error("GC removed a chunk after a touch failed")
	}
}

func TestGCDryRun(t *testing.T) {
	sc := gtSetup(t)
	ctx := context.Background()
	e, err := sc.s.journalOpen(ctx, []JournalMove{{From: "ns/x/vm/1/2024-01-01T00:00:00Z/a.didx", To: "vm/1/2024-01-01T00:00:00Z/a.didx"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.s.journalClose(ctx, e); err != nil {
		t.Fatal(err)
	}
	before := gtListing(t, sc.dir)
	dry, err := sc.s.GC(ctx, GCRequest{DryRun: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	after := gtListing(t, sc.dir)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("dry run changed %s: %q → %q", k, v, after[k])
		}
	}
	if len(after) != len(before) {
		t.Errorf("dry run added files: %d → %d entries", len(before), len(after))
	}
	if !dry.DryRun || dry.RemovedChunks != 0 || dry.RemovedBytes != 0 || dry.TouchedChunks != 0 ||
		dry.ReclaimableChunks != 1 || dry.ReclaimableBytes != sc.oldSize || dry.PendingChunks != 1 {
		t.Errorf("dry run result %+v", dry)
	}
	run, err := sc.s.GC(ctx, GCRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if run.RemovedChunks != dry.ReclaimableChunks || run.RemovedBytes != dry.ReclaimableBytes ||
		run.InUseChunks != dry.InUseChunks || run.ReferencedChunks != dry.ReferencedChunks {
		t.Errorf("real run %+v differs from the dry run's forecast %+v", run, dry)
	}
	if ents, _ := os.ReadDir(gtPath(sc.dir, journalDir)); len(ents) != 0 {
		t.Errorf("real run left %d journal entries", len(ents))
	}
}

// gtWriterDuringGC runs a backup that is halfway through its chunk inserts
// when GC starts (with a clock two days ahead) and continues while GC
// sweeps. Its image shares two chunks with a snapshot deleted earlier
// (orphans it must revive). hideWriter deletes the writer's registration,
// as a writer GC cannot see would be.
func gtWriterDuringGC(t *testing.T, hideWriter bool) (*GCResult, *Store, string, Digest) {
	ctx := context.Background()
	env := NewTestEnv(t, TestFlock(-1))
	s0, dir := env.Store, env.Dir
	shared := gtRandom(2 * FixedChunkSize)
	TestBackup(t, s0, "", "vm/100", gtT0, TestFile(t, "keep.img", 300<<10, 0))
	oldImg := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(oldImg, append(slices.Clone(shared), gtRandom(100<<10)...), 0o644); err != nil {
		t.Fatal(err)
	}
	old := TestBackup(t, s0, "", "vm/200", gtT0, oldImg)
	if err := os.RemoveAll(gtPath(dir, old.SnapshotName().Path())); err != nil { // pruned since
		t.Fatal(err)
	}
	orphan := TestChunk(t, s0, gtRandom(4000))
	TestAgeChunks(t, dir, time.Now().Add(-72*time.Hour))

	newImg := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(newImg, append(slices.Clone(shared), gtRandom(4*FixedChunkSize)...), 0o644); err != nil {
		t.Fatal(err)
	}
	s, gb := gtWrapped(t, s0)
	var inserts atomic.Int64
	half, sweeping := make(chan struct{}), make(chan struct{})
	var sweepOnce sync.Once
	gb.createFile = func(p string) {
		if !strings.HasPrefix(p, ".chunks/") {
			return
		}
		n := inserts.Add(1)
		if n == 4 {
			if hideWriter {
				if err := os.RemoveAll(gtPath(dir, writersDir)); err != nil {
					t.Error(err)
				}
			}
			close(half)
		}
		if n >= 4 {
			<-sweeping
			time.Sleep(20 * time.Millisecond)
		}
	}
	gb.walk = func(d string) {
		if d == ".chunks" {
			sweepOnce.Do(func() { close(sweeping) })
		}
	}
	gb.walkEach = func(fi backend.FileInfo) {
		if strings.HasPrefix(fi.Name, ".chunks/") {
			time.Sleep(10 * time.Millisecond)
		}
	}
	type backupDone struct {
		res *BackupResult
		err error
	}
	done := make(chan backupDone, 1)
	go func() {
		g := ptGroup(t, "", "vm", "200")
		res, err := s.Backup(ctx, BackupRequest{Group: g, Time: gtT0.Add(time.Hour), Owner: "root@pam",
			Sources: []BackupSource{{Path: newImg}}}, nil)
		done <- backupDone{res, err}
	}()
	select {
	case <-half:
	case bd := <-done:
		t.Fatalf("backup ended before GC could start: %v", bd.err)
	case <-time.After(2 * time.Minute):
		t.Fatal("backup never reached its fourth chunk")
	}
	res, err := s.GC(ctx, GCRequest{Now: gtLater}, nil)
	sweepOnce.Do(func() { close(sweeping) }) // in case GC failed before sweeping
	if err != nil {
		t.Fatal(err)
	}
	bd := <-done
	if bd.err != nil {
		t.Fatalf("backup: %v", bd.err)
	}
	if bd.res.Chunks != 6 || bd.res.NewChunks < 4 {
		t.Errorf("backup wrote %d chunks, %d new; want 6, at least 4 new", bd.res.Chunks, bd.res.NewChunks)
	}
	return res, s0, dir, orphan
}

// TestGCWriterRunningDuringGC: chunks a running backup has inserted (or
// revived) but no index references yet survive a GC that would otherwise
// sweep them, because GC lowers its cutoff to the writer's start; every
// chunk of every finished snapshot exists afterwards and verifies.
func TestGCWriterRunningDuringGC(t *testing.T) {
	res, s, dir, orphan := gtWriterDuringGC(t, false)
	if missing := gtMissing(t, s, dir); len(missing) > 0 {
		t.Errorf("GC removed chunks of finished snapshots:\n%s", strings.Join(missing, "\n"))
	}
	TestVerifyAll(t, s, 2, 0)
	if gtExists(t, dir, ChunkPath(orphan)) {
		t.Error("an old orphan chunk nobody revived survived: the sweep did not run")
	}
	if res.ActiveWriters != 1 || res.OldestWriter == nil || !res.MinAccessTime.Equal(res.OldestWriter.Add(-writerGap)) {
		t.Errorf("writers %d, oldest %v, min atime %s", res.ActiveWriters, res.OldestWriter, res.MinAccessTime)
	}
	if ents, err := os.ReadDir(gtPath(dir, writersDir)); err != nil || len(ents) != 0 {
		t.Errorf("writer registration not removed after the backup: %d entries, %v", len(ents), err)
	}
}

// TestGCWriterInvisibleLosesChunks is the control: the same race with the
// writer's registration deleted does lose chunks, which shows that the
// scenario above exercises the writer registry.
func TestGCWriterInvisibleLosesChunks(t *testing.T) {
	res, s, dir, _ := gtWriterDuringGC(t, true)
	if res.ActiveWriters != 0 {
		t.Fatalf("the hidden writer was seen: %d", res.ActiveWriters)
	}
	if missing := gtMissing(t, s, dir); len(missing) == 0 {
		t.Error("no chunk was lost although GC could not see the writer; the writer test proves nothing")
	}
}

// gtMoveScenario fills s for the move-during-mark tests:
// namespace a (the target), ns/b/vm/200 (listed while the move happens)
// and the snapshot mv in ns/c to be moved to dst; moved are its chunks.
func gtMoveScenario(t *testing.T, s *Store) (mv, dst name.Snapshot, moved []Digest) {
	t.Helper()
	if err := s.CreateNamespace(context.Background(), name.MustNamespace("a")); err != nil {
		t.Fatal(err)
	}
	TestBackup(t, s, "b", "vm/200", gtT0, TestFile(t, "small.img", 1000, 0))
	mv = TestBackup(t, s, "c", "vm/300", gtT0, TestFile(t, "disk.img", 200<<10, 0), TestFile(t, "root.pxar", 200<<10, 0)).SnapshotName()
	for d, p := range gtFinishedChunks(t, s) {
		if strings.HasPrefix(p, "ns/c/") {
			moved = append(moved, d)
		}
	}
	return mv, mv.InNS(name.MustNamespace("a")), moved
}

// gtMoveDuringMark moves a snapshot from namespace c (not yet walked) into
// namespace a (already walked) while GC lists a group of namespace b,
// recording the move in the journal unless journal is false.
func gtMoveDuringMark(t *testing.T, journal bool) (*GCResult, []Digest, string, *Store) {
	ctx := context.Background()
	env := NewTestEnv(t, TestFlock(-1))
	s0, dir := env.Store, env.Dir
	mv, dst, moved := gtMoveScenario(t, s0)
	s, gb := gtWrapped(t, s0)
	var once sync.Once
	gb.list = func(d string) {
		if d != "ns/b/vm/200" {
			return
		}
		once.Do(func() {
			info, err := s0.SnapshotInfo(ctx, mv)
			if err != nil {
				t.Error(err)
				return
			}
			var moves []JournalMove
			for _, f := range info.Files {
				if isIndexFile(f) {
					moves = append(moves, JournalMove{From: mv.File(f), To: dst.File(f)})
				}
			}
			var e *JournalEntry
			if journal {
				if e, err = s0.journalOpen(ctx, moves); err != nil {
					t.Error(err)
					return
				}
			}
			if err := s0.SetGroupOwner(ctx, dst.Group, "root@pam"); err != nil {
				t.Error(err)
			}
			if err := s0.Backend().Rename(ctx, mv.Path(), dst.Path()); err != nil {
				t.Error(err)
			}
			if journal {
				if err := s0.journalClose(ctx, e); err != nil {
					t.Error(err)
				}
			}
		})
	}
	res, err := s.GC(ctx, GCRequest{Now: gtLater}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !gtExists(t, dir, dst.File(ManifestName)) {
		t.Fatal("the hook did not move the snapshot")
	}
	return res, moved, dir, s0
}

// TestGCMoveJournal: a snapshot moved across the walk during marking is
// found through the move journal; its chunks survive and the journal
// entry (done before the mark start) is drained.
func TestGCMoveJournal(t *testing.T) {
	res, moved, dir, s := gtMoveDuringMark(t, true)
	for _, d := range moved {
		if !gtExists(t, dir, ChunkPath(d)) {
			t.Errorf("chunk %s of the moved snapshot was swept", d)
		}
	}
	if res.JournalIndexFiles != 2 {
		t.Errorf("%d index files marked from the journal, want 2", res.JournalIndexFiles)
	}
	if ents, _ := os.ReadDir(gtPath(dir, journalDir)); len(ents) != 0 {
		t.Errorf("journal not drained: %d entries", len(ents))
	}
	TestVerifyAll(t, s, 2, 0)
}

// TestGCMoveWithoutJournalLosesChunks is the control: without the journal
// entry the same move makes GC miss the index.
func TestGCMoveWithoutJournalLosesChunks(t *testing.T) {
	_, moved, dir, _ := gtMoveDuringMark(t, false)
	lost := 0
	for _, d := range moved {
		if !gtExists(t, dir, ChunkPath(d)) {
			lost++
		}
	}
	if lost == 0 {
		t.Error("no chunk lost without the journal; the journal test proves nothing")
	}
}

// TestGCBadChunks: .bad copies are kept while their chunk is referenced
// and missing (marking touches them); they age out like garbage once a
// good copy is back or nothing references the chunk.
func TestGCBadChunks(t *testing.T) {
	ctx := context.Background()
	env := NewTestEnv(t, TestFlock(-1))
	s, dir := env.Store, env.Dir
	data := map[string][]byte{}
	dig := map[string]Digest{}
	for _, k := range []string{"A", "B", "C", "D", "E"} {
		data[k] = gtRandom(2000)
		dig[k] = TestChunk(t, s, data[k])
	}
	rename := func(k string) string {
		p, err := s.RenameCorruptChunk(ctx, dig[k])
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	badA := rename("A")        // referenced, no good copy left
	badB := rename("B")        // referenced, good copy uploaded again:
	TestChunk(t, s, data["B"]) //
	badC := rename("C")        // unreferenced
	badD0 := rename("D")       // unreferenced, two copies,
	TestChunk(t, s, data["D"]) //
	badD1 := rename("D")       // the second young
	sn := name.NewSnapshot(ptGroup(t, "", "vm", "1"), gtT0)
	gtIndex(t, s, sn.File("root.pxar.didx"), dig["A"], dig["B"], dig["E"])
	TestAgeChunks(t, dir, time.Now().Add(-72*time.Hour))
	gtAge(t, dir, badD1, time.Now().Add(-time.Hour))
	for _, p := range []string{badA, badB, badC, badD0, badD1} {
		if !strings.HasSuffix(p, ".bad") || !gtExists(t, dir, p) {
			t.Fatalf("setup: %s", p)
		}
	}

	dry, err := s.GC(ctx, GCRequest{DryRun: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if dry.ReclaimableBad != 3 || dry.StillBad != 2 || dry.RemovedBad != 0 {
		t.Errorf("dry run: reclaimable bad %d (want 3), still bad %d (want 2), removed %d", dry.ReclaimableBad, dry.StillBad, dry.RemovedBad)
	}
	for _, p := range []string{badA, badB, badC, badD0, badD1} {
		if !gtExists(t, dir, p) {
			t.Errorf("dry run removed %s", p)
		}
	}

	res, err := s.GC(ctx, GCRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{badA: true, badB: false, badC: false, badD0: false, badD1: true,
		ChunkPath(dig["B"]): true, ChunkPath(dig["E"]): true, ChunkPath(dig["D"]): false}
	for p, keep := range want {
		if gtExists(t, dir, p) != keep {
			t.Errorf("%s: exists=%v, want %v", p, !keep, keep)
		}
	}
	if at, _, _ := gtStat(t, dir, badA); at.Before(res.MarkStart.Add(-time.Second)) {
		t.Errorf("the .bad copy of a missing referenced chunk was not touched: %s", at)
	}
	if res.RemovedBad != 3 || res.StillBad != 2 || res.MissingChunks != 1 || res.RemovedChunks != 0 {
		t.Errorf("removed bad %d (3), still bad %d (2), missing %d (1), removed chunks %d (0)", res.RemovedBad, res.StillBad, res.MissingChunks, res.RemovedChunks)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], dig["A"].String()) {
		t.Errorf("warnings %q should name the missing chunk", res.Warnings)
	}
}

// gtBlockedGC starts a GC that stops at its first index file read until
// released; it returns the release func and the GC's outcome channel.
func gtBlockedGC(t *testing.T, s0 *Store) (release func(), done <-chan error) {
	t.Helper()
	s, gb := gtWrapped(t, s0)
	entered, proceed := make(chan struct{}), make(chan struct{})
	var once sync.Once
	gb.readFile = func(p string) {
		if isIndexFile(p[strings.LastIndexByte(p, '/')+1:]) {
			once.Do(func() { close(entered); <-proceed })
		}
	}
	ch := make(chan error, 1)
	go func() {
		_, err := s.GC(context.Background(), GCRequest{}, nil)
		ch <- err
	}()
	select {
	case <-entered:
	case err := <-ch:
		t.Fatalf("GC ended before reading an index: %v", err)
	}
	var ro sync.Once
	return func() { ro.Do(func() { close(proceed) }) }, ch
}

func gtReadLease(t testing.TB, dir string) gcLease {
	t.Helper()
	data, err := os.ReadFile(gtPath(dir, gcLeasePath))
	if err != nil {
		t.Fatal(err)
	}
	var l gcLease
	if err := json.Unmarshal(data, &l); err != nil {
		t.Fatal(err)
	}
	return l
}

func gtSetLeaseRefresh(t *testing.T, d time.Duration) {
	old := gcLeaseRefresh
	gcLeaseRefresh = d
	t.Cleanup(func() { gcLeaseRefresh = old })
}

// TestGCOneAtATime: a second GC on the store refuses with lock.ErrBusy
// while the first runs (a dry run may still look); the lease's heartbeat
// advances; afterwards the lease is gone and GC runs again.
func TestGCOneAtATime(t *testing.T) {
	gtSetLeaseRefresh(t, 20*time.Millisecond)
	sc := gtSetup(t)
	ctx := context.Background()
	release, done := gtBlockedGC(t, sc.s)
	defer release()
	first := gtReadLease(t, sc.dir)
	_, err := sc.s.GC(ctx, GCRequest{}, nil)
	if !errors.Is(err, lock.ErrBusy) || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second GC: %v, want lock.ErrBusy (already running)", err)
	}
	if _, err := sc.s.GC(ctx, GCRequest{DryRun: true}, nil); err != nil {
		t.Errorf("dry run beside a running GC: %v", err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		l := gtReadLease(t, sc.dir)
		if l.ID != first.ID {
			t.Fatalf("lease changed hands: %+v then %+v", first, l)
		}
		if l.Heartbeat.After(first.Heartbeat) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease heartbeat did not advance in 30 s: %+v then %+v", first, l)
		}
	}
	if !gtExists(t, sc.dir, ChunkPath(sc.oldOrphan)) {
		t.Error("a refused GC swept")
	}
	release()
	if err := <-done; err != nil {
		t.Fatalf("first GC: %v", err)
	}
	if gtExists(t, sc.dir, gcLeasePath) {
		t.Fatal("lease left after GC")
	}
	if _, err := sc.s.GC(ctx, GCRequest{}, nil); err != nil {
		t.Errorf("GC after the first finished: %v", err)
	}
}

// TestGCLease: a fresh foreign lease refuses, a stale one (a crashed GC)
// is taken over; a GC whose lease is taken over stops before sweeping and
// leaves the new holder's lease alone.
func TestGCLease(t *testing.T) {
	ctx := context.Background()
	sc := gtSetup(t)
	write := func(s *Store, l gcLease) {
		data, _ := json.Marshal(l)
		if err := s.Backend().WriteFile(ctx, gcLeasePath, data); err != nil {
			t.Fatal(err)
		}
	}
	write(sc.s, gcLease{ID: "other", Host: "elsewhere", PID: 42, Start: time.Now().Add(-2 * time.Hour), Heartbeat: time.Now().Add(-2 * time.Minute)})
	if _, err := sc.s.GC(ctx, GCRequest{}, nil); !errors.Is(err, lock.ErrBusy) || !strings.Contains(err.Error(), "elsewhere (pid 42)") {
		t.Errorf("GC beside a live lease: %v, want ErrBusy naming the holder", err)
	}
	if gtReadLease(t, sc.dir).ID != "other" {
		t.Error("refused GC changed the lease")
	}
	write(sc.s, gcLease{ID: "crashed", Host: "elsewhere", PID: 42, Start: time.Now().Add(-50 * time.Hour), Heartbeat: time.Now().Add(-25 * time.Hour)})
	if _, err := sc.s.GC(ctx, GCRequest{}, nil); err != nil {
		t.Fatalf("GC beside a stale lease: %v", err)
	}
	if ents, _ := os.ReadDir(gtPath(sc.dir, ".pbsq")); slices.ContainsFunc(ents, func(e os.DirEntry) bool { return strings.HasPrefix(e.Name(), "gc-running") }) {
		t.Errorf("lease files left: %v", ents)
	}
	if gtExists(t, sc.dir, ChunkPath(sc.oldOrphan)) {
		t.Error("GC that took over the stale lease did not sweep")
	}

	t.Run("taken over", func(t *testing.T) {
		gtSetLeaseRefresh(t, 20*time.Millisecond)
		sc := gtSetup(t)
		release, done := gtBlockedGC(t, sc.s)
		defer release()
		write(sc.s, gcLease{ID: "usurper", Host: "elsewhere", PID: 7, Start: time.Now(), Heartbeat: time.Now()})
		// Whether or not a heartbeat saw it first, GC confirms its lease
		// before sweeping.
		release()
		if err := <-done; !errors.Is(err, ErrGCLeaseLost) {
			t.Errorf("GC whose lease was taken: %v, want ErrGCLeaseLost", err)
		}
		if !gtExists(t, sc.dir, ChunkPath(sc.oldOrphan)) {
			t.Error("GC swept after losing its lease")
		}
		if gtReadLease(t, sc.dir).ID != "usurper" {
			t.Error("GC removed or overwrote the new holder's lease")
		}
	})
}

// TestGCWriterRegistry: registration, heartbeat and removal of a writer;
// stale entries are ignored and cleaned; a live writer lowers the cutoff
// to just before its start.
func TestGCWriterRegistry(t *testing.T) {
	ctx := context.Background()
	old := writerHeartbeat
	writerHeartbeat = 20 * time.Millisecond
	t.Cleanup(func() { writerHeartbeat = old })
	sc := gtSetup(t)
	s := sc.s

	done, err := s.registerWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	live, stale, err := s.activeWriters(ctx)
	if err != nil || len(live) != 1 || len(stale) != 0 || live[0].PID != os.Getpid() || time.Since(live[0].Start) > time.Minute {
		t.Fatalf("active writers %+v, stale %v, %v", live, stale, err)
	}
	first := live[0]
	// Each beat writes (and syncs) the entry, which can take long on a
	// loaded machine: wait for a beat rather than for a fixed time.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		live, _, _ = s.activeWriters(ctx)
		if len(live) == 1 && live[0].Heartbeat.After(first.Heartbeat) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("heartbeat did not advance in 30 s: %+v then %+v", first, live)
		}
	}
	if !live[0].Start.Equal(first.Start) {
		t.Errorf("heartbeat changed the start: %+v then %+v", first, live)
	}
	done()
	done()
	if live, _, _ := s.activeWriters(ctx); len(live) != 0 {
		t.Errorf("writer still registered after done: %+v", live)
	}

	// A crashed writer (heartbeat 11 minutes old) is ignored and removed.
	writeEntry := func(e writerEntry) {
		data, _ := json.Marshal(e)
		if err := s.Backend().WriteFile(ctx, writerPath(e.ID), data); err != nil {
			t.Fatal(err)
		}
	}
	writeEntry(writerEntry{ID: "crashed", Start: time.Now().Add(-5 * 24 * time.Hour), Heartbeat: time.Now().Add(-11 * time.Minute)})
	res, err := s.GC(ctx, GCRequest{DryRun: true}, nil)
	if err != nil || res.ActiveWriters != 0 || res.StaleWriters != 1 || res.ReclaimableChunks != 1 {
		t.Errorf("with a crashed writer: %+v, %v", res, err)
	}
	// A live writer that started three days ago keeps the old orphan.
	writeEntry(writerEntry{ID: "slow", Start: time.Now().Add(-3*24*time.Hour - time.Minute), Heartbeat: time.Now()})
	res, err = s.GC(ctx, GCRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.ActiveWriters != 1 || res.OldestWriter == nil || !res.MinAccessTime.Equal(res.OldestWriter.Add(-writerGap)) ||
		res.RemovedChunks != 0 || !gtExists(t, sc.dir, ChunkPath(sc.oldOrphan)) {
		t.Errorf("with a writer started 3 days ago: writers %d, oldest %v, min atime %s, removed %d", res.ActiveWriters, res.OldestWriter, res.MinAccessTime, res.RemovedChunks)
	}
	if gtExists(t, sc.dir, writerPath("crashed")) {
		t.Error("stale writer entry not removed by GC")
	}
	if err := s.Backend().Remove(ctx, writerPath("slow")); err != nil {
		t.Fatal(err)
	}
	if res, err := s.GC(ctx, GCRequest{}, nil); err != nil || res.RemovedChunks != 1 {
		t.Errorf("after the writer ended: removed %v, %v", res, err)
	}
}

// TestGCUnreadableIndexStops: an index file that cannot be parsed stops GC
// before the sweep.
func TestGCUnreadableIndexStops(t *testing.T) {
	sc := gtSetup(t)
	p := "vm/100/" + gtT0.Format(name.TimeLayout) + "/broken.didx"
	if err := sc.s.Backend().WriteFile(context.Background(), p, []byte("not an index")); err != nil {
		t.Fatal(err)
	}
	_, err := sc.s.GC(context.Background(), GCRequest{Now: gtLater}, nil)
	if err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("GC with an unreadable index: %v, want an error naming %s", err, p)
	}
	if !gtExists(t, sc.dir, ChunkPath(sc.oldOrphan)) {
		t.Error("GC swept despite an unreadable index")
	}
	if gtExists(t, sc.dir, gcLeasePath) {
		t.Error("failed GC left its lease")
	}
}

// TestGCStrayIndexFiles: index files in directories the datastore layout
// does not recognise still protect their chunks, with a warning.
func TestGCStrayIndexFiles(t *testing.T) {
	env := NewTestEnv(t, TestFlock(-1))
	s, dir := env.Store, env.Dir
	var ds []Digest
	strays := []string{
		"vm/bad name/2024-01-01T00:00:00Z/root.pxar.didx",
		"ns/a/vm/1/not-a-time/root.pxar.didx",
		"ns/ns/ct/2/2024-01-01T00:00:00Z/extra/root.pxar.didx",
	}
	for _, p := range strays {
		d := TestChunk(t, s, gtRandom(1000))
		ds = append(ds, d)
		gtIndex(t, s, p, d)
	}
	orphan := TestChunk(t, s, gtRandom(1000))
	res, err := s.GC(context.Background(), GCRequest{Now: gtLater}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if !gtExists(t, dir, ChunkPath(d)) {
			t.Errorf("chunk %s of a stray index swept", d)
		}
	}
	if gtExists(t, dir, ChunkPath(orphan)) {
		t.Error("orphan kept: the sweep did not run")
	}
	got := slices.Sorted(slices.Values(res.StrayIndexFiles))
	if want := slices.Sorted(slices.Values(strays)); !slices.Equal(got, want) || len(res.Warnings) < len(strays) {
		t.Errorf("stray index files %v, want %v; warnings %q", got, want, res.Warnings)
	}
}

// TestGCRelistsGroupWhenNewestVanishes: the race PBS guards against by
// listing a group again: after GC listed the group, a new snapshot arrives
// (referencing an old chunk its client reused without upload) and the
// previously newest snapshot is pruned before GC reads it.
func TestGCRelistsGroupWhenNewestVanishes(t *testing.T) {
	env := NewTestEnv(t, TestFlock(-1))
	s0, dir := env.Store, env.Dir
	g := ptGroup(t, "", "vm", "1")
	kept := TestChunk(t, s0, gtRandom(1000))
	reused := TestChunk(t, s0, gtRandom(1000))
	s1, s2, s3 := name.NewSnapshot(g, gtT0), name.NewSnapshot(g, gtT0.Add(time.Hour)), name.NewSnapshot(g, gtT0.Add(2*time.Hour))
	gtIndex(t, s0, s1.File("a.didx"), kept)
	gtIndex(t, s0, s2.File("a.didx"), kept)
	s, gb := gtWrapped(t, s0)
	var once sync.Once
	gb.readFile = func(p string) {
		if p == s2.File("a.didx") {
			once.Do(func() {
				gtIndex(t, s0, s3.File("a.didx"), reused)
				if err := os.RemoveAll(gtPath(dir, s2.Path())); err != nil {
					t.Error(err)
				}
			})
		}
	}
	if _, err := s.GC(context.Background(), GCRequest{Now: gtLater}, nil); err != nil {
		t.Fatal(err)
	}
	for _, d := range []Digest{kept, reused} {
		if !gtExists(t, dir, ChunkPath(d)) {
			t.Errorf("chunk %s swept", d)
		}
	}
}

// TestGCDigestSet checks the compact set against a map, including
// digests that share a shard or differ only in the bytes it keeps.
func TestGCDigestSet(t *testing.T) {
	set, ref := newDigestSet(), map[Digest]bool{}
	var ds []Digest
	for i := range 20000 {
		var d Digest
		_, _ = rand.Read(d[:])
		if i%3 == 0 && len(ds) > 0 {
			d[0], d[1] = ds[len(ds)-1][0], ds[len(ds)-1][1] // same shard
		}
		ds = append(ds, d)
	}
	for i, d := range ds {
		if got := set.add(d); got != !ref[d] {
			t.Fatalf("add #%d reported new=%v, want %v", i, got, !ref[d])
		}
		ref[d] = true
		if set.add(d) {
			t.Fatalf("add #%d again reported new", i)
		}
	}
	if set.len() != len(ref) {
		t.Errorf("len %d, want %d", set.len(), len(ref))
	}
	for _, d := range ds {
		if !set.has(d) {
			t.Fatalf("%s lost", d)
		}
		e := d
		e[17] ^= 1 // a kept byte differs: must not be found
		if set.has(e) != ref[e] {
			t.Fatalf("%s found", e)
		}
	}
}

func TestGCRejectsTinyCutoff(t *testing.T) {
	s := TestStore(t, TestFlock(-1))
	if _, err := s.GC(context.Background(), GCRequest{Cutoff: 30 * time.Second}, nil); !errors.Is(err, name.ErrInvalid) {
		t.Errorf("cutoff 30s: %v, want name.ErrInvalid", err)
	}
}

// TestGCObjectStore runs GC on S3 (gofakes3): chunks modified within the
// last hour are not touched again (no server-side copies); with the clock
// two days on, referenced chunks are touched and kept, the orphan deleted.
func TestGCObjectStore(t *testing.T) {
	ctx := context.Background()
	srv := s3test.StartFake(t)
	s0 := TestStore(t, TestOn("gofakes3", srv.New(t, srv.UniquePrefix("gc"))))
	TestBackup(t, s0, "", "vm/1", gtT0, TestFile(t, "disk.img", 100<<10, 0), TestFile(t, "root.pxar", 200<<10, 0))
	TestBackup(t, s0, "x", "ct/2", gtT0, TestFile(t, "root.pxar", 100<<10, 0))
	orphan := TestChunk(t, s0, gtRandom(3000))
	refs := gtFinishedChunks(t, s0)
	s, gb := gtWrapped(t, s0)

	res, err := s.GC(ctx, GCRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := gb.touches.Load(); n != 0 || res.TouchesSkipped != len(refs) || res.PendingChunks != 1 || res.RemovedChunks != 0 {
		t.Errorf("fresh chunks: %d touches, skipped %d of %d, pending %d, removed %d", n, res.TouchesSkipped, len(refs), res.PendingChunks, res.RemovedChunks)
	}

	res, err = s.GC(ctx, GCRequest{Now: gtLater}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := gb.touches.Load(); n != int64(len(refs)) || res.TouchedChunks != len(refs) || res.RemovedChunks != 1 {
		t.Errorf("two days on: %d touches for %d referenced chunks, removed %d", n, len(refs), res.RemovedChunks)
	}
	if ok, err := s0.ChunkExists(ctx, orphan); err != nil || ok {
		t.Errorf("orphan still there (%v)", err)
	}
	for d := range refs {
		if ok, err := s0.ChunkExists(ctx, d); err != nil || !ok {
			t.Errorf("referenced chunk %s gone (%v)", d, err)
		}
	}
	TestVerifyAll(t, s0, 2, 0)
}
