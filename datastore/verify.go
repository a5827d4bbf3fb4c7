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
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// VerifyRequest selects what to verify and how.
type VerifyRequest struct {
	Scope
	// IgnoreVerified skips snapshots whose last verification is ok or
	// failed and not outdated (PBS's ignore-verified).
	IgnoreVerified bool
	// OutdatedAfter (days): with IgnoreVerified, re-verify snapshots whose
	// last verification is older; nil means never, 0 means always.
	OutdatedAfter *int
	// TaskID is recorded in verify_state's upid.
	TaskID string
	// ReadOnly checks without changing anything: no verify_state is
	// recorded and corrupt chunks are not renamed. It works on stores
	// where writing is refused (an object store a PBS uses).
	ReadOnly bool
}

// FailedSnapshot is a snapshot that did not verify, with the reasons.
type FailedSnapshot struct {
	NS       string   `json:"ns"`
	Snapshot string   `json:"snapshot"`
	Reasons  []string `json:"reasons"`
}

// VerifyResult is the outcome of Verify.
type VerifyResult struct {
	Snapshots       int              `json:"snapshots"`
	OK              int              `json:"ok"`
	Failed          []FailedSnapshot `json:"failed"`
	Skipped         []Skipped        `json:"skipped"`
	Unfinished      []string         `json:"unfinished"`
	AlreadyVerified int              `json:"already-verified"`
	Chunks          int              `json:"chunks"`
	ChunksCorrupt   int              `json:"chunks-corrupt"`
	ChunksMissing   int              `json:"chunks-missing"`
	ChunksEncrypted int              `json:"chunks-encrypted"`
	RenamedBad      []string         `json:"renamed-bad,omitempty"`
	Bytes           int64            `json:"bytes"`
	Seconds         float64          `json:"seconds"`
	MiBPerSecond    float64          `json:"mib-per-second"`
}

// Outcome folds the result into ok, skipped or failed.
func (r *VerifyResult) Outcome() error {
	switch {
	case len(r.Failed) > 0:
		return fmt.Errorf("verify: %d snapshot(s) failed (%s first): %w", len(r.Failed), r.Failed[0].Snapshot, ErrFailed)
	case len(r.Skipped) > 0:
		return fmt.Errorf("verify: %d snapshot(s) skipped: %w", len(r.Skipped), ErrSkipped)
	}
	return nil
}

// ErrFailed marks a completed operation with failed items.
var ErrFailed = errors.New("completed with failures")

// chunkState is what a task learnt of a chunk; each is checked once.
type chunkState uint8

const (
	chunkOK chunkState = iota + 1
	chunkCorrupt
	chunkMissing
	chunkEncrypted
)

func (c chunkState) String() string {
	switch c {
	case chunkOK:
		return "ok"
	case chunkCorrupt:
		return "corrupt"
	case chunkMissing:
		return "missing"
	case chunkEncrypted:
		return "encrypted"
	}
	return "unknown"
}

type chunkRef struct {
	digest Digest
	size   uint64
}

// verifier holds one task's state: the chunks already checked.
type verifier struct {
	s       *Store
	req     VerifyRequest
	res     *VerifyResult
	rep     *reporter
	start   time.Time
	mu      sync.Mutex
	checked map[Digest]chunkState
	reasons map[Digest]string
	workers int

	decoders     *decoderPool
	idleCheckers []*chunkChecker
}

// Verify checks snapshots as PBS does: manifest, index checksums and sizes,
// every chunk (CRC, decoding, SHA-256, size) once per task, blobs. Corrupt
// chunks are renamed .bad; each verified snapshot's manifest records
// verify_state. Busy snapshots are retried once at the end, then skipped.
func (s *Store) Verify(ctx context.Context, req VerifyRequest, progress ProgressFunc) (*VerifyResult, error) {
	v := &verifier{
		s: s, req: req, start: time.Now(),
		res:     &VerifyResult{Failed: []FailedSnapshot{}, Skipped: []Skipped{}, Unfinished: []string{}},
		checked: map[Digest]chunkState{},
		reasons: map[Digest]string{},
		workers: runtime.GOMAXPROCS(0),

		decoders: newDecoderPool(verifyDecodeBudget),
	}
	defer v.decoders.close()
	if !req.ReadOnly {
		if _, err := s.beginWrite(ctx, false); err != nil {
			return nil, err
		}
	}
	snaps, err := s.scopeSnapshots(ctx, req.Scope)
	if err != nil {
		return nil, err
	}
	v.rep = newReporter(progress, "verify", int64(len(snaps)))
	var aside []SnapshotInfo
	for _, sn := range snaps {
		if err := ctx.Err(); err != nil {
			return v.res, err
		}
		busy, err := v.snapshot(ctx, sn)
		if err != nil {
			return v.res, err
		}
		if busy != nil {
			aside = append(aside, sn)
			continue
		}
		v.rep.add(1)
	}
	for _, sn := range aside {
		busy, err := v.snapshot(ctx, sn)
		if err != nil {
			return v.res, err
		}
		if busy != nil {
			v.res.Skipped = append(v.res.Skipped, Skipped{Item: sn.NS.String() + ":" + sn.Snapshot.String(), Reason: busy.Error()})
			s.obs.skipped("verify", "busy")
		}
		v.rep.add(1)
	}
	v.res.Seconds = time.Since(v.start).Seconds()
	if v.res.Seconds > 0 {
		v.res.MiBPerSecond = float64(v.res.Bytes) / (1 << 20) / v.res.Seconds
	}
	v.rep.finish()
	return v.res, nil
}

