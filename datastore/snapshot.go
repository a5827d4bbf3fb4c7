package datastore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/name"
)

// File names inside a snapshot directory.
const (
	ManifestName  = "index.json.blob"
	ProtectedName = ".protected"
)

// SnapshotInfo is a snapshot as found on disk.
type SnapshotInfo struct {
	name.Snapshot
	// Finished: the manifest exists (a snapshot without it is unfinished).
	Finished  bool
	Protected bool
	// Files are the snapshot's file names, sorted.
	Files []string
}

// ListSnapshots returns the snapshots of g, oldest first.
func (s *Store) ListSnapshots(ctx context.Context, g name.Group) ([]SnapshotInfo, error) {
	snaps, err := s.snapshotDirs(ctx, g)
	if err != nil {
		return nil, err
	}
	out := make([]SnapshotInfo, 0, len(snaps))
	for _, sn := range snaps {
		info, err := s.snapshotInfo(ctx, sn)
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// snapshotDirs lists the snapshot directories of g, oldest first, without
// looking inside them; other entries are ignored.
func (s *Store) snapshotDirs(ctx context.Context, g name.Group) ([]name.Snapshot, error) {
	ents, err := s.b.List(ctx, g.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list snapshots of group %s in namespace %q: %w", g, g.NS, err)
	}
	var out []name.Snapshot
	for _, e := range ents {
		if !e.Dir {
			continue
		}
		t, err := name.ParseTime(e.Name)
		if err != nil {
			continue // not a snapshot directory
		}
		out = append(out, name.Snapshot{Group: g, Time: t})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

// SnapshotInfo describes one snapshot; ErrNotFound when it does not exist.
func (s *Store) SnapshotInfo(ctx context.Context, snap name.Snapshot) (SnapshotInfo, error) {
	info, err := s.snapshotInfo(ctx, snap)
	if err != nil {
		return info, err
	}
	if info.Files == nil {
		if fi, err := s.b.Stat(ctx, snap.Path()); err != nil || !fi.Dir {
			return info, fmt.Errorf("snapshot %s in namespace %q: %w", snap, snap.NS, ErrNotFound)
		}
	}
	return info, nil
}

func (s *Store) snapshotInfo(ctx context.Context, snap name.Snapshot) (SnapshotInfo, error) {
	info := SnapshotInfo{Snapshot: snap}
	ents, err := s.b.List(ctx, snap.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return info, nil
	}
	if err != nil {
		return info, fmt.Errorf("snapshot %s in namespace %q: %w", snap, snap.NS, err)
	}
	info.Files = []string{}
	for _, e := range ents {
		if e.Dir {
			continue
		}
		switch e.Name {
		case ManifestName:
			info.Finished = true
		case ProtectedName:
			info.Protected = true
			continue
		}
		if len(e.Name) > 0 && e.Name[0] == '.' {
			continue // temp files, lock files
		}
		info.Files = append(info.Files, e.Name)
	}
	return info, nil
}

// maxManifestFile bounds a manifest's read: a blob of at most the blob
// maximum, plus its header (PBS has no smaller limit).
const maxManifestFile = format.MaxBlobSize + 64

// ReadManifest loads and decodes a snapshot's manifest.
func (s *Store) ReadManifest(ctx context.Context, snap name.Snapshot) (*format.Manifest, error) {
	raw, err := backend.ReadFileMax(ctx, s.b, snap.File(ManifestName), maxManifestFile)
	if err != nil {
		return nil, fmt.Errorf("manifest of snapshot %s in namespace %q: %w", snap, snap.NS, err)
	}
	m, err := format.ParseManifest(raw)
	if err != nil {
		return nil, fmt.Errorf("manifest of snapshot %s in namespace %q: %w", snap, snap.NS, err)
	}
	return m, nil
}

// UpdateManifest rewrites only the manifest's unprotected part: fn may
// change m.Unprotected; anything else it changes is refused. The write is
// atomic (temp file, fsync, rename).
func (s *Store) UpdateManifest(ctx context.Context, snap name.Snapshot, fn func(m *format.Manifest) error) error {
	unlock, err := s.lockManifest(ctx, snap)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := s.ReadManifest(ctx, snap)
	if err != nil {
		return err
	}
	before, err := protectedJSON(m)
	if err != nil {
		return err
	}
	if err := fn(m); err != nil {
		return err
	}
	after, err := protectedJSON(m)
	if err != nil {
		return err
	}
	if string(before) != string(after) {
		return fmt.Errorf("manifest of snapshot %s: only the unprotected part may change", snap)
	}
	raw, err := m.Marshal()
	if err != nil {
		return err
	}
	return s.b.WriteFile(ctx, snap.File(ManifestName), raw)
}

// ReadIndex loads an index file (.fidx or .didx) of a snapshot.
func (s *Store) ReadIndex(ctx context.Context, snap name.Snapshot, file string) (format.Index, error) {
	raw, err := s.b.ReadFile(ctx, snap.File(file))
	if err != nil {
		return nil, fmt.Errorf("index %s of snapshot %s: %w", file, snap, err)
	}
	idx, err := format.ParseIndex(file, raw)
	if err != nil {
		return nil, fmt.Errorf("index %s of snapshot %s: %w", file, snap, err)
	}
	return idx, nil
}

// SetProtected creates or removes the .protected marker.
func (s *Store) SetProtected(ctx context.Context, snap name.Snapshot, protected bool) error {
	p := snap.File(ProtectedName)
	if protected {
		return s.b.WriteFile(ctx, p, nil)
	}
	return s.b.Remove(ctx, p)
}

// removeSnapshotFiles deletes a snapshot directory. The manifest goes first
// so that a crash midway leaves an unfinished snapshot, never a finished one
// with missing files.
func (s *Store) removeSnapshotFiles(ctx context.Context, snap name.Snapshot) error {
	// PBS removes a snapshot under its manifest lock too (so that a notes
	// edit does not resurrect the manifest); a busy one wraps lock.ErrBusy.
	unlock, err := s.lockManifest(ctx, snap)
	if err != nil {
		return fmt.Errorf("remove snapshot %s: %w", snap, err)
	}
	defer unlock()
	if err := s.b.Remove(ctx, snap.File(ManifestName)); err != nil {
		return fmt.Errorf("remove snapshot %s: %w", snap, err)
	}
	if err := s.b.RemoveAll(ctx, snap.Path()); err != nil {
		return fmt.Errorf("remove snapshot %s: %w", snap, err)
	}
	return nil
}

// removeGroupIfEmpty deletes owner/notes and the group directory once no
// snapshot is left.
func (s *Store) removeGroupIfEmpty(ctx context.Context, g name.Group) error {
	snaps, err := s.ListSnapshots(ctx, g)
	if err != nil {
		return err
	}
	if len(snaps) > 0 {
		return nil
	}
	for _, f := range []string{"owner", "notes"} {
		if err := s.b.Remove(ctx, backend.Join(g.Path(), f)); err != nil {
			return err
		}
	}
	if err := s.b.RemoveAll(ctx, g.Path()); err != nil {
		return fmt.Errorf("remove group %s: %w", g, err)
	}
	return nil
}

// protectedJSON is the manifest without its unprotected part: what must not
// change when verify or notes update a manifest.
func protectedJSON(m *format.Manifest) ([]byte, error) {
	c := *m
	c.Unprotected = nil
	return c.JSON()
}

// isIndexFile reports whether a base name is an index file GC must read
// (not a dot-file: those are temp files of atomic writes).
func isIndexFile(base string) bool {
	return !strings.HasPrefix(base, ".") && (strings.HasSuffix(base, ".fidx") || strings.HasSuffix(base, ".didx"))
}

// isBlobFile reports whether a file a manifest lists is a blob (rather
// than an index of chunks).
func isBlobFile(name string) bool {
	return len(name) > len(".blob") && strings.HasSuffix(name, ".blob")
}
