package datastore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	fastcdc "github.com/jotfs/fastcdc-go"
	"golang.org/x/sync/errgroup"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// Chunking parameters of `pbsq backup`.
const (
	FixedChunkSize = 4 << 20
	dynMinChunk    = 1 << 20
	dynMaxChunk    = 16 << 20
	dynAvgChunk    = 4 << 20
	// maxSmallBlob: .conf/.json files below this size become .blob files.
	maxSmallBlob = 1 << 20
)

// BackupSource is one input file of a backup.
type BackupSource struct {
	// Path is the file to read.
	Path string
	// Archive is the archive name (default: the file's base name).
	Archive string
}

// BackupRequest describes a new snapshot.
type BackupRequest struct {
	Group name.Group
	// Time of the snapshot; zero means now.
	Time    time.Time
	Owner   string
	Sources []BackupSource
}

// BackupFileResult describes one written archive.
type BackupFileResult struct {
	Filename  string `json:"filename"`
	Size      int64  `json:"size"`
	Chunks    int    `json:"chunks,omitempty"`
	NewChunks int    `json:"new-chunks,omitempty"`
}

// BackupResult is the outcome of Backup.
type BackupResult struct {
	Snapshot      string             `json:"snapshot"`
	NS            string             `json:"ns"`
	Files         []BackupFileResult `json:"files"`
	Bytes         int64              `json:"bytes"`
	Chunks        int                `json:"chunks"`
	NewChunks     int                `json:"new-chunks"`
	NewBytes      int64              `json:"new-bytes"`
	Seconds       float64            `json:"seconds"`
	MiBPerSecond  float64            `json:"mib-per-second"`
	snapshotValue name.Snapshot
}

// SnapshotName returns the snapshot that was written.
func (r *BackupResult) SnapshotName() name.Snapshot { return r.snapshotValue }

// archiveKind decides how a file is stored, as the PBS client does.
func archiveKind(archive string, size int64) string {
	switch {
	case strings.HasSuffix(archive, ".img"):
		return ".fidx"
	case (strings.HasSuffix(archive, ".conf") || strings.HasSuffix(archive, ".json")) && size < maxSmallBlob:
		return ".blob"
	default:
		return ".didx"
	}
}

// validateBackup checks everything about the request before any I/O on the
// datastore, so that bad input changes nothing.
func validateBackup(req *BackupRequest) ([]string, []int64, error) {
	if _, err := name.NewGroup(req.Group.NS, string(req.Group.Type), req.Group.ID); err != nil {
		return nil, nil, err
	}
	if err := ValidateOwner(req.Owner); err != nil {
		return nil, nil, err
	}
	if len(req.Sources) == 0 {
		return nil, nil, invalidf("backup needs at least one file")
	}
	seen := map[string]bool{}
	var names []string
	var sizes []int64
	for _, src := range req.Sources {
		st, err := os.Stat(src.Path)
		if err != nil {
			return nil, nil, invalidf("backup source %q: %v", src.Path, err)
		}
		if !st.Mode().IsRegular() {
			return nil, nil, invalidf("backup source %q: not a regular file", src.Path)
		}
		archive := src.Archive
		if archive == "" {
			archive = filepath.Base(src.Path)
		}
		if err := name.ValidateID(archive); err != nil {
			return nil, nil, invalidf("archive name %q (from %q): use A-Z a-z 0-9 _ . - only", archive, src.Path)
		}
		full := archive + archiveKind(archive, st.Size())
		if seen[full] || full == ManifestName {
			return nil, nil, invalidf("archive name %q given twice or reserved", full)
		}
		seen[full] = true
		names = append(names, full)
		sizes = append(sizes, st.Size())
	}
	return names, sizes, nil
}

