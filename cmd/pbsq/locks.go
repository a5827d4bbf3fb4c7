package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/flock"
	"github.com/pbsq/pbsq/datastore/lock/redislock"
)

// redisOptions builds go-redis options from the config (single server or
// Sentinel failover; password from PBSQ_REDIS_PASSWORD; optional TLS).
func (a *app) redisOptions() *redis.UniversalOptions {
	r := a.cfg.Redis
	o := &redis.UniversalOptions{
		Addrs:    []string{r.Addr},
		DB:       r.DB,
		Username: r.Username,
		Password: r.Password,
	}
	if r.Sentinel != nil {
		o.Addrs = r.Sentinel.Addrs
		o.MasterName = r.Sentinel.Master
	}
	if r.TLS {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return o
}

// lockBackend opens the configured lock backend.
func (a *app) lockBackend(ctx context.Context) (lock.Backend, error) {
	switch a.cfg.Locks.Backend {
	case "redis":
		if !a.cfg.Redis.Configured() {
			return nil, usagef("locks.backend redis needs redis.addr (or PBSQ_REDIS_ADDR) in %s", a.configPath)
		}
		client := redis.NewUniversalClient(a.redisOptions())
		return redislock.New(client, redislock.Options{Lease: a.cfg.Locks.Lease, Logger: a.log}), nil
	default:
		return flock.New(flock.Options{Dir: a.cfg.Locks.Dir, Logger: a.log})
	}
}

// lazyLockBackend opens the real backend at the first lock, so commands
// that fail validation or only read never create the locks dir.
type lazyLockBackend struct {
	open func() (lock.Backend, error)
	once sync.Once
	b    lock.Backend
	err  error
}

func (l *lazyLockBackend) get() (lock.Backend, error) {
	l.once.Do(func() {
		l.b, l.err = l.open()
		if l.err != nil {
			l.err = fmt.Errorf("locks: %w", l.err)
		}
	})
	return l.b, l.err
}

func (l *lazyLockBackend) TryLock(ctx context.Context, req lock.Request, h lock.Holder) (lock.Lease, error) {
	b, err := l.get()
	if err != nil {
		return nil, err
	}
	return b.TryLock(ctx, req, h)
}

func (l *lazyLockBackend) Holders(ctx context.Context) ([]lock.Held, error) {
	b, err := l.get()
	if err != nil {
		return nil, err
	}
	return b.Holders(ctx)
}

func (l *lazyLockBackend) Close() error {
	if l.b != nil {
		return l.b.Close()
	}
	return nil
}

// locker returns a Locker with the configured (or given) retry window.
func (a *app) locker(ctx context.Context, wait *time.Duration) (*lock.Locker, error) {
	if a.cfg.Locks.Backend == "redis" && !a.cfg.Redis.Configured() {
		return nil, usagef("locks.backend redis needs redis.addr (or PBSQ_REDIS_ADDR) in %s", a.configPath)
	}
	b := &lazyLockBackend{open: func() (lock.Backend, error) { return a.lockBackend(ctx) }}
	w := a.cfg.Locks.Wait
	if wait != nil {
		w = *wait
	}
	l := lock.New(b, lock.Options{Logger: a.log})
	return l.WithWait(w), nil
}
