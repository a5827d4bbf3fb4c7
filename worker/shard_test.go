package worker

import (
	"context"
	"slices"
	"testing"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/lock/redistest"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/tasks"
)

// TestSplitShards: largest first onto the lightest shard; never more
// shards than groups, none empty, every group once.
func TestSplitShards(t *testing.T) {
	g := func(id string, size int64) datastore.GroupSize {
		gr, _ := name.NewGroup(name.Root, "vm", id)
		return datastore.GroupSize{Group: gr, Size: size}
	}
	sizes := []datastore.GroupSize{g("1", 10), g("2", 70), g("3", 30), g("4", 30), g("5", 20), g("6", 40)}
	plan := splitShards(sizes, 2)
	if len(plan) != 2 {
		t.Fatalf("plan %v", plan)
	}
	load := map[string]int64{}
	for _, s := range sizes {
		load[tasks.ShardGroup(s.Group)] = s.Size
	}
	var all []string
	var loads []int64
	for _, gs := range plan {
		var l int64
		for _, s := range gs {
			l += load[s]
		}
		loads = append(loads, l)
		all = append(all, gs...)
	}
	slices.Sort(all)
	if len(slices.Compact(all)) != 6 {
		t.Errorf("groups not dealt once each: %v", plan)
	}
	if loads[0] != 100 || loads[1] != 100 {
		t.Errorf("loads %v, want 100 and 100: %v", loads, plan)
	}
	if p := splitShards(sizes[:2], 8); len(p) != 2 {
		t.Errorf("8 shards of 2 groups: %v", p)
	}
	if p := splitShards(nil, 4); len(p) != 0 {
		t.Errorf("no groups: %v", p)
	}
}

func TestVerdictRoundTrip(t *testing.T) {
	for _, v := range []datastore.SharedVerdict{
		{Code: 1, Size: 4 << 20, At: 1700000000123},
		{Code: 2, Reason: "crc mismatch"},
		{Code: 4, Size: 1},
	} {
		got, err := decodeVerdict(encodeVerdict(v))
		if err != nil || got != v {
			t.Errorf("%+v → %+v, %v", v, got, err)
		}
	}
	if encodeVerdict(datastore.SharedVerdict{}) != "" {
		t.Error("a handed-back claim is not empty")
	}
}

// FuzzDecodeVerdict: a ledger entry from Redis never panics the decoder,
// and what decodes re-encodes to the same bytes.
func FuzzDecodeVerdict(f *testing.F) {
	f.Add(encodeVerdict(datastore.SharedVerdict{Code: 2, Size: 9, At: 3, Reason: "bad"}))
	f.Add("v")
	f.Add("cjob-s1")
	f.Fuzz(func(t *testing.T, s string) {
		v, err := decodeVerdict(s)
		if err != nil || v.Code == 0 {
			return
		}
		if enc := encodeVerdict(v); enc != s {
			t.Fatalf("%q → %+v → %q", s, v, enc)
		}
	})
}

// TestLedger: claims, verdicts, a dead shard's claims taken over, its own
// re-run taking them back, and the cap beyond which shards work alone.
func TestLedger(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client()
	ctx := context.Background()
	a := &ledger{rdb: rdb, job: "j1", owner: "j1-s0", cap: 3}
	b := &ledger{rdb: rdb, job: "j1", owner: "j1-s1", cap: 3}
	d := func(i byte) datastore.Digest { return datastore.Digest{i} }
	stopA := heartbeat(ctx, rdb, "j1", "j1-s0")
	got, err := a.Claim(ctx, []datastore.Digest{d(1), d(2)})
	if err != nil || !got[0].Mine || !got[1].Mine {
		t.Fatalf("first claim: %+v %v", got, err)
	}
	if got, _ := b.Claim(ctx, []datastore.Digest{d(1), d(3)}); got[0].Mine || got[0].Done || !got[1].Mine {
		t.Fatalf("claim of a live shard's chunk: %+v", got)
	}
	if err := a.Publish(ctx, []datastore.SharedVerdict{{Digest: d(1), Code: 2, Reason: "corrupt"}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.Claim(ctx, []datastore.Digest{d(1)}); !got[0].Done || got[0].Verdict.Code != 2 || got[0].Verdict.Reason != "corrupt" {
		t.Fatalf("verdict: %+v", got)
	}
	// The cap (3 entries) is reached: a new chunk is the caller's alone,
	// and its verdict is not recorded.
	if got, _ := b.Claim(ctx, []datastore.Digest{d(4)}); !got[0].Mine {
		t.Fatalf("beyond the cap: %+v", got)
	}
	_ = b.Publish(ctx, []datastore.SharedVerdict{{Digest: d(4), Code: 1}})
	if n := rdb.HLen(ctx, ledgerKey("j1")).Val(); n != 3 {
		t.Errorf("ledger holds %d entries, cap 3", n)
	}
	// Shard 0 dies: once its heartbeat is gone its claim is anybody's,
	// and its own re-run would take it back at once.
	stopA()
	if got, _ := a.Claim(ctx, []datastore.Digest{d(2)}); !got[0].Mine {
		t.Fatalf("own re-run: %+v", got)
	}
	if got, _ := b.Claim(ctx, []datastore.Digest{d(2)}); !got[0].Mine {
		t.Fatalf("dead shard's claim: %+v", got)
	}
	if r := rdb.HGet(ctx, jobKey("j1"), "reads").Val(); r != "2" {
		t.Errorf("reads %q, want 2 (the corrupt verdict and the one beyond the cap)", r)
	}
	if ttl := rdb.PTTL(ctx, ledgerKey("j1")).Val(); ttl <= 0 || ttl > ledgerTTL {
		t.Errorf("ledger TTL %s", ttl)
	}
}