// Backup writes a new snapshot: chunks first, then the index files, then
// the manifest last, so a crash leaves an unfinished snapshot and never a
// finished one with missing data. It takes a shared namespace lock and
// exclusive group and snapshot locks.
func (s *Store) Backup(ctx context.Context, req BackupRequest, progress ProgressFunc) (*BackupResult, error) {
	start := time.Now()
	archives, sizes, err := validateBackup(&req)
	if err != nil {
		return nil, err
	}
	if req.Time.IsZero() {
		req.Time = time.Now()
	}
	snap := name.NewSnapshot(req.Group, req.Time)
	g := req.Group
	// Checked before locking too, so that a bad namespace leaves no lock
	// files behind; checked again under the lock below.
	if err := s.requireNamespace(ctx, g.NS); err != nil {
		return nil, err
	}

	unlock, err := s.beginWrite(ctx, true)
	if err != nil {
		return nil, err
	}
	defer unlock()
	ctx, release, err := hold(ctx, s.on(
		s.nsRequest(g.NS, lock.Shared),
		s.groupRequest(g),
		s.snapshotRequest(snap, lock.Exclusive),
	)...)
	if err != nil {
		return nil, err
	}
	defer release()
	// Announce the writer to garbage collection before any chunk is
	// inserted, so that GC keeps chunks newer than our start.
	writerDone, err := s.registerWriter(ctx)
	if err != nil {
		return nil, err
	}
	defer writerDone()

	if err := s.requireNamespace(ctx, g.NS); err != nil {
		return nil, err
	}
	snaps, err := s.ListSnapshots(ctx, g)
	if err != nil {
		return nil, err
	}
	// As PBS: the time must be newer than the last finished snapshot. An
	// unfinished leftover at the same time (a backup that failed or was
	// killed) is cleared so the rerun can write it.
	for i := len(snaps) - 1; i >= 0; i-- {
		if !snaps[i].Finished {
			if snaps[i].Time.Equal(snap.Time) {
				if err := s.b.RemoveAll(ctx, snap.Path()); err != nil {
					return nil, fmt.Errorf("clear unfinished snapshot %s: %w", snap, err)
				}
			}
			continue
		}
		if !snaps[i].Time.Before(snap.Time) {
			return nil, invalidf("backup time %s is not newer than the last snapshot %s of group %s", snap.TimeString(), snaps[i].TimeString(), g)
		}
		break
	}
	// A backup that fails from here on removes its own partial snapshot,
	// so nothing unfinished is left behind by a clean error.
	written := false
	defer func() {
		if !written {
			_ = s.b.RemoveAll(context.WithoutCancel(ctx), snap.Path())
		}
	}()
	if len(snaps) > 0 {
		owner, err := s.GroupOwner(ctx, g)
		if err != nil {
			return nil, err
		}
		if owner != req.Owner {
			return nil, invalidf("group %s is owned by %q, not %q", g, owner, req.Owner)
		}
	} else if err := s.SetGroupOwner(ctx, g, req.Owner); err != nil {
		return nil, err
	}

	var total int64
	for _, sz := range sizes {
		total += sz
	}
	rep := newReporter(progress, "backup", total)
	res := &BackupResult{Snapshot: snap.String(), NS: g.NS.String(), snapshotValue: snap}
	manifest := &format.Manifest{
		BackupType: string(g.Type),
		BackupID:   g.ID,
		BackupTime: snap.Time.Unix(),
	}
	for i, src := range req.Sources {
		fr, entry, err := s.backupFile(ctx, snap, archives[i], src.Path, rep)
		if err != nil {
			return nil, err
		}
		res.Files = append(res.Files, fr.BackupFileResult)
		res.Bytes += fr.Size
		res.Chunks += fr.Chunks
		res.NewChunks += fr.NewChunks
		res.NewBytes += fr.newBytes
		manifest.Files = append(manifest.Files, entry)
	}
	raw, err := manifest.Marshal()
	if err != nil {
		return nil, err
	}
	// Chunks and indexes must be durable before the manifest says the
	// snapshot is finished.
	if err := backend.Sync(ctx, s.b); err != nil {
		return nil, err
	}
	unlockManifest, err := s.lockManifest(ctx, snap)
	if err != nil {
		return nil, err
	}
	err = s.b.WriteFile(ctx, snap.File(ManifestName), raw)
	unlockManifest()
	if err != nil {
		return nil, fmt.Errorf("write manifest of %s: %w", snap, err)
	}
	written = true
	res.Seconds = time.Since(start).Seconds()
	if res.Seconds > 0 {
		res.MiBPerSecond = float64(res.Bytes) / (1 << 20) / res.Seconds
	}
	rep.finish()
	return res, nil
}

