package datastore

import (
	"context"
	"errors"

	"golang.org/x/sync/errgroup"

	"github.com/pbsq/pbsq/datastore/lock"
)

// parallel runs fn(0..n-1) on up to workers goroutines and returns the
// first error, cancelling the others' context; or the cause of ctx's
// cancellation.
func parallel(ctx context.Context, workers, n int, fn func(ctx context.Context, i int) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(workers, 1))
	for i := 0; i < n && gctx.Err() == nil; i++ {
		g.Go(func() error { return fn(gctx, i) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return context.Cause(ctx)
}

// busyRetry is how every operation treats items whose lock stays busy
// (DESIGN §3.3): set them aside, finish the others, retry them once, one
// at a time in their original order, and report those still busy as
// skipped.
type busyRetry[T any] struct {
	// workers runs the first pass on that many goroutines (0 or 1: in
	// order).
	workers int
	// run does one item; an error wrapping lock.ErrBusy means busy, any
	// other error stops everything.
	run func(ctx context.Context, item T) error
	// skip reports an item still busy after its retry.
	skip func(item T, busy error)
	// Optional: aside is told of an item set aside (from the first pass's
	// goroutines), retrying of how many are retried, done of each item
	// finished (run or skipped).
	aside    func(item T, busy error)
	retrying func(n int)
	done     func(item T)
	// firstPass, if set, replaces the first pass (pass) for operations
	// that handle many items per round trip (move's waves and batches):
	// it returns the items set aside, in their order, and calls done for
	// the others itself.
	firstPass func(ctx context.Context, items []T) ([]T, error)
}

func (b busyRetry[T]) do(ctx context.Context, items []T) error {
	pass := b.pass
	if b.firstPass != nil {
		pass = b.firstPass
	}
	aside, err := pass(ctx, items)
	if err != nil {
		return err
	}
	if len(aside) > 0 && b.retrying != nil {
		b.retrying(len(aside))
	}
	for _, item := range aside {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := b.run(ctx, item)
		if errors.Is(err, lock.ErrBusy) {
			b.skip(item, err)
		} else if err != nil {
			return err
		}
		if b.done != nil {
			b.done(item)
		}
	}
	return nil
}

// pass is the usual first pass: it runs every item on b.workers
// goroutines and returns those set aside as busy, in their order.
func (b busyRetry[T]) pass(ctx context.Context, items []T) ([]T, error) {
	aside := make([]bool, len(items))
	err := parallel(ctx, b.workers, len(items), func(ctx context.Context, i int) error {
		err := b.run(ctx, items[i])
		if errors.Is(err, lock.ErrBusy) {
			aside[i] = true
			if b.aside != nil {
				b.aside(items[i], err)
			}
			return nil
		}
		if err != nil {
			return err
		}
		if b.done != nil {
			b.done(items[i])
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []T
	for i, a := range aside {
		if a {
			out = append(out, items[i])
		}
	}
	return out, nil
}
