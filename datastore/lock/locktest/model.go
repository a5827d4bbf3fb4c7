package locktest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/lock"
)

// universe is what the randomized tests lock: a namespace tree of depth up
// to 4 and a few groups and snapshots (modes are drawn separately).
var universe = func() []lock.Request {
	var u []lock.Request
	for _, n := range []string{"a", "a/b", "a/b/c", "a/b/c/d", "a/x", "a/x/y", "b", "b/c"} {
		u = append(u, nsReq(n, S))
	}
	for _, g := range [][2]string{{"", "host/h1"}, {"a", "vm/100"}, {"a/b", "vm/100"}, {"a/b", "ct/200"}} {
		u = append(u, lock.GroupRequest(store, grp(g[0], g[1])))
	}
	return append(u,
		lock.SnapshotRequest(store, snap("a/b", "vm/100", t1), S),
		lock.SnapshotRequest(store, snap("a/b", "vm/100", t2), S),
		lock.SnapshotRequest(store, snap("a", "vm/100", t1), S),
	)
}()

// draw picks a random lock and mode; it returns the universe index too.
func draw(r *rand.Rand) (int, lock.Request) {
	i := r.IntN(len(universe))
	return i, withMode(universe[i], lock.Mode(1+r.IntN(2)))
}

func withMode(req lock.Request, m lock.Mode) lock.Request {
	if req.Kind != lock.Group {
		req.Mode = m
	}
	return req
}

// model is the reference: how many shared and exclusive holders each lock
// (by ID) has, counting every lock of each granted chain.
type model struct{ held map[string][2]int }

func (m *model) conflicts(req lock.Request) []string {
	var out []string
	for _, u := range req.Chain() {
		c := m.held[u.ID()]
		if c[1] > 0 || (u.Mode == X && c[0] > 0) {
			out = append(out, fmt.Sprintf("%s (%d shared, %d exclusive)", u.ID(), c[0], c[1]))
		}
	}
	return out
}

func (m *model) add(req lock.Request, d int) {
	for _, u := range req.Chain() {
		c := m.held[u.ID()]
		if u.Mode == X {
			c[1] += d
		} else {
			c[0] += d
		}
		m.held[u.ID()] = c
	}
}

// testModel drives random acquire/release sequences from several goroutines
// and checks every answer against the model. Each backend call and model
// update happen together under one mutex, so the model is exact: a grant
// the model calls conflicting fails, and so does a refusal of a free lock.
func testModel(t *testing.T, open func(*testing.T) lock.Backend) {
	bs := []lock.Backend{open(t), open(t)}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	var (
		mu       sync.Mutex
		m        = model{held: make(map[string][2]int)}
		failures atomic.Int64
		grants   atomic.Int64
		busy     atomic.Int64
		wg       sync.WaitGroup
	)
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 5 {
			t.Errorf(format, args...)
		}
	}
	const workers, steps = 4, 150
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(seed), uint64(w)))
			b := bs[w%len(bs)]
			type held struct {
				req   lock.Request
				lease lock.Lease
			}
			var mine []held
			drop := func(i int) {
				h := mine[i]
				mine = slices.Delete(mine, i, i+1)
				mu.Lock()
				err := h.lease.Release()
				m.add(h.req, -1)
				mu.Unlock()
				if err != nil {
					fail("release %s: %v", h.req, err)
				}
			}
			for step := 0; step < steps && failures.Load() == 0; step++ {
				if len(mine) > 0 && (len(mine) >= 4 || r.IntN(10) < 4) {
					drop(r.IntN(len(mine)))
					continue
				}
				_, req := draw(r)
				mu.Lock()
				want := m.conflicts(req)
				l, err := b.TryLock(context.Background(), req, holder())
				switch {
				case err == nil && len(want) > 0:
					fail("worker %d step %d: %s granted, but the model has %v", w, step, req, want)
					_ = l.Release()
				case err == nil:
					m.add(req, 1)
					mine = append(mine, held{req, l})
					grants.Add(1)
				case !errors.Is(err, lock.ErrBusy):
					fail("worker %d step %d: %s: %v", w, step, req, err)
				case len(want) == 0:
					fail("worker %d step %d: %s refused (%v), but the model says it is free", w, step, req, err)
				default:
					busy.Add(1)
				}
				mu.Unlock()
			}
			for len(mine) > 0 {
				drop(len(mine) - 1)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d grants, %d refusals", grants.Load(), busy.Load())
	if grants.Load() == 0 || busy.Load() == 0 {
		t.Errorf("no contention exercised: %d grants, %d refusals", grants.Load(), busy.Load())
	}
	assertNoHolders(t, bs[0])
}

