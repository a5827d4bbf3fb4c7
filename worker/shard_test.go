package worker

import (
	"slices"
	"testing"

	"github.com/pbsq/pbsq/datastore"
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