// scopeSnapshots lists the snapshots in scope, oldest first per group.
func (s *Store) scopeSnapshots(ctx context.Context, sc Scope) ([]SnapshotInfo, error) {
	groups, err := s.scopeGroups(ctx, sc)
	if err != nil {
		return nil, err
	}
	if sc.Snapshot != nil {
		info, err := s.SnapshotInfo(ctx, *sc.Snapshot)
		if err != nil {
			return nil, err
		}
		return []SnapshotInfo{info}, nil
	}
	var out []SnapshotInfo
	for _, g := range groups {
		snaps, err := s.ListSnapshots(ctx, g)
		if err != nil {
			return nil, err
		}
		out = append(out, snaps...)
	}
	return out, nil
}

// wantVerify is PBS's verify_filter.
func (v *verifier) wantVerify(m *format.Manifest) bool {
	if !v.req.IgnoreVerified {
		return true
	}
	vs := m.VerifyState()
	if vs == nil || vs.State == "" {
		return true
	}
	if v.req.OutdatedAfter == nil {
		return false
	}
	maxAge := *v.req.OutdatedAfter
	started, ok := upidStart(vs.UPID)
	if !ok {
		return true
	}
	days := int(v.start.Sub(started) / (24 * time.Hour))
	return maxAge == 0 || days > maxAge
}

// snapshot verifies one snapshot; a non-nil busy error means it was locked.
func (v *verifier) snapshot(ctx context.Context, sn SnapshotInfo) (busy error, err error) {
	label := sn.NS.String() + ":" + sn.Snapshot.String()
	if !sn.Finished {
		v.res.Unfinished = append(v.res.Unfinished, label)
		return nil, nil
	}
	ctx, release, err := v.s.lockChain(ctx, []lock.Request{
		v.s.nsRequest(sn.NS, lock.Shared),
		v.s.snapshotRequest(sn.Snapshot, lock.Shared),
	})
	if errors.Is(err, lock.ErrBusy) {
		return err, nil
	}
	if err != nil {
		return nil, err
	}
	defer release()

	m, err := v.s.ReadManifest(ctx, sn.Snapshot)
	if errors.Is(err, fs.ErrNotExist) {
		// Removed (pruned, moved) since it was listed: nothing to verify.
		return nil, nil
	}
	if err != nil {
		v.fail(sn.Snapshot, []string{err.Error()})
		return nil, nil
	}
	if !v.wantVerify(m) {
		v.res.AlreadyVerified++
		return nil, nil
	}
	v.res.Snapshots++
	reasons, err := v.files(ctx, sn.Snapshot, m)
	if err != nil {
		return nil, err
	}
	state := format.VerifyOK
	if len(reasons) > 0 {
		state = format.VerifyFailed
		v.fail(sn.Snapshot, reasons)
	} else {
		v.res.OK++
	}
	if v.req.ReadOnly {
		return nil, nil
	}
	upid := UPID("verify", v.s.name, v.req.TaskID, v.start)
	err = v.s.UpdateManifest(ctx, sn.Snapshot, func(m *format.Manifest) error {
		m.SetVerifyState(state, upid)
		return nil
	})
	if errors.Is(err, lock.ErrBusy) {
		// The manifest stayed locked (a PBS task is updating it): the
		// snapshot was checked, but its state is not recorded. Not retried,
		// which would check it all again.
		v.res.Skipped = append(v.res.Skipped, Skipped{Item: label, Reason: "verify state not recorded: " + err.Error()})
		v.s.obs.skipped("verify", "busy")
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("record verify state of %s: %w", label, err)
	}
	return nil, nil
}

func (v *verifier) fail(sn name.Snapshot, reasons []string) {
	v.res.Failed = append(v.res.Failed, FailedSnapshot{NS: sn.NS.String(), Snapshot: sn.String(), Reasons: reasons})
}