// interval is a held lock: start after TryLock returned, end before
// Release was called, so that two conflicting grants must not overlap.
type interval struct {
	req        lock.Request
	start, end time.Time
	who        string
}

// checkIntervals fails t for every two overlapping intervals that hold a
// common lock (chains expanded) in conflicting modes.
func checkIntervals(t *testing.T, ivs []interval) {
	t.Helper()
	type use struct {
		mode lock.Mode
		iv   *interval
	}
	per := make(map[string][]use)
	for i := range ivs {
		for _, u := range ivs[i].req.Chain() {
			per[u.ID()] = append(per[u.ID()], use{u.Mode, &ivs[i]})
		}
	}
	bad := 0
	for id, us := range per {
		slices.SortFunc(us, func(a, b use) int { return a.iv.start.Compare(b.iv.start) })
		for i, a := range us {
			for _, b := range us[i+1:] {
				if !b.iv.start.Before(a.iv.end) {
					break // sorted by start: no later one overlaps a either
				}
				if a.mode == X || b.mode == X {
					if bad++; bad <= 5 {
						t.Errorf("conflicting holders of %s overlap:\n  %s %s by %s from %s to %s\n  %s %s by %s from %s to %s",
							id, a.mode, a.iv.req, a.iv.who, a.iv.start.Format(time.StampMicro), a.iv.end.Format(time.StampMicro),
							b.mode, b.iv.req, b.iv.who, b.iv.start.Format(time.StampMicro), b.iv.end.Format(time.StampMicro))
					}
				}
			}
		}
	}
	if bad > 5 {
		t.Errorf("... %d overlaps in all", bad)
	}
}

// worker locks random things until deadline, holding each for up to
// maxHold, and returns the intervals held and the number of refusals.
func worker(b lock.Backend, r *rand.Rand, who string, deadline time.Time, maxHold time.Duration) ([]interval, int, error) {
	var ivs []interval
	busy := 0
	for time.Now().Before(deadline) {
		_, req := draw(r)
		l, err := b.TryLock(context.Background(), req, holder())
		if err != nil {
			if !errors.Is(err, lock.ErrBusy) {
				return ivs, busy, fmt.Errorf("%s: %w", req, err)
			}
			busy++
			continue
		}
		iv := interval{req: req, start: time.Now(), who: who}
		time.Sleep(time.Duration(r.Int64N(int64(maxHold))))
		iv.end = time.Now()
		if err := l.Release(); err != nil {
			return ivs, busy, fmt.Errorf("release %s: %w", req, err)
		}
		ivs = append(ivs, iv)
	}
	return ivs, busy, nil
}

// testConcurrent runs workers without any outside serialization on two
// backend instances and checks the held intervals afterwards.
func testConcurrent(t *testing.T, open func(*testing.T) lock.Backend) {
	bs := []lock.Backend{open(t), open(t)}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	const workers = 6
	deadline := time.Now().Add(800 * time.Millisecond)
	var (
		mu   sync.Mutex
		all  []interval
		busy int
		wg   sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(seed), uint64(w)))
			ivs, n, err := worker(bs[w%2], r, fmt.Sprintf("goroutine %d", w), deadline, 3*time.Millisecond)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			all, busy = append(all, ivs...), busy+n
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("%d grants, %d refusals", len(all), busy)
	if len(all) < workers || busy == 0 {
		t.Errorf("no contention exercised: %d grants, %d refusals", len(all), busy)
	}
	checkIntervals(t, all)
	assertNoHolders(t, bs[0])
}
