package datastore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/name"
)

// vpScene is a store whose chunk digests are the same in every test run
// (seeded data), so the sample windows hold the same chunks every time.
type vpScene struct {
	s     *Store
	snaps []name.Snapshot
	refs  map[name.Snapshot][]Digest // distinct chunks per snapshot
	all   map[Digest]bool
}

// vpSetup writes groups × perGroup snapshots of files small chunks each
// (one chunk a file). Even files are shared by pairs of neighbouring
// snapshots of a group, as successive backups share data.
func vpSetup(t testing.TB, s *Store, groups, perGroup, files int) *vpScene {
	t.Helper()
	dir := t.TempDir()
	sc := &vpScene{s: s, refs: map[name.Snapshot][]Digest{}, all: map[Digest]bool{}}
	for g := range groups {
		for k := range perGroup {
			var paths []string
			for j := range files {
				seed := uint64(k)
				if j%2 == 0 {
					seed = uint64(k / 2)
				}
				r := rand.New(rand.NewPCG(uint64(g)<<32|uint64(j), seed))
				data := make([]byte, 4<<10)
				for i := range data {
					data[i] = byte(r.Uint32())
				}
				p := filepath.Join(dir, fmt.Sprintf("g%d-s%d", g, k), fmt.Sprintf("f%02d.tar", j))
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, data, 0o644); err != nil {
					t.Fatal(err)
				}
				paths = append(paths, p)
			}
			res := TestBackup(t, s, "", fmt.Sprint("vm/", 100+g), time.Unix(int64(1700000000+k*3600), 0), paths...)
			sc.snaps = append(sc.snaps, res.snapshotValue)
		}
	}
	for _, sn := range sc.snaps {
		seen := map[Digest]bool{}
		for j := range files {
			for _, d := range vtDigests(t, s, sn, fmt.Sprintf("f%02d.tar.didx", j)) {
				if !seen[d] {
					seen[d] = true
					sc.refs[sn] = append(sc.refs[sn], d)
				}
				sc.all[d] = true
			}
		}
	}
	return sc
}

// unshared returns, for each of the given snapshots, a chunk only it
// references, in order.
func (sc *vpScene) unshared(t testing.TB, idx []int) []Digest {
	t.Helper()
	count := map[Digest]int{}
	for _, ds := range sc.refs {
		for _, d := range ds {
			count[d]++
		}
	}
	var out []Digest
	for _, i := range idx {
		found := false
		for _, d := range sc.refs[sc.snaps[i]] {
			if count[d] == 1 && !slices.Contains(out, d) {
				out = append(out, d)
				found = true
				break
			}
		}
		if !found {
			t.Fatalf("snapshot %d has no chunk of its own", i)
		}
	}
	return out
}

func vpAll() Scope { return Scope{NS: name.Root, MaxDepth: -1} }

// TestVerifySampleRotation: four sampled runs at 25 % find every planted
// corrupt chunk, each reads 15-40 % of the chunks, and verify_state ok is
// recorded only by the run that completes the rotation, for the snapshots
// every run checked.
func TestVerifySampleRotation(t *testing.T) {
	eachBackend(t, func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv) {
		ctx := context.Background()
		sc := vpSetup(t, newEnv(t, TestFlock(-1)).Store, 4, 5, 8)
		s := sc.s
		planted := sc.unshared(t, []int{0, 6, 12, 18})
		for _, d := range planted {
			TestCorruptChunk(t, sc.s, d)
		}
		total := len(sc.all)
		found := map[Digest]bool{}
		failedSnaps := map[string]bool{}
		for run := 1; run <= 4; run++ {
			r, err := s.Verify(ctx, VerifyRequest{Scope: vpAll(), TaskID: fmt.Sprint("run", run), Sample: 25, IgnoreVerified: true}, nil)
			if err != nil {
				t.Fatal(err)
			}
			share := float64(r.Chunks) / float64(total)
			t.Logf("run %d: %d of %d chunks (%.0f %%), %d corrupt, coverage %.2f", run, r.Chunks, total, 100*share, r.ChunksCorrupt, r.Sample.Coverage)
			if share < 0.15 || share > 0.40 {
				t.Errorf("run %d read %d of %d chunks (%.0f %%), want 15-40 %%", run, r.Chunks, total, 100*share)
			}
			if want := float64(run) / 4; r.Sample == nil || r.Sample.Coverage != want || r.Sample.Completed != (run == 4) {
				t.Errorf("run %d: sample %+v, want coverage %.2f", run, r.Sample, want)
			}
			for _, p := range r.RenamedBad {
				d, err := ParseDigest(path.Base(p)[:64])
				if err != nil {
					t.Fatal(err)
				}
				if found[d] {
					t.Errorf("chunk %s reported corrupt twice", d)
				}
				found[d] = true
			}
			for _, f := range r.Failed {
				failedSnaps[f.Snapshot] = true
			}
			for _, sn := range sc.snaps {
				st := vtState(t, s, sn)
				switch {
				case failedSnaps[sn.String()]:
					if st != "failed" {
						t.Errorf("run %d: failed %s has state %s", run, sn, st)
					}
				case run < 4 && st != "none":
					t.Errorf("run %d: %s recorded %s before the rotation completed", run, sn, st)
				case run == 4 && st != "ok":
					t.Errorf("after the rotation %s has state %s, want ok", sn, st)
				}
			}
		}
		for _, d := range planted {
			if !found[d] {
				t.Errorf("planted corrupt chunk %s never found", d)
			}
		}
		if len(found) != len(planted) || len(failedSnaps) != len(planted) {
			t.Errorf("found %d corrupt chunks failing %d snapshots, planted %d", len(found), len(failedSnaps), len(planted))
		}
		cov, ok, err := s.VerifySampleCoverage(ctx)
		if err != nil || !ok || cov != 1 {
			t.Errorf("coverage %v %v %v, want 1 after a completed rotation", cov, ok, err)
		}
	})
}