// files checks every file of the manifest; it returns the failure reasons.
func (v *verifier) files(ctx context.Context, sn name.Snapshot, m *format.Manifest) ([]string, error) {
	var reasons []string
	var refs []chunkRef
	seen := map[Digest]bool{}
	for _, f := range m.Files {
		raw, err := v.s.b.ReadFile(ctx, sn.File(f.Filename))
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			reasons = append(reasons, fmt.Sprintf("%s: %v", f.Filename, err))
			continue
		}
		if isBlobFile(f.Filename) {
			if uint64(len(raw)) != f.Size || sha256.Sum256(raw) != f.Csum {
				reasons = append(reasons, fmt.Sprintf("%s: checksum or size differs from the manifest", f.Filename))
			} else if _, err := format.InspectBlob(raw); err != nil && !errors.Is(err, format.ErrEncrypted) {
				reasons = append(reasons, fmt.Sprintf("%s: %v", f.Filename, err))
			}
			v.res.Bytes += int64(len(raw))
			continue
		}
		idx, err := format.ParseIndex(f.Filename, raw)
		if err != nil {
			reasons = append(reasons, fmt.Sprintf("%s: %v", f.Filename, err))
			continue
		}
		if idx.Checksum() != f.Csum {
			reasons = append(reasons, fmt.Sprintf("%s: index checksum differs from the manifest", f.Filename))
			continue
		}
		if idx.DataSize() != f.Size {
			reasons = append(reasons, fmt.Sprintf("%s: size %d differs from the manifest's %d", f.Filename, idx.DataSize(), f.Size))
			continue
		}
		for i := 0; i < idx.ChunkCount(); i++ {
			d := Digest(idx.ChunkDigest(i))
			if !seen[d] {
				seen[d] = true
				refs = append(refs, chunkRef{digest: d, size: idx.ChunkLen(i)})
			}
		}
	}
	bad, err := v.chunks(ctx, refs)
	if err != nil {
		return nil, err
	}
	return append(reasons, bad...), nil
}

func isBlobFile(name string) bool {
	return len(name) > 5 && name[len(name)-5:] == ".blob"
}

// chunks checks the chunks not yet checked by this task on all cores and
// returns a reason for every bad chunk among refs (checked now or before).
func (v *verifier) chunks(ctx context.Context, refs []chunkRef) ([]string, error) {
	var todo []chunkRef
	v.mu.Lock()
	for _, r := range refs {
		if _, ok := v.checked[r.digest]; !ok {
			todo = append(todo, r)
		}
	}
	v.mu.Unlock()
	// Chunk files sit in digest order in their prefix directories; reading
	// in that order keeps a filesystem's directory and inode access local.
	sort.Slice(todo, func(i, j int) bool { return bytes.Compare(todo[i].digest[:], todo[j].digest[:]) < 0 })

	jobs := make(chan chunkRef)
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	for w := 0; w < min(v.workers, max(len(todo), 1)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := v.checker()
			defer v.putChecker(c)
			for r := range jobs {
				st, why := v.checkChunk(ctx, r, c)
				if st == 0 {
					errOnce.Do(func() { firstErr = errors.New(why) })
					continue
				}
				if st == chunkCorrupt && !v.req.ReadOnly {
					if p, err := v.s.RenameCorruptChunk(ctx, r.digest); err != nil {
						why += "; could not rename: " + err.Error()
					} else {
						v.mu.Lock()
						v.res.RenamedBad = append(v.res.RenamedBad, p)
						v.mu.Unlock()
					}
				}
				v.record(r, st, why)
			}
		}()
	}
	for _, r := range todo {
		if ctx.Err() != nil {
			break
		}
		jobs <- r
	}
	close(jobs)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if firstErr != nil {
		return nil, firstErr
	}
	var reasons []string
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, r := range refs {
		switch st := v.checked[r.digest]; st {
		case chunkOK, chunkEncrypted:
		default:
			reasons = append(reasons, fmt.Sprintf("chunk %s %s: %s", r.digest, st, v.reasons[r.digest]))
		}
	}
	return reasons, nil
}

func (v *verifier) record(r chunkRef, st chunkState, why string) {
	v.mu.Lock()
	v.checked[r.digest] = st
	if why != "" {
		v.reasons[r.digest] = why
	}
	v.res.Chunks++
	switch st {
	case chunkCorrupt:
		v.res.ChunksCorrupt++
	case chunkMissing:
		v.res.ChunksMissing++
	case chunkEncrypted:
		v.res.ChunksEncrypted++
	}
	v.res.Bytes += int64(r.size)
	msg := fmt.Sprintf("%.1f MiB checked", float64(v.res.Bytes)/(1<<20))
	v.mu.Unlock()
	v.s.obs.chunkVerified(st.String(), int64(r.size))
	v.rep.message(msg)
}