type fileResult struct {
	BackupFileResult
	newBytes int64
}

func (s *Store) backupFile(ctx context.Context, snap name.Snapshot, archive, path string, rep *reporter) (fileResult, format.FileInfo, error) {
	fr := fileResult{BackupFileResult: BackupFileResult{Filename: archive}}
	// O_NONBLOCK: a source swapped for a FIFO since it was checked must not
	// hang the backup in open(2); it is refused by the check below.
	fh, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fr, format.FileInfo{}, fmt.Errorf("backup source %q: %w", path, err)
	}
	defer fh.Close()
	if st, err := fh.Stat(); err != nil || !st.Mode().IsRegular() {
		return fr, format.FileInfo{}, fmt.Errorf("backup source %q: not a regular file (%v)", path, err)
	}

	if strings.HasSuffix(archive, ".blob") {
		data, err := io.ReadAll(io.LimitReader(fh, maxSmallBlob))
		if err != nil {
			return fr, format.FileInfo{}, fmt.Errorf("backup source %q: %w", path, err)
		}
		raw, err := format.EncodeBlob(data)
		if err != nil {
			return fr, format.FileInfo{}, err
		}
		if err := s.b.WriteFile(ctx, snap.File(archive), raw); err != nil {
			return fr, format.FileInfo{}, fmt.Errorf("write %s: %w", archive, err)
		}
		fr.Size = int64(len(data))
		rep.add(int64(len(data)))
		return fr, format.FileInfo{Filename: archive, CryptMode: "none", Size: uint64(len(raw)), Csum: sha256.Sum256(raw)}, nil
	}

	fixed := strings.HasSuffix(archive, ".fidx")
	var next func(buf []byte) ([]byte, error)
	if fixed {
		next = func(buf []byte) ([]byte, error) {
			n, err := io.ReadFull(fh, buf[:FixedChunkSize])
			if n > 0 {
				return buf[:n], nil
			}
			if errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.EOF
			}
			return nil, err
		}
	} else {
		// FastCDC (gear hash): content-defined boundaries at over 1 GB/s
		// on one core, since chunking is the one serial stage of ingest.
		// Its parameters are fixed, so equal data chunks equally across
		// backups and deduplicates.
		ch, err := fastcdc.NewChunker(fh, fastcdc.Options{MinSize: dynMinChunk, AverageSize: dynAvgChunk, MaxSize: dynMaxChunk})
		if err != nil {
			return fr, format.FileInfo{}, err
		}
		next = func(buf []byte) ([]byte, error) {
			c, err := ch.Next()
			if err != nil {
				return nil, err
			}
			// c.Data lives in the chunker's buffer until the next call.
			return buf[:copy(buf, c.Data)], nil
		}
	}
	digests, lens, st, err := s.storeChunks(ctx, next, rep)
	if err != nil {
		return fr, format.FileInfo{}, fmt.Errorf("backup source %q: %w", path, err)
	}
	fr.Chunks = len(digests)
	fr.NewChunks = st.newChunks
	fr.newBytes = st.newBytes
	var uuid [16]byte
	_, _ = rand.Read(uuid[:])
	var idxRaw []byte
	var csum [32]byte
	var size uint64
	if fixed {
		idx := &format.FixedIndex{UUID: uuid, CTime: time.Now().Unix(), ChunkSize: FixedChunkSize}
		for i, d := range digests {
			idx.Digests = append(idx.Digests, d)
			idx.Size += uint64(lens[i])
		}
		idxRaw, csum, size = idx.Marshal(), idx.Checksum(), idx.Size
	} else {
		idx := &format.DynamicIndex{UUID: uuid, CTime: time.Now().Unix()}
		var end uint64
		for i, d := range digests {
			end += uint64(lens[i])
			idx.Entries = append(idx.Entries, format.DynamicEntry{End: end, Digest: d})
		}
		idxRaw, csum, size = idx.Marshal(), idx.Checksum(), end
	}
	fr.Size = int64(size)
	if err := s.b.WriteFile(ctx, snap.File(archive), idxRaw); err != nil {
		return fr, format.FileInfo{}, fmt.Errorf("write %s: %w", archive, err)
	}
	return fr, format.FileInfo{Filename: archive, CryptMode: "none", Size: size, Csum: csum}, nil
}

