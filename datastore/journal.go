package datastore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
)

// The move journal closes a race between a move and garbage collection:
// GC's mark phase walks the tree, so an index moved from a directory GC has
// not reached yet into one it has already passed would be missed, and its
// chunks swept. A move therefore records the index files it is about to
// move before it moves them; GC drains the journal at the end of marking
// and marks those indexes at their source or, if gone, at their target.
//
// Entries are removed only by GC, and only when their move was done before
// that GC's mark phase began (then the walk surely saw the indexes in their
// final place). A move that crashed leaves its entry open; an open entry is
// dropped once it is older than journalStale, since a rerun of the move
// writes a fresh one.
const (
	journalDir   = ".pbsq/move-journal"
	journalStale = 7 * 24 * time.Hour
)

// JournalEntry is one move's record.
type JournalEntry struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	// Done is set when the move finished (zero while it runs).
	Done time.Time `json:"done,omitzero"`
	// Moves lists index files as source → target paths.
	Moves []JournalMove `json:"moves"`
}

// JournalMove is one index file's move.
type JournalMove struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// journalOpen writes an entry for moves that are about to happen.
func (s *Store) journalOpen(ctx context.Context, moves []JournalMove) (*JournalEntry, error) {
	var r [8]byte
	_, _ = rand.Read(r[:])
	e := &JournalEntry{ID: time.Now().UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(r[:]), Created: time.Now().UTC(), Moves: moves}
	if err := s.journalWrite(ctx, e); err != nil {
		return nil, err
	}
	// PBS's GC learns of the move only from its own journal.
	if err := s.pbsJournalAppend(ctx, moves); err != nil {
		return nil, err
	}
	return e, nil
}

// journalClose marks an entry done; GC removes it later.
func (s *Store) journalClose(ctx context.Context, e *JournalEntry) error {
	e.Done = time.Now().UTC()
	return s.journalWrite(ctx, e)
}

func (s *Store) journalWrite(ctx context.Context, e *JournalEntry) error {
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := s.b.WriteFile(ctx, backend.Join(journalDir, e.ID+".json"), data); err != nil {
		return fmt.Errorf("move journal: %w", err)
	}
	return nil
}

// journalEntries reads every entry (unreadable ones are reported and kept).
func (s *Store) journalEntries(ctx context.Context) ([]*JournalEntry, error) {
	ents, err := s.b.List(ctx, journalDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("move journal: %w", err)
	}
	var out []*JournalEntry
	for _, fi := range ents {
		if fi.Dir || !strings.HasSuffix(fi.Name, ".json") {
			continue
		}
		data, err := s.b.ReadFile(ctx, backend.Join(journalDir, fi.Name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("move journal: %w", err)
		}
		var e JournalEntry
		if err := json.Unmarshal(data, &e); err != nil || e.ID+".json" != fi.Name {
			s.log.Warn("ignoring unreadable move journal entry", "file", fi.Name, "err", err)
			continue
		}
		out = append(out, &e)
	}
	return out, nil
}

// DrainJournal is called by GC at the end of marking: fn gets every
// journalled index path that exists (visitJournal). Entries done before
// markStart are then removed.
func (s *Store) DrainJournal(ctx context.Context, markStart time.Time, fn func(indexPath string) error) error {
	entries, err := s.visitJournal(ctx, fn)
	if err != nil {
		return err
	}
	for _, e := range entries {
		done := !e.Done.IsZero() && e.Done.Before(markStart)
		stale := e.Done.IsZero() && time.Since(e.Created) > journalStale
		if done || stale {
			if err := s.b.Remove(ctx, backend.Join(journalDir, e.ID+".json")); err != nil {
				return fmt.Errorf("move journal: %w", err)
			}
		}
	}
	return nil
}

// visitJournal gives fn every journalled index path that exists (source
// first, then target, so a file moving meanwhile is seen at least once) and
// returns the entries it read.
func (s *Store) visitJournal(ctx context.Context, fn func(indexPath string) error) ([]*JournalEntry, error) {
	entries, err := s.journalEntries(ctx)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		for _, m := range e.Moves {
			found := false
			for _, p := range []string{m.From, m.To} {
				err := fn(p)
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				if err != nil {
					return nil, err
				}
				found = true
				break
			}
			if !found {
				s.log.Debug("journalled index gone (removed since)", "from", m.From, "to", m.To)
			}
		}
	}
	return entries, nil
}
