package datastore_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/backend/s3/faultproxy"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/invariant"
	"github.com/pbsq/pbsq/datastore/name"
)

// The acceptance test of "reliability under faults": through an S3 proxy
// failing ~12 % of requests in every way S3 fails (503 SlowDown, 500,
// connection resets before and after the server handled the request) and
// slowing some more, a backup onto S3, verify, move-namespace, a sync from
// a filesystem store onto S3 and the sync of everything back onto a
// filesystem store, and a garbage collection that really sweeps, all
// complete, and every snapshot arrives valid: the invariant checker, the
// store's own Verify and the independent pbsfmt.py agree.
//
// PBSQ_FAULT_SEED picks the proxy's random seed (default 1; the seed is
// logged); PBSQ_STRESS=1 runs more snapshots through several seeds.
func TestS3FaultsLoseNothing(t *testing.T) {
	seeds := []int64{faultSeed(t)}
	rounds := 1
	if stress() {
		seeds = append(seeds, seeds[0]+1, seeds[0]+2)
		rounds = 2
	}
	srv := s3test.StartVersity(t)
	for _, seed := range seeds {
		t.Run("seed="+strconv.FormatInt(seed, 10), func(t *testing.T) {
			runS3Faults(t, srv, seed, rounds)
		})
	}
}

// faultRates fail 12 % of requests and slow 4 % more.
var faultRates = faultproxy.Rates{
	SlowDown: 0.03, Internal: 0.03, Reset: 0.03, ResetAfter: 0.03,
	Slow: 0.04, SlowDelay: 150 * time.Millisecond,
}

