package datastore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/name"
)

// Sync never holds a snapshot file whole unless it is small: each index
// or blob is streamed once to check it against its manifest entry (and,
// from the source, to collect an index's chunks), and streamed again into
// the target when it is written, so a huge or sparse file in a hostile
// store costs time, not memory (DESIGN §10).

// syncKeep: files up to this size are kept from their check to their
// write; larger ones are read again, and must hash the same.
const syncKeep = 1 << 20

// fileCheck is what sync learned of one snapshot file by streaming it.
type fileCheck struct {
	size int64
	sum  [32]byte // SHA-256 of the whole file
	// why the file does not match its manifest entry; "" when it does.
	why string
	// raw is the content when it is at most syncKeep bytes.
	raw []byte
	// refs are an index's distinct chunks (when asked for and it is good).
	refs []chunkRef
}

// snapFiles is what sync read of one snapshot's files.
type snapFiles struct {
	manifest    []byte // nil when missing
	hasManifest bool
	hasLog      bool
	files       map[string]*fileCheck // missing files are left out
}

// readErr remembers the first read error other than EOF, so that a failed
// read is told apart from bad data.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// keepWriter keeps what is written to it up to syncKeep bytes.
type keepWriter struct {
	buf  bytes.Buffer
	over bool
}

func (k *keepWriter) Write(p []byte) (int, error) {
	if !k.over && k.buf.Len()+len(p) <= syncKeep {
		k.buf.Write(p)
	} else if !k.over {
		k.over = true
		k.buf = bytes.Buffer{}
	}
	return len(p), nil
}

