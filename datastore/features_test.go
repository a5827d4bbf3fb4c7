package datastore

import (
	"context"
	"testing"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/name"
)

// ftRoundTrips is a filesystem that says its requests are round trips,
// as a network filesystem could.
type ftRoundTrips struct{ backend.Backend }

func (b ftRoundTrips) Features() backend.Features {
	f := b.Backend.Features()
	f.RoundTrips = true
	return f
}

// TestRoundTripsTuning: the operations tune themselves by what the
// backend says of its requests (Features.RoundTrips), not by its
// directory semantics: a filesystem claiming round trips gets sync's
// listing without per-snapshot files and GC's round-trip touches, and
// both still do their work right on it.
func TestRoundTripsTuning(t *testing.T) {
	ctx := context.Background()
	src := TestStore(t, TestName("src"))
	fx := stFill(t, src)
	plain := TestStore(t, TestName("dst"))
	dst, err := Open("dst", ftRoundTrips{plain.b}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if f := dst.b.Features(); !f.RoundTrips || f.ImplicitDirs {
		t.Fatalf("features %+v", f)
	}
	if _, err := Sync(ctx, src, dst, SyncRequest{MaxDepth: -1}, nil); err != nil {
		t.Fatal(err)
	}
	g := name.Group{NS: name.Root, Type: name.TypeVM, ID: "100"}
	for _, c := range []struct {
		s         *Store
		withFiles bool
	}{{src, true}, {dst, false}} {
		snaps, err := c.s.listGroupSnapshots(ctx, g)
		if err != nil || len(snaps) != 3 {
			t.Fatalf("%s: %d snapshots, %v", c.s, len(snaps), err)
		}
		if got := snaps[0].Files != nil; got != c.withFiles {
			t.Errorf("%s: listing with files %v, want %v", c.s, got, c.withFiles)
		}
	}
	stSameListing(t, src, dst)
	if _, err := dst.GC(ctx, GCRequest{}, nil); err != nil {
		t.Fatal(err)
	}
	TestVerifyAll(t, dst, fx.finished, 0)
}