func runS3Faults(t *testing.T, srv *s3test.Server, seed int64, rounds int) {
	ctx := context.Background()
	proxy, err := faultproxy.New(srv.Endpoint(), faultRates, seed)
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	cfg := srv.Config(srv.UniquePrefix("faults"))
	cfg.Endpoint = proxy.URL()
	b, err := s3.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	start := time.Now()
	step := func(what string) {
		st := proxy.Stats()
		t.Logf("%-28s done at %5.1fs; proxy so far: %d requests, %d failed", what, time.Since(start).Seconds(), st.Requests, failedOf(st))
	}

	off, err := datastore.Create(ctx, "offsite", b, datastore.Options{})
	if err != nil {
		t.Fatalf("create S3 store through faults: %v", err)
	}
	exp := invariant.NewExpect()
	exp.Strict = true
	src := newSources(t, seed)
	for _, ns := range []string{"a", "a/b", "c", "moved"} {
		if err := off.CreateNamespace(ctx, name.MustNamespace(ns)); err != nil {
			t.Fatalf("create namespace %s through faults: %v", ns, err)
		}
	}

	// 1. Backups onto S3: new chunks, and (second snapshot of a group)
	// chunks that are there already, which is CreateFile's 412 path.
	var snaps []name.Snapshot
	base := time.Date(2024, 3, 1, 0, 0, 0, 0, time.UTC)
	n := 0
	for r := 0; r < rounds; r++ {
		for _, g := range []struct{ ns, typ, id string }{
			{"a", "vm", "100"}, {"a", "vm", "100"}, {"a", "ct", "101"}, {"a/b", "vm", "200"}, {"c", "host", "web"}, {"", "vm", "1"},
		} {
			n++
			sn := backupOne(t, off, g.ns, g.typ, g.id, base.Add(time.Duration(n)*time.Hour), src.next(t))
			snaps = append(snaps, sn)
		}
	}
	step("backup onto S3")

	// 2. Verify everything.
	vres, err := off.Verify(ctx, datastore.VerifyRequest{Scope: datastore.Scope{NS: name.Root, MaxDepth: -1}}, nil)
	if err != nil {
		t.Fatalf("verify through faults: %v", err)
	}
	if vres.OK != len(snaps) || len(vres.Failed) > 0 {
		t.Fatalf("verify through faults: %d ok of %d, failed %+v", vres.OK, len(snaps), vres.Failed)
	}
	step("verify")

	// 3. move-namespace a (with a/b) to moved/a.
	mres, err := off.MoveNamespace(ctx, datastore.MoveNamespaceRequest{
		NS: name.MustNamespace("a"), TargetNS: name.MustNamespace("moved/a"), MaxDepth: -1, DeleteSource: true, MergeGroups: true,
	}, nil)
	if err != nil {
		t.Fatalf("move-namespace through faults: %v (result %+v)", err, mres)
	}
	if !mres.Complete {
		t.Fatalf("move-namespace through faults incomplete: %+v", mres)
	}
	for _, sn := range snaps {
		to := sn.NS
		if ns := sn.NS.String(); ns == "a" || ns == "a/b" {
			to, _ = name.Rebase(sn.NS, name.MustNamespace("a"), name.MustNamespace("moved/a"))
		}
		exp.Want(sn, to)
	}
	if ok, err := off.NamespaceExists(ctx, name.MustNamespace("a")); err != nil || ok {
		t.Errorf("source namespace a still there after the move (%v)", err)
	}
	step("move-namespace")

	// 4. A filesystem store synced onto S3 (ns fromfs).
	local := datastore.TestStore(t, datastore.TestName("local"))
	var localSnaps []name.Snapshot
	for i := 0; i < 3*rounds; i++ {
		n++
		localSnaps = append(localSnaps, backupOne(t, local, "", "vm", strconv.Itoa(500+i%2), base.Add(time.Duration(n)*time.Hour), src.next(t)))
	}
	if err := off.CreateNamespace(ctx, name.MustNamespace("fromfs")); err != nil {
		t.Fatal(err)
	}
	sres, err := datastore.Sync(ctx, local, off, datastore.SyncRequest{SourceNS: name.Root, NS: name.MustNamespace("fromfs"), MaxDepth: -1}, nil)
	if err != nil {
		t.Fatalf("sync fs→s3 through faults: %v", err)
	}
	if err := sres.Outcome(); err != nil || sres.Snapshots != len(localSnaps) {
		t.Fatalf("sync fs→s3 through faults: %v, %d of %d snapshots: %+v", err, sres.Snapshots, len(localSnaps), sres)
	}
	for _, sn := range localSnaps {
		exp.Want(sn.InNS(name.MustNamespace("fromfs")))
	}
	step("sync fs→s3")

	// 5. Garbage collection that sweeps: unreferenced chunks are made to
	// look old by running GC two days ahead; referenced ones must stay.
	garbage := addGarbageChunks(t, off, src, 4)
	gres, err := off.GC(ctx, datastore.GCRequest{Now: func() time.Time { return time.Now().Add(48 * time.Hour) }}, nil)
	if err != nil {
		t.Fatalf("gc through faults: %v", err)
	}
	for _, d := range garbage {
		if ok, err := off.ChunkExists(ctx, d); err != nil || ok {
			t.Errorf("gc left unreferenced chunk %s (%v)", d, err)
		}
	}
	if gres.MissingChunks != 0 || gres.RemovedChunks < len(garbage) {
		t.Errorf("gc through faults: %d missing, %d removed (want ≥ %d)", gres.MissingChunks, gres.RemovedChunks, len(garbage))
	}
	if _, err := b.Stat(ctx, ".pbsq/gc-running"); err == nil {
		t.Error("gc left its lease behind")
	}
	step("gc")

	// 6. Everything back onto a filesystem store.
	backDir := t.TempDir()
	back := datastore.TestStore(t, datastore.TestName("back"), datastore.TestAt(backDir))
	bres, err := datastore.Sync(ctx, off, back, datastore.SyncRequest{SourceNS: name.Root, NS: name.Root, MaxDepth: -1}, nil)
	if err != nil {
		t.Fatalf("sync s3→fs through faults: %v", err)
	}
	if err := bres.Outcome(); err != nil || bres.Snapshots != len(exp.Present) {
		t.Fatalf("sync s3→fs through faults: %v, %d of %d snapshots: %+v", err, bres.Snapshots, len(exp.Present), bres)
	}
	step("sync s3→fs")

	st := proxy.Stats()
	rate := float64(failedOf(st)) / float64(st.Requests)
	t.Logf("seed %d: %d requests through the proxy, %.1f%% failed (%d 503 SlowDown, %d 500, %d reset before, %d reset after the server handled it), %d slowed; %d snapshots",
		seed, st.Requests, 100*rate, st.SlowDown, st.Internal, st.Reset, st.ResetAfter, st.Slow, len(exp.Present))
	if rate < 0.10 || st.ResetAfter == 0 {
		t.Errorf("the proxy failed only %.1f%% of requests (%d reset after): the test did not test much", 100*rate, st.ResetAfter)
	}

	// The checks run without faults: they judge the data, not the network.
	proxy.SetRates(faultproxy.Rates{})
	for _, c := range []struct {
		s    *datastore.Store
		opts invariant.Options
	}{{off, invariant.Options{Deep: true}}, {back, invariant.Options{Deep: true, Verify: true}}} {
		rep, err := invariant.Check(ctx, c.s, exp, c.opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := rep.Err(); err != nil {
			t.Errorf("store %s: %v", c.s.Name(), err)
		}
		files, err := invariant.CheckFiles(ctx, c.s.Backend())
		if err != nil {
			t.Fatal(err)
		}
		if err := files.Err(); err != nil || len(files.Temps) > 0 {
			t.Errorf("store %s: %v; temp files %v", c.s.Name(), err, files.Temps)
		}
	}
	out, err := invariant.PBSFmtCheck(ctx, backDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pbsfmt.py on the final filesystem copy: %s", out)
}

func failedOf(st faultproxy.Stats) int64 { return st.SlowDown + st.Internal + st.Reset + st.ResetAfter }

func stress() bool { return os.Getenv("PBSQ_STRESS") == "1" }

func faultSeed(t *testing.T) int64 {
	if v := os.Getenv("PBSQ_FAULT_SEED"); v != "" {
		s, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("PBSQ_FAULT_SEED=%q: %v", v, err)
		}
		return s
	}
	return 1
}

// sources writes backup input files: a disk image of a few 4 MiB blocks,
// each unique at its start and zero after (so each is a chunk of its own
// that compresses to almost nothing), and a small config.
type sources struct {
	dir string
	rng *rand.Rand
	n   int
	// prev is the previous image: every second image repeats all but one
	// of its blocks, so backups find most chunks already stored.
	prev [][]byte
}

func newSources(t testing.TB, seed int64) *sources {
	return &sources{dir: t.TempDir(), rng: rand.New(rand.NewPCG(uint64(seed), 99))}
}

const blockSize = datastore.FixedChunkSize

func (s *sources) block() []byte {
	b := make([]byte, blockSize)
	for i := 0; i < 4096; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], s.rng.Uint64())
	}
	return b
}

