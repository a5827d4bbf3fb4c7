package redistest_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore/lock/redistest"
)

func TestStartRestartPersists(t *testing.T) {
	ctx := context.Background()
	s := redistest.Start(t, redistest.WithAppendOnly(true))
	c := s.Client()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()
	s.Restart()
	if s.Addr() != addr {
		t.Fatalf("address changed across restart: %s -> %s", addr, s.Addr())
	}
	got, err := c.Get(ctx, "k").Result()
	if err != nil || got != "v" {
		t.Fatalf("after restart: %q, %v; want the value kept by the append-only file", got, err)
	}
	s.Stop()
	probe := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, DialerRetries: 1})
	defer probe.Close()
	if err := probe.Ping(ctx).Err(); err == nil {
		t.Fatal("PING answered after Stop")
	}
}

func TestNoPersistenceByDefault(t *testing.T) {
	ctx := context.Background()
	s := redistest.Start(t)
	c := s.Client()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	if n, err := c.Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("key survived restart without appendonly and save: n=%d err=%v", n, err)
	}
}