type chunkStats struct {
	newChunks int
	newBytes  int64
}

// zeroChunkDigest caches the digest of an all-zero fixed-size chunk: disk
// images are full of them and hashing each again would be wasted work.
var zeroChunkDigest = sync.OnceValue(func() [32]byte {
	return sha256.Sum256(make([]byte, FixedChunkSize))
})

// storeChunks reads chunks with next and hashes, compresses and inserts them
// on all cores, keeping the digests in file order. Memory is bounded by the
// number of buffers in flight.
func (s *Store) storeChunks(ctx context.Context, next func([]byte) ([]byte, error), rep *reporter) ([][32]byte, []int, chunkStats, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	workers := runtime.GOMAXPROCS(0)
	type job struct {
		seq  int
		buf  []byte
		data []byte
	}
	type done struct {
		seq      int
		digest   [32]byte
		n        int
		inserted bool
	}
	bufs := make(chan []byte, workers*2)
	for i := 0; i < cap(bufs); i++ {
		bufs <- make([]byte, dynMaxChunk)
	}
	results := make(chan done, workers*2)
	var zeroStored atomic.Bool
	store := func(j job) {
		defer func() { bufs <- j.buf }()
		var d [32]byte
		if len(j.data) == FixedChunkSize && isZero(j.data) {
			d = zeroChunkDigest()
			if zeroStored.Load() {
				results <- done{seq: j.seq, digest: d, n: len(j.data)}
				return
			}
		} else {
			d = sha256.Sum256(j.data)
		}
		blob, err := format.EncodeBlob(j.data)
		if err == nil {
			var ins bool
			ins, err = s.InsertChunk(ctx, d, blob)
			if err == nil {
				if d == zeroChunkDigest() && len(j.data) == FixedChunkSize {
					zeroStored.Store(true)
				}
				results <- done{seq: j.seq, digest: d, n: len(j.data), inserted: ins}
			}
		}
		if err != nil {
			cancel(err)
		}
	}
	// An error cancels ctx (its cause is returned below): the reader stops
	// handing out chunks, and those in flight finish or fail fast.
	var readErr error
	go func() {
		pool := new(errgroup.Group)
		pool.SetLimit(workers)
		defer func() {
			_ = pool.Wait()
			close(results)
		}()
		for seq := 0; ; seq++ {
			var buf []byte
			select {
			case buf = <-bufs:
			case <-ctx.Done():
				return
			}
			data, err := next(buf)
			if err == io.EOF {
				bufs <- buf
				return
			}
			if err != nil {
				readErr = err
				cancel(err)
				return
			}
			pool.Go(func() error {
				store(job{seq: seq, buf: buf, data: data})
				return nil
			})
		}
	}()

	var digests [][32]byte
	var lens []int
	var st chunkStats
	for r := range results {
		for len(digests) <= r.seq {
			digests = append(digests, [32]byte{})
			lens = append(lens, 0)
		}
		digests[r.seq], lens[r.seq] = r.digest, r.n
		if r.inserted {
			st.newChunks++
			st.newBytes += int64(r.n)
		}
		rep.add(int64(r.n))
	}
	if err := context.Cause(ctx); err != nil {
		if readErr != nil {
			return nil, nil, st, readErr
		}
		return nil, nil, st, err
	}
	return digests, lens, st, nil
}

func isZero(b []byte) bool {
	var zero [4096]byte
	for len(b) > 0 {
		n := min(len(b), len(zero))
		if !bytes.Equal(b[:n], zero[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