// Verify streams every chunk through the CRC, the zstd decoder and SHA-256
// in pieces, so its memory does not grow with chunk size or core count:
// one read buffer per worker plus decoders within verifyDecodeBudget.
const (
	verifyReadBuffer   = 256 << 10
	verifyDecodeBudget = 40 << 20
	// verifyReadAttempts: a chunk whose read fails midway (an S3 body cut
	// off) is read again from the start before the task gives up.
	verifyReadAttempts = 3
)

// chunkChecker is one worker's reusable state.
type chunkChecker struct {
	blob *format.BlobStreamer
	hash hash.Hash
	sum  Digest
}

func (v *verifier) checker() *chunkChecker {
	v.mu.Lock()
	defer v.mu.Unlock()
	if n := len(v.idleCheckers); n > 0 {
		c := v.idleCheckers[n-1]
		v.idleCheckers = v.idleCheckers[:n-1]
		return c
	}
	return &chunkChecker{blob: format.NewBlobStreamer(verifyReadBuffer), hash: sha256.New()}
}

func (v *verifier) putChecker(c *chunkChecker) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.idleCheckers = append(v.idleCheckers, c)
}

// errChunkRead marks a failed read, which is not the chunk's fault.
var errChunkRead = errors.New("read failed")

// checkChunk reads and checks one chunk. State 0 means an I/O error that is
// not the chunk's fault (the task fails rather than blaming the data).
func (v *verifier) checkChunk(ctx context.Context, r chunkRef, c *chunkChecker) (chunkState, string) {
	window := uint64(0)
	for attempt := 1; ; attempt++ {
		st, err := v.checkChunkOnce(ctx, r, c, window)
		switch {
		case errors.Is(err, format.ErrWindowTooLarge) && window < maxChunkWindow:
			// A later zstd frame wants more history than the first one:
			// once more with a decoder for the largest chunk window.
			window = maxChunkWindow
		case errors.Is(err, errChunkRead) && attempt < verifyReadAttempts && ctx.Err() == nil:
		case errors.Is(err, errChunkRead):
			return 0, fmt.Sprintf("read chunk %s: %v", r.digest, err)
		case err != nil:
			return chunkCorrupt, err.Error()
		default:
			return st, ""
		}
	}
}

// checkChunkOnce streams one chunk; minWindow forces a decoder at least
// that large. Errors are corruption unless they wrap errChunkRead.
func (v *verifier) checkChunkOnce(ctx context.Context, r chunkRef, c *chunkChecker, minWindow uint64) (chunkState, error) {
	rc, err := backend.Open(ctx, v.s.b, ChunkPath(r.digest))
	if errors.Is(err, fs.ErrNotExist) {
		return chunkMissing, nil
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errChunkRead, err)
	}
	defer rc.Close()
	readErr := func(err error) error {
		if rerr := c.blob.ReadError(); rerr != nil {
			return fmt.Errorf("%w: %w", errChunkRead, rerr)
		}
		return err
	}
	kind, err := c.blob.Open(rc)
	if err != nil {
		return 0, readErr(err)
	}
	// One byte more than the index promises is enough to tell a size
	// mismatch, without decoding whatever a damaged frame expands to.
	limit := int64(min(r.size, format.MaxBlobSize)) + 1
	c.hash.Reset()
	var n int64
	switch {
	case kind.IsEncrypted():
		// No keys: the CRC is all that can be checked.
		if _, err := c.blob.Copy(io.Discard, format.MaxBlobSize); err != nil {
			return 0, readErr(err)
		}
		return chunkEncrypted, nil
	case kind.IsCompressed():
		window, err := c.blob.FrameWindow()
		if err != nil {
			return 0, readErr(err)
		}
		if window > maxChunkWindow {
			return 0, readErr(fmt.Errorf("zstd frame declares a %d-byte window, more than any chunk needs", window))
		}
		dec, err := v.decoders.get(ctx, max(window, minWindow))
		if err != nil {
			return 0, fmt.Errorf("%w: %w", errChunkRead, err)
		}
		n, err = c.blob.Decode(dec, c.hash, limit)
		v.decoders.put(dec)
		if err != nil {
			return 0, readErr(err)
		}
	default:
		if n, err = c.blob.Copy(c.hash, limit); err != nil {
			return 0, readErr(err)
		}
	}
	if Digest(c.hash.Sum(c.sum[:0])) != r.digest {
		return 0, errors.New("SHA-256 differs from the chunk's name")
	}
	if uint64(n) != r.size {
		return 0, fmt.Errorf("%d bytes, the index says %d", n, r.size)
	}
	return chunkOK, nil
}
