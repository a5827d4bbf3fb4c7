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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/internal/tick"
)

// The active-writer registry tells garbage collection how far back it must
// keep unreferenced chunks. A writer inserts (or touches) chunks long
// before the index that references them exists; PBS therefore lowers GC's
// cutoff to the start of the oldest running writer, which it learns from a
// process lock. pbsq's writers may run in other processes or on other hosts
// (S3), so each one announces itself with a small file on the backend:
//
//	.pbsq/writers/<id>.json  {"id", "start", "heartbeat", "host", "pid"}
//
// The heartbeat is rewritten every writerHeartbeat while the writer runs,
// and the file is removed when it ends. GC ignores (and removes) entries
// whose heartbeat is older than writerStale: their writer crashed, and
// whatever it inserted is either referenced by a finished index by now or
// garbage.
const writersDir = ".pbsq/writers"

// Variables, not constants, so tests can speed the heartbeat up.
var (
	writerHeartbeat = time.Minute
	writerStale     = 10 * time.Minute
)

// writerEntry is one registered writer.
type writerEntry struct {
	ID        string    `json:"id"`
	Start     time.Time `json:"start"`
	Heartbeat time.Time `json:"heartbeat"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
}

// maxWriterEntry bounds the read of a registration (they are ~150 bytes).
const maxWriterEntry = 64 << 10

func writerPath(id string) string { return backend.Join(writersDir, id+".json") }

// registerWriter announces a running writer; call done when the writer has
// finished (written its manifest or given up). The entry's start is taken
// before it is written, so every chunk the writer inserts afterwards is
// newer than the start GC reads.
func (s *Store) registerWriter(ctx context.Context) (done func(), err error) {
	var r [8]byte
	_, _ = rand.Read(r[:])
	host, _ := os.Hostname()
	now := time.Now().UTC()
	e := writerEntry{
		ID:        now.Format("20060102T150405Z") + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(r[:]),
		Start:     now,
		Heartbeat: now,
		Host:      host,
		PID:       os.Getpid(),
	}
	if err := s.writeWriterEntry(ctx, &e); err != nil {
		return nil, fmt.Errorf("register writer on store %q: %w", s.name, err)
	}

	// The heartbeat outlives a cancelled ctx until done is called: the entry
	// must stay fresh for as long as the writer may still insert chunks.
	bg := context.WithoutCancel(ctx)
	stopBeat := tick.Start(bg, writerHeartbeat, func() bool {
		e.Heartbeat = time.Now().UTC()
		if err := s.writeWriterEntry(bg, &e); err != nil {
			s.log.Warn("writer heartbeat failed; a garbage collection may not see this writer", "writer", e.ID, "err", err)
		}
		return true
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			stopBeat()
			rctx, cancel := context.WithTimeout(bg, time.Minute)
			defer cancel()
			if err := s.b.Remove(rctx, writerPath(e.ID)); err != nil {
				s.log.Warn("could not remove writer registration; GC ignores it once stale", "writer", e.ID, "err", err)
			}
		})
	}, nil
}

func (s *Store) writeWriterEntry(ctx context.Context, e *writerEntry) error {
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return s.b.WriteFile(ctx, writerPath(e.ID), data)
}

// activeWriters returns the live writer entries and the names of stale
// ones. Liveness is judged by the wall clock (not GCRequest.Now), since the
// heartbeats are written with it.
func (s *Store) activeWriters(ctx context.Context) (live []writerEntry, stale []string, err error) {
	ents, err := s.b.List(ctx, writersDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("writer registry: %w", err)
	}
	for _, fi := range ents {
		if fi.Dir || !strings.HasSuffix(fi.Name, ".json") || strings.HasPrefix(fi.Name, ".") {
			continue
		}
		data, err := backend.ReadFileMax(ctx, s.b, backend.Join(writersDir, fi.Name), maxWriterEntry)
		if errors.Is(err, fs.ErrNotExist) {
			continue // the writer just finished
		}
		if err != nil {
			return nil, nil, fmt.Errorf("writer registry: %w", err)
		}
		var e writerEntry
		if err := json.Unmarshal(data, &e); err != nil || e.Start.IsZero() {
			// Entries are written atomically, so this is not a writer
			// caught mid-write; judge it by the file's age alone.
			s.log.Warn("unreadable writer registration", "file", fi.Name, "err", err)
			e = writerEntry{ID: strings.TrimSuffix(fi.Name, ".json"), Start: fi.ModTime, Heartbeat: fi.ModTime}
		}
		hb := e.Heartbeat
		if hb.IsZero() || hb.Before(e.Start) {
			hb = e.Start
		}
		if time.Since(hb) > writerStale {
			stale = append(stale, fi.Name)
			continue
		}
		live = append(live, e)
	}
	return live, stale, nil
}
