package datastore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"

	"github.com/pbsq/pbsq/datastore/lock/flock"
	"github.com/pbsq/pbsq/datastore/name"
)

// PBS interop beside the group and snapshot locks (which the flock backend
// already places at PBS's paths): the manifest lock and PBS's move journal,
// both files in the flock locks dir. With locks.dir at PBS's
// /run/proxmox-backup/locks they are PBS's own files.
//
// Both are taken only when the store was opened with a LocksDir, that is
// with the flock lock backend. With the Redis backend pbsq may run on other
// hosts than the datastore's PBS, whose /run they cannot see, so there is
// no PBS whose files these could be; the Redis snapshot locks serialise
// pbsq's own manifest writes, and pbsq's own move journal (journal.go)
// covers pbsq's moves for pbsq's GC.

// pbsLocks is the flock backend on the locks dir, opened at first use so
// that read-only commands create nothing.
type pbsLocks struct {
	dir  string
	once sync.Once
	b    *flock.Backend
	err  error
}

func newPBSLocks(dir string) *pbsLocks {
	if dir == "" {
		return nil
	}
	return &pbsLocks{dir: dir}
}

func (p *pbsLocks) get() (*flock.Backend, error) {
	p.once.Do(func() {
		p.b, p.err = flock.New(flock.Options{Dir: p.dir})
		if p.err != nil {
			p.err = fmt.Errorf("locks: %w", p.err)
		}
	})
	return p.b, p.err
}

// manifestLockWait is PBS's wait; a variable so tests can shorten it.
var manifestLockWait = flock.ManifestLockWait

// lockManifest takes snap's manifest lock at PBS's path, waiting as PBS
// does (5 s). Every manifest update or removal happens under it, innermost
// (after the snapshot lock, if any). Busy errors wrap lock.ErrBusy; callers
// skip the snapshot and report it.
func (s *Store) lockManifest(ctx context.Context, snap name.Snapshot) (release func(), err error) {
	if s.pbs == nil {
		return func() {}, nil
	}
	b, err := s.pbs.get()
	if err != nil {
		return nil, err
	}
	return b.LockManifest(ctx, s.name, snap, manifestLockWait)
}

// pbsJournalAppend records, as a PBS move does, the absolute post-move path
// of every index file about to be moved, one per line, in PBS's move
// journal, before anything moves. Only filesystem stores: PBS's journal
// holds local paths.
func (s *Store) pbsJournalAppend(ctx context.Context, moves []JournalMove) error {
	bs, ok := s.b.(baser)
	if s.pbs == nil || !ok || len(moves) == 0 {
		return nil
	}
	var buf strings.Builder
	for _, m := range moves {
		p := filepath.Join(bs.Base(), filepath.FromSlash(m.To))
		if !filepath.IsAbs(p) || strings.ContainsAny(p, "\n\r") {
			return fmt.Errorf("PBS move journal: refusing to record %q", p)
		}
		buf.WriteString(p)
		buf.WriteByte('\n')
	}
	b, err := s.pbs.get()
	if err != nil {
		return err
	}
	f, err := b.OpenMoveJournal(ctx, s.name)
	if err != nil {
		return err
	}
	// One write: O_APPEND puts it at the end whole.
	if _, err := f.WriteString(buf.String()); err != nil {
		f.Close()
		return fmt.Errorf("PBS move journal %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("PBS move journal %s: %w", f.Name(), err)
	}
	return nil
}

// pbsJournalDrain is PBS's drain at the end of marking: under the
// journal's exclusive flock, fn gets every listed index file that exists
// (as a path of this store), then the journal is truncated, unless keep
// (a dry run) is set. An error from fn leaves the journal as it was, as in
// PBS, so the next GC retries. It returns the number of paths marked.
func (s *Store) pbsJournalDrain(ctx context.Context, keep bool, fn func(rel string) error) (int, error) {
	bs, ok := s.b.(baser)
	if s.pbs == nil || !ok {
		return 0, nil
	}
	b, err := s.pbs.get()
	if err != nil {
		return 0, err
	}
	f, err := b.OpenMoveJournal(ctx, s.name)
	if err != nil {
		return 0, fmt.Errorf("PBS move journal: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<62))
	if err != nil {
		return 0, fmt.Errorf("PBS move journal %s: %w", f.Name(), err)
	}
	bases := []string{bs.Base()}
	if real, err := filepath.EvalSymlinks(bs.Base()); err == nil && real != bs.Base() {
		bases = append(bases, real)
	}
	marked := 0
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		cands := journalCandidates(bases, line)
		if len(cands) == 0 {
			s.log.Warn("PBS move journal: entry names no index file of this store; ignored", "entry", line)
			continue
		}
		for _, rel := range cands {
			err := fn(rel)
			if errors.Is(err, fs.ErrNotExist) {
				continue // moved on or removed since; as PBS: skip
			}
			if err != nil {
				return marked, fmt.Errorf("PBS move journal: %s: %w", line, err)
			}
			marked++
		}
	}
	if keep {
		return marked, nil
	}
	if err := f.Truncate(0); err != nil {
		return marked, fmt.Errorf("PBS move journal %s: truncate after drain: %w", f.Name(), err)
	}
	return marked, nil
}

// journalCandidates maps an absolute path from PBS's journal to the store
// paths to mark. Normally the path lies below the store's directory (or
// its symlink-free form). If not (PBS reaches the same datastore through
// another mount point), every tail of the path that has the datastore
// layout is a candidate: marking an index too many only keeps chunks.
func journalCandidates(bases []string, p string) []string {
	if !filepath.IsAbs(p) {
		return nil
	}
	p = filepath.Clean(p)
	for _, b := range bases {
		if rel, ok := strings.CutPrefix(p, strings.TrimSuffix(b, "/")+"/"); ok {
			rel = filepath.ToSlash(rel)
			if inLayout(rel) {
				return []string{rel}
			}
		}
	}
	var out []string
	parts := strings.Split(filepath.ToSlash(p), "/")
	for i := 1; i < len(parts); i++ {
		if rel := strings.Join(parts[i:], "/"); inLayout(rel) {
			out = append(out, rel)
		}
	}
	return out
}
