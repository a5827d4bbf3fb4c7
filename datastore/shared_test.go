package datastore

import (
	"context"
	"sync"
	"testing"

	"github.com/pbsq/pbsq/datastore/name"
)

// memLedger is an in-process ChunkShare for fast tests (the Redis one is
// worker's ledger).
type memLedger struct {
	mu       sync.Mutex
	claims   map[Digest]string
	verdicts map[Digest]SharedVerdict
	reads    int
}

type memShare struct {
	l     *memLedger
	owner string
}

func (s memShare) Claim(_ context.Context, ds []Digest) ([]ShareClaim, error) {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	out := make([]ShareClaim, len(ds))
	for i, d := range ds {
		if v, ok := s.l.verdicts[d]; ok {
			out[i] = ShareClaim{Done: true, Verdict: v}
		} else if o, ok := s.l.claims[d]; !ok || o == s.owner {
			s.l.claims[d] = s.owner
			out[i] = ShareClaim{Mine: true}
		}
	}
	return out, nil
}

func (s memShare) Publish(_ context.Context, vs []SharedVerdict) error {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	for _, v := range vs {
		s.l.verdicts[v.Digest] = v
		s.l.reads++
	}
	return nil
}

// TestVerifyShare: two verifies sharing a ledger read each chunk once
// between them, and a corrupt verdict one of them learnt from the ledger
// fails its snapshots without it reading the chunk.
func TestVerifyShare(t *testing.T) {
	ctx := context.Background()
	s, _, res, _ := vtSetup(t, 3)
	uniq := map[Digest]bool{}
	for _, x := range res {
		for _, f := range []string{"own.tar.didx", "shared.img.fidx"} {
			for _, d := range vtDigests(t, s, x.SnapshotName(), f) {
				uniq[d] = true
			}
		}
	}
	g := res[0].SnapshotName().Group
	req := func(l *memLedger, owner string) VerifyRequest {
		return VerifyRequest{Scope: Scope{NS: g.NS, MaxDepth: -1, Groups: []name.Group{g}}, ReadOnly: true, Share: memShare{l, owner}}
	}
	l := &memLedger{claims: map[Digest]string{}, verdicts: map[Digest]SharedVerdict{}}
	var wg sync.WaitGroup
	var r [2]*VerifyResult
	for i, owner := range []string{"s0", "s1"} {
		wg.Go(func() {
			var err error
			if r[i], err = s.Verify(ctx, req(l, owner), nil); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if r[0].OK != 3 || r[1].OK != 3 || r[0].Chunks+r[1].Chunks != len(uniq) || l.reads != len(uniq) {
		t.Errorf("two shards: ok %d/%d, chunks %d+%d, published %d; want 3/3 and %d chunks once", r[0].OK, r[1].OK, r[0].Chunks, r[1].Chunks, l.reads, len(uniq))
	}

	// Another shard found the shared file's chunk corrupt.
	bad := vtDigests(t, s, res[0].SnapshotName(), "shared.img.fidx")[0]
	l = &memLedger{claims: map[Digest]string{}, verdicts: map[Digest]SharedVerdict{bad: {Digest: bad, Code: uint8(chunkCorrupt), Reason: "crc mismatch"}}}
	got, err := s.Verify(ctx, req(l, "s1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Failed) != 3 || got.Chunks != len(uniq)-1 || got.ChunksCorrupt != 0 {
		t.Errorf("with a corrupt verdict from another shard: %d failed, %d chunks read, %d corrupt found here; want 3, %d, 0: %+v",
			len(got.Failed), got.Chunks, got.ChunksCorrupt, len(uniq)-1, got.Failed)
	}
}
