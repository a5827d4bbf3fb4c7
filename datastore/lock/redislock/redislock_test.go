package redislock_test

import (
	"testing"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/locktest"
	"github.com/pbsq/pbsq/datastore/lock/redislock"
	"github.com/pbsq/pbsq/datastore/lock/redistest"
	"github.com/redis/go-redis/v9"
)

func newBackend(t *testing.T) lock.Backend {
	addr := locktest.Param(t, "addr", func() string { return redistest.Start(t).Addr() })
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return redislock.New(c, redislock.Options{})
}

func TestConformance(t *testing.T) { locktest.Run(t, newBackend) }
