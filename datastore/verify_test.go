package datastore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// vtSetup writes n snapshots, each with its own data plus one shared file,
// to a store with flock locks (opts may name their dir).
func vtSetup(t *testing.T, n int, opts ...TestStoreOption) (*Store, string, []*BackupResult, string) {
	env := NewTestEnv(t, append([]TestStoreOption{TestFlock(-1)}, opts...)...)
	s, dir := env.Store, env.Dir
	shared := TestFile(t, "shared.img", 1<<20, 0)
	var res []*BackupResult
	for i := 0; i < n; i++ {
		own := TestFile(t, "own.tar", 300<<10, 0)
		res = append(res, TestBackup(t, s, "a", "vm/100", time.Unix(int64(1700000000+i*3600), 0), own, shared))
	}
	return s, dir, res, shared
}

// vtDigests returns the chunk digests of one index file of a snapshot
// (verify and sync tests).
func vtDigests(t testing.TB, s *Store, snap name.Snapshot, file string) []Digest {
	idx, err := s.ReadIndex(context.Background(), snap, file)
	if err != nil {
		t.Fatal(err)
	}
	var out []Digest
	for i := 0; i < idx.ChunkCount(); i++ {
		out = append(out, Digest(idx.ChunkDigest(i)))
	}
	return out
}

func vtFailed(r *VerifyResult) []string {
	var out []string
	for _, f := range r.Failed {
		out = append(out, f.Snapshot)
	}
	sort.Strings(out)
	return out
}

func vtState(t *testing.T, s *Store, snap name.Snapshot) string {
	m, err := s.ReadManifest(context.Background(), snap)
	if err != nil {
		return "unreadable"
	}
	if vs := m.VerifyState(); vs != nil {
		if !strings.HasPrefix(vs.UPID, "UPID:") {
			t.Errorf("upid %q is not a PBS UPID", vs.UPID)
		}
		return vs.State
	}
	return "none"
}

func TestVerifyCorruptions(t *testing.T) {
	ctx := context.Background()
	type damage func(t *testing.T, s *Store, dir string, snaps []name.Snapshot)
	chunkFile := func(dir string, d Digest) string { return filepath.Join(dir, filepath.FromSlash(ChunkPath(d))) }
	cases := []struct {
		name     string
		damage   damage
		failed   []int // indexes of snapshots that must fail
		renamed  bool
		manifest bool // manifest stays readable
	}{
		{"flipped bit", func(t *testing.T, s *Store, dir string, snaps []name.Snapshot) {
			d := vtDigests(t, s, snaps[1], "own.tar.didx")[0]
			p := chunkFile(dir, d)
			data, _ := os.ReadFile(p)
			data[len(data)-1] ^= 0x10
			_ = os.WriteFile(p, data, 0o644)
		}, []int{1}, true, true},
		{"missing chunk", func(t *testing.T, s *Store, dir string, snaps []name.Snapshot) {
			d := vtDigests(t, s, snaps[0], "own.tar.didx")[0]
			_ = os.Remove(chunkFile(dir, d))
		}, []int{0}, false, true},
		{"truncated index", func(t *testing.T, s *Store, dir string, snaps []name.Snapshot) {
			p := filepath.Join(dir, filepath.FromSlash(snaps[2].File("own.tar.didx")))
			data, _ := os.ReadFile(p)
			_ = os.WriteFile(p, data[:len(data)-7], 0o644)
		}, []int{2}, false, true},
		{"wrong index checksum", func(t *testing.T, s *Store, dir string, snaps []name.Snapshot) {
			// A consistent index whose checksum differs from the manifest's.
			p := filepath.Join(dir, filepath.FromSlash(snaps[0].File("own.tar.didx")))
			data, _ := os.ReadFile(p)
			idx, err := format.ParseDynamicIndex(data)
			if err != nil {
				t.Fatal(err)
			}
			idx.Entries = idx.Entries[:len(idx.Entries)-1]
			_ = os.WriteFile(p, idx.Marshal(), 0o644)
		}, []int{0}, false, true},
		{"unreadable manifest", func(t *testing.T, s *Store, dir string, snaps []name.Snapshot) {
			p := filepath.Join(dir, filepath.FromSlash(snaps[1].File(ManifestName)))
			_ = os.WriteFile(p, []byte("garbage that is no blob"), 0o644)
		}, []int{1}, false, false},
		{"corrupt shared chunk", func(t *testing.T, s *Store, dir string, snaps []name.Snapshot) {
			d := vtDigests(t, s, snaps[0], "shared.img.fidx")[0]
			p := chunkFile(dir, d)
			data, _ := os.ReadFile(p)
			data[20] ^= 0xff
			_ = os.WriteFile(p, data, 0o644)
		}, []int{0, 1, 2}, true, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, dir, res, _ := vtSetup(t, 3)
			var snaps []name.Snapshot
			for _, r := range res {
				snaps = append(snaps, r.SnapshotName())
			}
			c.damage(t, s, dir, snaps)
			r, err := s.Verify(ctx, VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}, IgnoreVerified: true, TaskID: "t1"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, i := range c.failed {
				want = append(want, snaps[i].String())
			}
			sort.Strings(want)
			if got := vtFailed(r); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("failed = %v, want %v (%+v)", got, want, r.Failed)
			}
			if !errors.Is(r.Outcome(), ErrFailed) {
				t.Fatalf("outcome %v", r.Outcome())
			}
			for i, sn := range snaps {
				failed := false
				for _, f := range c.failed {
					failed = failed || f == i
				}
				st := vtState(t, s, sn)
				switch {
				case failed && !c.manifest:
					if st != "unreadable" {
						t.Errorf("%s: state %s", sn, st)
					}
				case failed && st != "failed", !failed && st != "ok":
					t.Errorf("%s: verify state %s (failed=%v)", sn, st, failed)
				}
			}
			if c.renamed {
				if len(r.RenamedBad) != 1 || !strings.HasSuffix(r.RenamedBad[0], ".0.bad") {
					t.Fatalf("renamed %v", r.RenamedBad)
				}
				if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(r.RenamedBad[0]))); err != nil {
					t.Fatal(err)
				}
			} else if len(r.RenamedBad) != 0 {
				t.Fatalf("renamed %v", r.RenamedBad)
			}
		})
	}
}