// next returns the files of one backup.
func (s *sources) next(t testing.TB) []string {
	t.Helper()
	s.n++
	blocks := s.prev
	if s.n%2 == 1 || len(blocks) == 0 {
		blocks = [][]byte{s.block(), s.block(), s.block()}
	} else {
		blocks = append([][]byte{s.block()}, blocks[1:]...)
	}
	s.prev = blocks
	img := filepath.Join(s.dir, fmt.Sprintf("disk%d.img", s.n))
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	// A short last block: the image need not be a multiple of the chunk size.
	if _, err := f.Write(s.block()[:8192+s.rng.IntN(4096)]); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(s.dir, fmt.Sprintf("guest%d.conf", s.n))
	if err := os.WriteFile(conf, fmt.Appendf(nil, "name: guest %d\nmemory: %d\n", s.n, 1024+s.rng.IntN(4096)), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{img, conf}
}

// backupOne writes a snapshot with the standard archive names.
func backupOne(t testing.TB, s *datastore.Store, ns, typ, id string, at time.Time, files []string) name.Snapshot {
	t.Helper()
	g, err := name.NewGroup(name.MustNamespace(ns), typ, id)
	if err != nil {
		t.Fatal(err)
	}
	req := datastore.BackupRequest{Group: g, Time: at, Owner: "root@pam"}
	for i, p := range files {
		archive := "disk.img"
		if i > 0 {
			archive = "guest.conf"
		}
		req.Sources = append(req.Sources, datastore.BackupSource{Path: p, Archive: archive})
	}
	res, err := s.Backup(context.Background(), req, nil)
	if err != nil {
		t.Fatalf("backup %s/%s at %s into %q on %s: %v", typ, id, at.Format(time.RFC3339), ns, s.Name(), err)
	}
	return res.SnapshotName()
}

// addGarbageChunks stores chunks no index references.
func addGarbageChunks(t testing.TB, s *datastore.Store, src *sources, n int) []datastore.Digest {
	t.Helper()
	var out []datastore.Digest
	for i := 0; i < n; i++ {
		out = append(out, datastore.TestChunk(t, s, src.block()[:4096]))
	}
	return out
}
