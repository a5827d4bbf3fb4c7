package datastore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/internal/tick"
)

// ---- the GC lease ----

// gcLease is the content of .pbsq/gc-running.
type gcLease struct {
	ID        string    `json:"id"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Start     time.Time `json:"start"`
	Heartbeat time.Time `json:"heartbeat"`
}

// gcLeaseHeld is a GC lease this process holds.
type gcLeaseHeld struct {
	// confirm reads the lease and fails with ErrGCLeaseLost (cancelling
	// the GC too) unless it is still ours.
	confirm func(ctx context.Context) error
	// release stops the heartbeat and removes the lease if still ours.
	release func()
}

// acquireGCLease takes the store's GC lease or fails with an error
// wrapping lock.ErrBusy. Should another GC take the lease over, the next
// heartbeat or confirm calls cancel with ErrGCLeaseLost.
func (s *Store) acquireGCLease(ctx context.Context, cancel context.CancelCauseFunc) (*gcLeaseHeld, error) {
	var r [8]byte
	_, _ = rand.Read(r[:])
	host, _ := os.Hostname()
	now := time.Now().UTC()
	me := gcLease{ID: hex.EncodeToString(r[:]), Host: host, PID: os.Getpid(), Start: now, Heartbeat: now}
	data, err := json.Marshal(me)
	if err != nil {
		return nil, err
	}
	var holder gcLease
	acquired := false
	for range 3 {
		created, err := s.b.CreateFile(ctx, gcLeasePath, data)
		if err != nil {
			return nil, fmt.Errorf("gc lease on store %q: %w", s.name, err)
		}
		if created {
			acquired = true
			break
		}
		holder, err = s.readGCLease(ctx)
		if errors.Is(err, fs.ErrNotExist) {
			continue // released meanwhile: try again
		}
		if err != nil {
			return nil, err
		}
		if time.Since(holder.Heartbeat) < gcLeaseStale {
			break
		}
		// Stale: move it aside; of several GCs doing this only one succeeds.
		aside := gcLeasePath + ".stale-" + me.ID
		if err := s.b.Rename(ctx, gcLeasePath, aside); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, fmt.Errorf("gc lease on store %q: take over stale lease: %w", s.name, err)
		}
		s.log.Warn("took over a stale GC lease", "holder", holder.Host, "pid", holder.PID, "heartbeat", holder.Heartbeat)
		if err := s.b.Remove(ctx, aside); err != nil {
			s.log.Warn("could not remove the stale GC lease", "file", aside, "err", err)
		}
	}
	if !acquired {
		return nil, fmt.Errorf("garbage collection of store %q is already running on %s (pid %d) since %s, last heartbeat %s "+
			"(lease %s, considered stale %s after its last heartbeat): %w",
			s.name, holder.Host, holder.PID, holder.Start.Format(time.RFC3339), holder.Heartbeat.Format(time.RFC3339),
			gcLeasePath, gcLeaseStale, lock.ErrBusy)
	}

	bg := context.WithoutCancel(ctx)
	// confirm is called by the heartbeat goroutine and by GC itself.
	var mu sync.Mutex
	confirm := func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		cur, err := s.readGCLease(ctx)
		if (err == nil && cur.ID != me.ID) || errors.Is(err, fs.ErrNotExist) {
			lost := fmt.Errorf("garbage collection of store %q: %w (now held by %s pid %d)", s.name, ErrGCLeaseLost, cur.Host, cur.PID)
			cancel(lost)
			return lost
		}
		return nil
	}
	stopBeat := tick.Start(bg, gcLeaseRefresh, func() bool {
		if errors.Is(confirm(bg), ErrGCLeaseLost) {
			return false
		}
		me.Heartbeat = time.Now().UTC()
		if data, err := json.Marshal(me); err == nil {
			if err := s.b.WriteFile(bg, gcLeasePath, data); err != nil {
				s.log.Warn("gc lease heartbeat failed", "err", err)
			}
		}
		return true
	})
	release := func() {
		stopBeat()
		rctx, rcancel := context.WithTimeout(bg, time.Minute)
		defer rcancel()
		if cur, err := s.readGCLease(rctx); err == nil && cur.ID == me.ID {
			if err := s.b.Remove(rctx, gcLeasePath); err != nil {
				s.log.Warn("could not remove the GC lease; the next GC finds it stale after ten missed heartbeats", "err", err)
			}
		}
	}
	return &gcLeaseHeld{confirm: confirm, release: release}, nil
}

// readGCLease reads the lease; an unreadable one counts as last refreshed
// when the file was written.
func (s *Store) readGCLease(ctx context.Context) (gcLease, error) {
	var l gcLease
	data, err := s.b.ReadFile(ctx, gcLeasePath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return l, err
		}
		return l, fmt.Errorf("gc lease on store %q: %w", s.name, err)
	}
	if err := json.Unmarshal(data, &l); err != nil || l.Heartbeat.IsZero() {
		fi, serr := s.b.Stat(ctx, gcLeasePath)
		if serr != nil {
			return l, serr
		}
		l = gcLease{Host: "unknown", Start: fi.ModTime, Heartbeat: fi.ModTime}
	}
	return l, nil
}