func TestVerifyOnceAndFilters(t *testing.T) {
	ctx := context.Background()
	s, _, res, _ := vtSetup(t, 3)
	r, err := s.Verify(ctx, VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}, IgnoreVerified: true}, nil)
	if err != nil || r.Outcome() != nil || r.OK != 3 {
		t.Fatalf("first verify: %+v %v", r, err)
	}
	// The shared file's chunk is checked once for three snapshots.
	uniq := map[Digest]bool{}
	for _, x := range res {
		for _, f := range []string{"own.tar.didx", "shared.img.fidx"} {
			for _, d := range vtDigests(t, s, x.SnapshotName(), f) {
				uniq[d] = true
			}
		}
	}
	if r.Chunks != len(uniq) {
		t.Fatalf("checked %d chunks, %d unique", r.Chunks, len(uniq))
	}
	// ignore-verified skips them now; outdated-after 0 re-verifies all.
	r, _ = s.Verify(ctx, VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}, IgnoreVerified: true}, nil)
	if r.AlreadyVerified != 3 || r.Snapshots != 0 {
		t.Fatalf("ignore-verified: %+v", r)
	}
	zero := 0
	r, _ = s.Verify(ctx, VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}, IgnoreVerified: true, OutdatedAfter: &zero}, nil)
	if r.Snapshots != 3 {
		t.Fatalf("outdated-after 0: %+v", r)
	}
	days := 30
	r, _ = s.Verify(ctx, VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}, IgnoreVerified: true, OutdatedAfter: &days}, nil)
	if r.Snapshots != 0 {
		t.Fatalf("outdated-after 30: %+v", r)
	}
	// Scope: one snapshot.
	sn := res[1].SnapshotName()
	r, _ = s.Verify(ctx, VerifyRequest{Scope: Scope{NS: sn.NS, Group: &sn.Group, Snapshot: &sn}}, nil)
	if r.Snapshots != 1 {
		t.Fatalf("one snapshot: %+v", r)
	}
}

func TestVerifyUnfinishedAndBusy(t *testing.T) {
	ctx := context.Background()
	lockDir := t.TempDir()
	s, dir, res, _ := vtSetup(t, 2, TestFlockAt(lockDir, -1))
	// An unfinished snapshot: a directory without manifest.
	g := res[0].SnapshotName().Group
	unfinished := name.NewSnapshot(g, time.Unix(1800000000, 0))
	if err := os.MkdirAll(filepath.Join(dir, filepath.FromSlash(unfinished.Path())), 0o755); err != nil {
		t.Fatal(err)
	}
	// Another holder keeps the first snapshot exclusively locked.
	other := TestFlockLocker(t, lockDir, -1)
	gd, err := other.Snapshot(ctx, s.Name(), res[0].SnapshotName(), lock.Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	defer gd.Release()
	r, err := s.Verify(ctx, VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Unfinished) != 1 || len(r.Skipped) != 1 || r.OK != 1 || len(r.Failed) != 0 {
		t.Fatalf("result %+v", r)
	}
	if !errors.Is(r.Outcome(), ErrSkipped) {
		t.Fatalf("outcome %v", r.Outcome())
	}
}

// TestVerifyIndependentStore corrupts chunks of a store written by the
// Python program and checks exactly the referencing snapshots fail.
func TestVerifyIndependentStore(t *testing.T) {
	dir := t.TempDir()
	pbsfmt(t, "write", dir)
	s := TestStore(t, TestName("indep"), TestAt(dir))
	ctx := context.Background()
	// Corrupt the first chunk of ct/200's disk image in the root namespace.
	g, _ := name.NewGroup(name.Root, "ct", "200")
	snaps, _ := s.ListSnapshots(ctx, g)
	d := vtDigests(t, s, snaps[0].Snapshot, "drive-scsi0.img.fidx")[0]
	pbsfmt(t, "corrupt", dir, d.String())
	r, err := s.Verify(ctx, VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}, TaskID: "x"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Every snapshot whose index references d must fail, all others pass.
	var want []string
	finished := 0
	for _, sn := range allSnapshots(t, s) {
		if !sn.Finished {
			continue
		}
		finished++
		refs := false
		for _, f := range []string{"drive-scsi0.img.fidx", "root.pxar.didx"} {
			for _, x := range vtDigests(t, s, sn.Snapshot, f) {
				refs = refs || x == d
			}
		}
		if refs {
			want = append(want, sn.Snapshot.String())
		}
	}
	sort.Strings(want)
	if got := vtFailed(r); strings.Join(got, ",") != strings.Join(want, ",") || len(want) == 0 {
		t.Fatalf("failed %v, want %v", got, want)
	}
	if r.OK != finished-len(want) {
		t.Fatalf("ok %d of %d", r.OK, finished)
	}
	if len(r.RenamedBad) != 1 || r.RenamedBad[0] != ChunkPath(d)+".0.bad" {
		t.Fatalf("renamed %v", r.RenamedBad)
	}
}
