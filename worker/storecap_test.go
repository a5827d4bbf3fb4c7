package worker

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/redistest"
)

// TestStoreSlots: max-jobs 2 on a store admits two holders and refuses a
// third (lock.ErrBusy, naming the holders); a released slot is free again;
// the slot of a holder that died frees itself when its lease runs out;
// uncapped stores take no slot; a two-store task takes both or neither.
func TestStoreSlots(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	defer rdb.Close()
	old := slotLease
	slotLease = 6 * time.Second // refreshed every 2 s: late only on a machine stalled for 4
	defer func() { slotLease = old }()
	w := &Worker{rdb: rdb, caps: map[string]int{"capped": 2, "one": 1}}
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	noLoss := func(err error) { t.Errorf("slot lost: %v", err) }

	r1, err := w.takeSlots(ctx, []string{"capped"}, "t1", log, noLoss)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := w.takeSlots(ctx, []string{"capped"}, "t2", log, noLoss)
	if err != nil {
		t.Fatal(err)
	}
	// Held past the lease they were taken with: the refresh keeps them.
	taken, err := rdb.ZRangeWithScores(ctx, slotKeyPrefix+"capped", 0, -1).Result()
	if err != nil || len(taken) != 2 {
		t.Fatalf("slots %v: %v", taken, err)
	}
	deadline := time.Now().Add(30*time.Second + slotLease)
	for {
		now, err := rdb.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		if float64(now.UnixMilli()) > max(taken[0].Score, taken[1].Score) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Redis time never passed the first leases")
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = w.takeSlots(ctx, []string{"capped"}, "t3", log, noLoss)
	var busy *SlotBusyError
	if !errors.As(err, &busy) || !errors.Is(err, lock.ErrBusy) || len(busy.Holders) != 2 || busy.Store != "capped" {
		t.Fatalf("third holder: %v", err)
	}
	r1()
	r3, err := w.takeSlots(ctx, []string{"capped"}, "t3", log, noLoss)
	if err != nil {
		t.Fatalf("after a release: %v", err)
	}
	r2()
	r3()

	// Uncapped: nothing in Redis.
	r, err := w.takeSlots(ctx, []string{"free"}, "t4", log, noLoss)
	if err != nil {
		t.Fatal(err)
	}
	r()
	if n, _ := rdb.Exists(ctx, slotKeyPrefix+"free").Result(); n != 0 {
		t.Error("an uncapped store got a slot key")
	}

	// A dead holder (acquired, never refreshed) blocks until its lease ends.
	if err := slotAcquire.Run(ctx, rdb, []string{slotKeyPrefix + "one"}, slotLease.Milliseconds(), "dead|x", 1).Err(); err != nil {
		t.Fatal(err)
	}
	// Both or neither: "capped" is free, "one" is not.
	if _, err := w.takeSlots(ctx, []string{"capped", "one"}, "t5", log, noLoss); !errors.As(err, &busy) || busy.Store != "one" || busy.Holders[0] != "dead" {
		t.Fatalf("two stores, one full: %v", err)
	}
	if n, _ := rdb.ZCard(ctx, slotKeyPrefix+"capped").Result(); n != 0 {
		t.Errorf("refused two-store task left %d slot(s) on the free store", n)
	}
	deadline = time.Now().Add(30*time.Second + slotLease)
	for {
		r, err := w.takeSlots(ctx, []string{"capped", "one"}, "t5", log, noLoss)
		if err == nil {
			r()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead holder's slot never freed: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
