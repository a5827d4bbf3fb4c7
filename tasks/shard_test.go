package tasks

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/name"
)

func TestShardValidation(t *testing.T) {
	n := func(v int) *int { return &v }
	sh := func(groups ...string) *ShardOf { return &ShardOf{Job: "job1", Index: 1, Groups: groups} }
	for _, c := range []struct {
		p    Payload
		want string // "" valid, else a part of the error
	}{
		{&Verify{Store: "main", Shards: n(2)}, ""},
		{&Verify{Store: "main", Shards: n(256)}, ""},
		{&Verify{Store: "main", Shards: n(0)}, "shards 0"},
		{&Verify{Store: "main", Shards: n(257)}, "shards 257"},
		{&Verify{Store: "main", NS: "a", Shard: sh("a:vm/1", "a/b:ct/2")}, ""},
		{&Verify{Store: "main", NS: "a", Shard: sh("b:vm/1")}, `"b:vm/1": outside`},
		{&Verify{Store: "main", NS: "a", MaxDepth: n(0), Shard: sh("a/b:vm/1")}, "deeper"},
		{&Verify{Store: "main", NS: "a", Shard: sh("a:vm")}, "vm"},
		{&Verify{Store: "main", Shard: sh()}, "shard groups: 0"},
		{&Verify{Store: "main", Shard: &ShardOf{Job: "bad id", Groups: []string{":vm/1"}}}, `"bad id"`},
		{&Verify{Store: "main", Shards: n(2), Shard: sh(":vm/1")}, "cannot itself"},
		{&Verify{Store: "main", BackupType: "vm", BackupID: "1", Shard: sh(":vm/1")}, "not backup-type"},
		{&Verify{Store: "main", Shards: n(1), Sample: n(25)}, ""},
		{&Verify{Store: "main", Shards: n(2), Sample: n(25)}, "cannot be sharded"},
		{&Verify{Store: "main", Shards: n(2), MaxDuration: &MaxDuration{time.Hour}}, "cannot be sharded"},
		{&Verify{Store: "main", Shard: sh(":vm/1"), Sample: n(50)}, "cannot be sharded"},
		{&Sync{SourceStore: "src", Store: "dst", Shards: n(3)}, ""},
		{&Sync{SourceStore: "src", Store: "dst", Shards: n(3), RemoveVanished: true}, "remove-vanished"},
		{&Sync{SourceStore: "src", SourceNS: "x", Store: "dst", Shard: sh("y:vm/1")}, "outside"},
	} {
		err := c.p.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v", c.p, err)
		case c.want != "" && (err == nil || !errors.Is(err, name.ErrInvalid) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: %v, want an invalid-input error with %q", c.p, err, c.want)
		}
	}
}

func TestShardGroupRoundTrip(t *testing.T) {
	for _, s := range []string{":vm/100", "a/b:ct/x.y", "a:host/h-1"} {
		g, err := ParseShardGroup(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := ShardGroup(g); got != s {
			t.Errorf("%q → %q", s, got)
		}
	}
}