// vpStopAfter returns a clock and an observer: the clock advances one
// minute with every snapshot verified, so a run with max-duration
// (k-0.5) min stops after k snapshots whatever the machine's speed.
func vpStopAfter() (func() time.Time, *Observer) {
	var mu sync.Mutex
	n := 0
	t0 := time.Unix(1800000000, 0)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return t0.Add(time.Duration(n) * time.Minute)
	}
	obs := &Observer{Log: func(line string) {
		if strings.HasPrefix(line, "verify ") && (strings.HasSuffix(line, ": ok") || strings.Contains(line, ": FAILED")) {
			mu.Lock()
			n++
			mu.Unlock()
		}
	}}
	return clock, obs
}

// TestVerifyTimeBoxResume: a time-boxed run stops within its bound plus
// one snapshot, records what it finished and reports the rest as skipped;
// the next run of the scope resumes, and the two read no more than the
// store's chunks plus one snapshot's.
func TestVerifyTimeBoxResume(t *testing.T) {
	eachBackend(t, func(t *testing.T, newEnv func(t testing.TB, opts ...TestStoreOption) *TestEnv) {
		vpTimeBoxResume(t, newEnv(t, TestFlock(-1)).Store)
	})
}

func vpTimeBoxResume(t *testing.T, base *Store) {
	ctx := context.Background()
	sc := vpSetup(t, base, 2, 4, 6)
	clock, obs := vpStopAfter()
	s := base.WithObserver(obs)
	// ignore-verified off: only the resume record keeps run 2 from
	// checking run 1's snapshots again.
	req := VerifyRequest{Scope: vpAll(), TaskID: "tb1", MaxDuration: 150 * time.Second, Clock: clock}
	r1, err := s.Verify(ctx, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(r1.Outcome(), ErrSkipped) {
		t.Fatalf("outcome %v, want skipped", r1.Outcome())
	}
	// Bound 2.5 snapshots' time: the third starts before it, so 3 checked
	// (the bound plus at most one snapshot).
	if r1.Snapshots != 3 || r1.NotReached != len(sc.snaps)-r1.Snapshots {
		t.Fatalf("run 1 checked %d, not reached %d of %d", r1.Snapshots, r1.NotReached, len(sc.snaps))
	}
	for i, sn := range sc.snaps {
		want := "none"
		if i < r1.Snapshots {
			want = "ok"
		}
		if st := vtState(t, s, sn); st != want {
			t.Errorf("after run 1: %s state %s, want %s", sn, st, want)
		}
	}
	if _, err := s.b.Stat(ctx, verifyRecordPath(verifyResumeDir, vpAll())); err != nil {
		t.Fatalf("no resume record: %v", err)
	}
	req2 := VerifyRequest{Scope: vpAll(), TaskID: "tb2"}
	r2, err := s.Verify(ctx, req2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Outcome() != nil || r2.Resumed != r1.Snapshots || r2.Snapshots != len(sc.snaps)-r1.Snapshots {
		t.Fatalf("run 2: outcome %v, resumed %d, checked %d", r2.Outcome(), r2.Resumed, r2.Snapshots)
	}
	maxSnap := 0
	for _, ds := range sc.refs {
		maxSnap = max(maxSnap, len(ds))
	}
	t.Logf("run 1 read %d chunks, run 2 %d; store %d, largest snapshot %d", r1.Chunks, r2.Chunks, len(sc.all), maxSnap)
	if r1.Chunks+r2.Chunks > len(sc.all)+maxSnap {
		t.Errorf("runs read %d+%d chunks, more than the store's %d plus one snapshot's %d", r1.Chunks, r2.Chunks, len(sc.all), maxSnap)
	}
	// The resume record carries the good chunks: none is read twice.
	if r1.Chunks+r2.Chunks != len(sc.all) {
		t.Errorf("runs read %d+%d chunks of the store's %d", r1.Chunks, r2.Chunks, len(sc.all))
	}
	for _, sn := range sc.snaps {
		if st := vtState(t, s, sn); st != "ok" {
			t.Errorf("after run 2: %s state %s", sn, st)
		}
	}
	if _, err := s.b.Stat(ctx, verifyRecordPath(verifyResumeDir, vpAll())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("resume record not removed after a whole run: %v", err)
	}
	// A third run starts over: nothing left to resume.
	r3, err := s.Verify(ctx, req2, nil)
	if err != nil || r3.Resumed != 0 || r3.Snapshots != len(sc.snaps) {
		t.Fatalf("run 3: %v, resumed %d, checked %d", err, r3.Resumed, r3.Snapshots)
	}
}

// TestVerifyTimeBoxSampled: a time-boxed sampled run does not advance the
// rotation; its resumption finishes the same window.
func TestVerifyTimeBoxSampled(t *testing.T) {
	ctx := context.Background()
	base := TestStore(t, TestFlock(-1))
	sc := vpSetup(t, base, 2, 3, 8)
	clock, obs := vpStopAfter()
	s := base.WithObserver(obs)
	r1, err := s.Verify(ctx, VerifyRequest{Scope: vpAll(), TaskID: "a", Sample: 50, MaxDuration: 90 * time.Second, Clock: clock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r1.NotReached == 0 || r1.Sample.Coverage != 0 {
		t.Fatalf("run 1: not reached %d, sample %+v", r1.NotReached, r1.Sample)
	}
	r2, err := s.Verify(ctx, VerifyRequest{Scope: vpAll(), TaskID: "b", Sample: 50}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Sample.From != r1.Sample.From || r2.Sample.Coverage != 0.5 || r2.Resumed != r1.Snapshots {
		t.Fatalf("run 2: sample %+v resumed %d, run 1 %+v", r2.Sample, r2.Resumed, r1.Sample)
	}
	r3, err := s.Verify(ctx, VerifyRequest{Scope: vpAll(), TaskID: "c", Sample: 50}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r3.Sample.Completed || r3.Resumed != 0 {
		t.Fatalf("run 3: sample %+v", r3.Sample)
	}
	for _, sn := range sc.snaps {
		if st := vtState(t, s, sn); st != "ok" {
			t.Errorf("%s: state %s after the rotation", sn, st)
		}
	}
	if got := r1.Chunks + r2.Chunks + r3.Chunks; got > len(sc.all)+len(sc.refs[sc.snaps[0]]) {
		t.Errorf("rotation read %d chunks of %d", got, len(sc.all))
	}
}

// TestVerifySampleRecordsBad: damaged or foreign records are ignored (the
// run goes on as if there were none) and bad requests change nothing.
func TestVerifySampleRecordsBad(t *testing.T) {
	ctx := context.Background()
	s := TestStore(t, TestFlock(-1))
	sc := vpSetup(t, s, 1, 2, 4)
	for _, junk := range []string{"{", `{"version":2}`, `{"version":1,"scope":"ns=x depth=-1","started":"2024-01-01T00:00:00Z","updated":"2024-01-01T00:00:00Z","next":0,"covered":0,"runs":0,"members":""}`,
		`{"version":1,"scope":"ns= depth=-1","started":"2024-01-01T00:00:00Z","updated":"2024-01-01T00:00:00Z","next":7,"covered":0,"runs":0,"members":"AAAAAAAAAAEAAAAAAAAAAA=="}`} {
		if err := s.b.WriteFile(ctx, verifyRecordPath(verifyRotationDir, vpAll()), []byte(junk)); err != nil {
			t.Fatal(err)
		}
		if err := s.b.WriteFile(ctx, verifyRecordPath(verifyResumeDir, vpAll()), []byte(junk)); err != nil {
			t.Fatal(err)
		}
		r, err := s.Verify(ctx, VerifyRequest{Scope: vpAll(), TaskID: "x", Sample: 50}, nil)
		if err != nil {
			t.Fatalf("%s: %v", junk, err)
		}
		if r.Sample.From != 0 || r.Sample.Coverage != 0.5 || r.Resumed != 0 || r.Snapshots != len(sc.snaps) {
			t.Fatalf("%s: sample %+v, resumed %d", junk, r.Sample, r.Resumed)
		}
	}
	for _, req := range []VerifyRequest{{Sample: -1}, {Sample: 101}, {MaxDuration: -time.Second}, {Sample: 10, ReadOnly: true}} {
		req.Scope = vpAll()
		before, _ := s.b.ReadFile(ctx, verifyRecordPath(verifyRotationDir, vpAll()))
		if _, err := s.Verify(ctx, req, nil); !errors.Is(err, name.ErrInvalid) {
			t.Errorf("%+v: %v, want invalid", req, err)
		}
		after, _ := s.b.ReadFile(ctx, verifyRecordPath(verifyRotationDir, vpAll()))
		if string(before) != string(after) {
			t.Errorf("%+v changed the rotation record", req)
		}
	}
}

// FuzzVerifyRecord: the record decoder never panics, and whatever it
// accepts re-encodes to a record it accepts again.
func FuzzVerifyRecord(f *testing.F) {
	f.Add([]byte(`{"version":1,"scope":"ns= depth=-1","started":"2024-01-01T00:00:00Z","updated":"2024-01-01T00:00:00Z","next":25,"covered":25,"runs":1,"members":"AAAAAAAAAAEAAAAAAAAAAg=="}`))
	f.Add([]byte(`{"version":1,"scope":"s","mode":"full","started":"2024-01-01T00:00:00Z","updated":"2024-01-01T00:00:00Z","passed":"","failed":"","chunks":""}`))
	f.Add([]byte(`{"members":"!!"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var rot rotationRecord
		if decodeVerifyRecord(data, &rot) == nil && rot.validate(rot.Scope) == nil {
			vpRoundTrip(t, &rot, &rotationRecord{})
		}
		var res resumeRecord
		if decodeVerifyRecord(data, &res) == nil && res.validate(res.Scope) == nil {
			vpRoundTrip(t, &res, &resumeRecord{})
		}
	})
}

func vpRoundTrip(t *testing.T, v any, into interface{ validate(string) error }) {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := decodeVerifyRecord(b, into); err != nil {
		t.Fatalf("re-decode %s: %v", b, err)
	}
}

// TestVerifyTimeBoxMidSnapshot: the time box also ends a snapshot's
// chunks: the snapshot is left unrecorded for the next run, and the chunks
// checked so far are carried over, so nothing is read twice.
func TestVerifyTimeBoxMidSnapshot(t *testing.T) {
	// Two checkers, so at most two chunks are in flight when it stops.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	ctx := context.Background()
	base := TestStore(t, TestFlock(-1))
	sc := vpSetup(t, base, 1, 2, 24)
	// The clock advances one minute with every chunk checked.
	var mu sync.Mutex
	n := 0
	t0 := time.Unix(1800000000, 0)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return t0.Add(time.Duration(n) * time.Minute)
	}
	s := base.WithObserver(&Observer{ChunkVerified: func(string, int64) { mu.Lock(); n++; mu.Unlock() }})
	r1, err := s.Verify(ctx, VerifyRequest{Scope: vpAll(), TaskID: "m1", MaxDuration: 330 * time.Second, Clock: clock}, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := len(sc.refs[sc.snaps[0]])
	// Stopped after 6 chunks plus those in flight, inside snapshot 1.
	if r1.Snapshots != 0 || r1.NotReached != 2 || r1.Chunks < 6 || r1.Chunks > 6+2 || r1.Chunks >= first || !errors.Is(r1.Outcome(), ErrSkipped) {
		t.Fatalf("run 1: %d snapshot(s), %d not reached, %d of %d chunks, outcome %v", r1.Snapshots, r1.NotReached, r1.Chunks, first, r1.Outcome())
	}
	if st := vtState(t, s, sc.snaps[0]); st != "none" {
		t.Fatalf("interrupted snapshot recorded %s", st)
	}
	r2, err := s.Verify(ctx, VerifyRequest{Scope: vpAll(), TaskID: "m2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Outcome() != nil || r2.Snapshots != 2 || r1.Chunks+r2.Chunks != len(sc.all) {
		t.Fatalf("run 2: outcome %v, %d snapshot(s); chunks read %d+%d of %d", r2.Outcome(), r2.Snapshots, r1.Chunks, r2.Chunks, len(sc.all))
	}
}
