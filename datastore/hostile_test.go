package datastore

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/name"
)

// wrongSizeShared makes snapshot w's copy of the shared 1 MiB image index
// claim delta more bytes (a consistent index and manifest, just wrong).
func wrongSizeShared(t *testing.T, s *Store, dir string, sn name.Snapshot, delta int64) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(sn.File("shared.img.fidx")))
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := format.ParseFixedIndex(raw)
	if err != nil {
		t.Fatal(err)
	}
	idx.Size = uint64(int64(idx.Size) + delta)
	if err := os.WriteFile(p, idx.Marshal(), 0o644); err != nil {
		t.Fatal(err)
	}
	mp := filepath.Join(dir, filepath.FromSlash(sn.File(ManifestName)))
	raw, err = os.ReadFile(mp)
	if err != nil {
		t.Fatal(err)
	}
	m, err := format.ParseManifest(raw)
	if err != nil {
		t.Fatal(err)
	}
	for i := range m.Files {
		if m.Files[i].Filename == "shared.img.fidx" {
			m.Files[i].Size = idx.Size
		}
	}
	if raw, err = m.Marshal(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mp, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyWrongSizeCondemnsIndex: an index listing a good shared chunk
// with another length fails its snapshot, naming the index as wrong; the
// chunk is not renamed .bad and the other snapshots sharing it pass —
// whether the wrong index is checked first (claiming less: the chunk is
// decoded again to tell) or after a right one (claiming more).
func TestVerifyWrongSizeCondemnsIndex(t *testing.T) {
	for _, c := range []struct {
		name  string
		wrong int
		delta int64
	}{{"first, claims less", 0, -10}, {"later, claims more", 1, +10}} {
		t.Run(c.name, func(t *testing.T) {
			s, dir, res, _ := vtSetup(t, 3)
			var snaps []name.Snapshot
			for _, r := range res {
				snaps = append(snaps, r.SnapshotName())
			}
			d := vtDigests(t, s, snaps[0], "shared.img.fidx")[0]
			wrongSizeShared(t, s, dir, snaps[c.wrong], c.delta)
			r, err := s.Verify(context.Background(), VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}, TaskID: "t1"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := vtFailed(r); len(got) != 1 || got[0] != snaps[c.wrong].String() {
				t.Fatalf("failed %v, want only %s (%+v)", got, snaps[c.wrong], r.Failed)
			}
			if why := strings.Join(r.Failed[0].Reasons, "; "); !strings.Contains(why, "the index is wrong") || !strings.Contains(why, d.String()) {
				t.Errorf("reason %q does not blame the index", why)
			}
			if len(r.RenamedBad) != 0 || r.ChunksCorrupt != 0 {
				t.Errorf("good chunk condemned: renamed %v, %d corrupt", r.RenamedBad, r.ChunksCorrupt)
			}
			if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(ChunkPath(d)))); err != nil {
				t.Errorf("shared chunk gone: %v", err)
			}
			for i, sn := range snaps {
				if want := map[bool]string{true: "failed", false: "ok"}[i == c.wrong]; vtState(t, s, sn) != want {
					t.Errorf("%s: state %s, want %s", sn, vtState(t, s, sn), want)
				}
			}
		})
	}
}

// TestSyncWrongSizeCondemnsIndex: sync likewise fails only the snapshot
// whose index lists the shared chunk with a wrong length; the chunk is
// copied for the others.
func TestSyncWrongSizeCondemnsIndex(t *testing.T) {
	src, dir, res, _ := vtSetup(t, 3)
	snaps := []name.Snapshot{res[0].SnapshotName(), res[1].SnapshotName(), res[2].SnapshotName()}
	d := vtDigests(t, src, snaps[0], "shared.img.fidx")[0]
	wrongSizeShared(t, src, dir, snaps[0], -10) // checked first
	ddir := t.TempDir()
	dst := TestStore(t, TestName("dst"), TestAt(ddir))
	r, err := Sync(context.Background(), src, dst, SyncRequest{MaxDepth: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Failed) != 1 || r.Failed[0].Snapshot != snaps[0].String() || !strings.Contains(strings.Join(r.Failed[0].Reasons, ";"), "the index is wrong") {
		t.Fatalf("failed %+v, want only %s blaming its index", r.Failed, snaps[0])
	}
	if r.Snapshots != 2 {
		t.Errorf("%d snapshots synced, want 2", r.Snapshots)
	}
	if _, err := os.Stat(filepath.Join(ddir, filepath.FromSlash(ChunkPath(d)))); err != nil {
		t.Errorf("shared chunk not copied: %v", err)
	}
}

// TestGCSkipsNonCanonicalS3Key: an index object at a key no path names
// (.cnt/ns//x/…) is reported and skipped; GC still sweeps. On gofakes3,
// which keeps keys verbatim as S3 does: versitygw's posix backend folds
// "//" and "..", so it cannot hold such a key.
func TestGCSkipsNonCanonicalS3Key(t *testing.T) {
	srv := s3test.StartFake(t)
	prefix := srv.UniquePrefix("noncanon")
	b := srv.New(t, prefix)
	s := TestStore(t, TestName("noncanon"), TestOn("gofakes3", b))
	ctx := context.Background()
	orphan := TestChunk(t, s, []byte("an orphan chunk nobody references"))
	for _, k := range []string{".cnt/ns//x/vm/1/2024-03-01T10:00:00Z/a.fidx", ".cnt/ns/../y/vm/1/2024-03-01T10:00:00Z/b.didx"} {
		_, err := srv.Client().PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String(srv.Bucket()), Key: aws.String(prefix + "/" + k), Body: strings.NewReader("junk")})
		if err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.GC(ctx, GCRequest{Now: gtLater}, nil)
	if err != nil {
		t.Fatalf("GC failed on a non-canonical key: %v", err)
	}
	if w := strings.Join(res.Warnings, "\n"); !strings.Contains(w, `"ns//x/vm/1/2024-03-01T10:00:00Z/a.fidx"`) || !strings.Contains(w, "non-canonical") {
		t.Errorf("warnings do not report the key:\n%s", w)
	}
	if _, err := b.Stat(ctx, ChunkPath(orphan)); err == nil {
		t.Error("the orphan chunk was not swept")
	}
}