// countWriter counts the bytes written to it.
type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// readSnapFiles reads concurrently what sync needs of snap: with manifest,
// its manifest (bounded); with log, whether the client log exists; and
// each of files streamed and checked against its entry, collecting an
// index's chunks when refs is set.
func (s *Store) readSnapFiles(ctx context.Context, snap name.Snapshot, manifest, log bool, files []format.FileInfo, refs bool, workers int) (*snapFiles, error) {
	out := &snapFiles{files: make(map[string]*fileCheck, len(files))}
	checks := make([]*fileCheck, len(files))
	n := len(files)
	const (
		manifestJob = -1
		logJob      = -2
	)
	var extra []int
	if manifest {
		extra = append(extra, manifestJob)
	}
	if log {
		extra = append(extra, logJob)
	}
	err := parallel(ctx, workers, n+len(extra), func(ctx context.Context, i int) error {
		var err error
		what := ""
		switch {
		case i >= n && extra[i-n] == manifestJob:
			what = ManifestName
			out.manifest, err = backend.ReadFileMax(ctx, s.b, snap.File(ManifestName), maxManifestFile)
			out.hasManifest = err == nil || errors.Is(err, backend.ErrTooLarge)
			if errors.Is(err, backend.ErrTooLarge) {
				err = nil // there, and unlike any manifest sync would write
			}
		case i >= n:
			what = clientLogName
			_, err = backend.StatFile(ctx, s.b, snap.File(clientLogName))
			out.hasLog = err == nil
		default:
			what = files[i].Filename
			checks[i], err = s.checkSnapFile(ctx, snap, files[i], refs)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s of snapshot %s on store %q: %w", what, snapshotLabel(snap), s.name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i, f := range files {
		if checks[i] != nil {
			out.files[f.Filename] = checks[i]
		}
	}
	return out, nil
}

// checkSnapFile streams file f of snap, checking it against its manifest
// entry as checkFile does; fs.ErrNotExist when missing. Memory: a read
// piece, the file when small, and an index's distinct chunks.
func (s *Store) checkSnapFile(ctx context.Context, snap name.Snapshot, f format.FileInfo, refs bool) (*fileCheck, error) {
	rc, err := backend.Open(ctx, s.b, snap.File(f.Filename))
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	size, known := knownSize(rc)
	if !known {
		size = -1
	}
	src := &readErr{r: rc}
	h := sha256.New()
	var keep keepWriter
	var count countWriter
	r := io.TeeReader(src, io.MultiWriter(h, &keep, &count))
	c := &fileCheck{}
	if isBlobFile(f.Filename) {
		c.why = checkBlobStream(f, r, size, h)
	} else {
		c.why, c.refs = checkIndexStream(f, r, size, refs)
	}
	if src.err != nil {
		return nil, src.err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if c.why != "" {
		c.refs = nil
		return c, nil
	}
	// The sum covers the whole file: what the checks left unread too.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, err
	}
	c.size = count.n
	c.sum = [32]byte(h.Sum(nil))
	if !keep.over {
		c.raw = keep.buf.Bytes()
		if c.raw == nil {
			c.raw = []byte{}
		}
	}
	return c, nil
}

// checkBlobStream is checkFile for a blob read from r (size: its length
// when known, else -1; h: the SHA-256 of what r has given).
func checkBlobStream(f format.FileInfo, r io.Reader, size int64, h hash.Hash) string {
	differs := f.Filename + ": checksum or size differs from the manifest"
	if f.Size > maxManifestFile || (size >= 0 && uint64(size) != f.Size) {
		return differs
	}
	var count countWriter
	lr := io.TeeReader(io.LimitReader(r, int64(f.Size)+1), &count)
	bs := format.NewBlobStreamer(64 << 10)
	_, err := bs.Open(lr)
	if err == nil {
		_, err = bs.Skip()
	}
	_, _ = io.Copy(io.Discard, lr)
	if uint64(count.n) != f.Size || [32]byte(h.Sum(nil)) != f.Csum {
		return differs
	}
	if err != nil {
		return fmt.Sprintf("%s: %v", f.Filename, err)
	}
	return ""
}

// checkIndexStream is checkFile for an index read from r (size: its length
// when known, else -1), returning its distinct chunks when refs is set.
func checkIndexStream(f format.FileInfo, r io.Reader, size int64, refs bool) (string, []chunkRef) {
	var out []chunkRef
	seen := map[Digest]bool{}
	info, err := format.ScanIndex(f.Filename, r, size, func(_ int, d [32]byte, start, end uint64) error {
		if refs && !seen[Digest(d)] {
			seen[Digest(d)] = true
			out = append(out, chunkRef{digest: d, size: end - start})
		}
		return nil
	})
	switch {
	case err != nil:
		return fmt.Sprintf("%s: %v", f.Filename, err), nil
	case info.Checksum != f.Csum:
		return f.Filename + ": index checksum differs from the manifest", nil
	case info.DataSize != f.Size:
		return fmt.Sprintf("%s: size %d differs from the manifest's %d", f.Filename, info.DataSize, f.Size), nil
	}
	return "", out
}

// filesMatch reports whether every file the manifest lists was read (from
// the target) and matches its entry: the cheap re-check of a snapshot
// whose manifest is identical to the source's.
func filesMatch(m *format.Manifest, files map[string]*fileCheck) bool {
	for _, f := range m.Files {
		c, ok := files[f.Filename]
		if !ok || c.why != "" {
			return false
		}
	}
	return true
}

// errChangedDuringCopy: a source file no longer hashes as when it was
// checked; its write is abandoned.
var errChangedDuringCopy = errors.New("changed while being copied")

// sumReader passes on at most size bytes of r and, at their end, fails
// unless they hash to sum: a file re-read for its write must be the one
// that was checked.
type sumReader struct {
	r    io.Reader
	h    hash.Hash
	left int64
	sum  [32]byte
	name string
}

func (s *sumReader) Read(p []byte) (int, error) {
	if int64(len(p)) > s.left+1 {
		p = p[:s.left+1]
	}
	n, err := s.r.Read(p)
	s.h.Write(p[:n])
	s.left -= int64(n)
	if s.left < 0 {
		return 0, fmt.Errorf("%s: %w", s.name, errChangedDuringCopy)
	}
	if err == io.EOF && (s.left != 0 || [32]byte(s.h.Sum(nil)) != s.sum) {
		return n, fmt.Errorf("%s: %w", s.name, errChangedDuringCopy)
	}
	return n, err
}

// copySnapFile writes file f of source snapshot ssn to target snapshot
// tsn: from memory when it was kept, streamed from the source otherwise.
func (y *syncer) copySnapFile(ctx context.Context, ssn, tsn name.Snapshot, f syncFile) error {
	if f.raw != nil {
		return y.dst.b.WriteFile(ctx, tsn.File(f.name), f.raw)
	}
	rc, err := backend.Open(ctx, y.src.b, ssn.File(f.name))
	if err != nil {
		return fmt.Errorf("read %s of snapshot %s on store %q: %w", f.name, snapshotLabel(ssn), y.src.name, err)
	}
	defer rc.Close()
	return backend.WriteFrom(ctx, y.dst.b, tsn.File(f.name), &sumReader{r: rc, h: sha256.New(), left: f.size, sum: f.sum, name: f.name})
}
