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
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

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
	// Sample (1..99) checks only the chunks in this run's window of the
	// scope's sample rotation, about Sample %; 0 or 100 checks all.
	Sample int
	// MaxDuration > 0 starts no snapshot after it; the rest is skipped
	// and the next verify of the scope resumes (DESIGN §4.5).
	MaxDuration time.Duration
	// Clock replaces time.Now for MaxDuration (tests stop runs with it).
	Clock func() time.Time
	// Share, when set, shares chunk verdicts with the other shards of a
	// sharded job (nil: this task's own set).
	Share ChunkShare
}

func (r VerifyRequest) validate() error {
	switch {
	case r.Sample < 0 || r.Sample > 100:
		return invalidf("sample %d: must be 1..100 percent", r.Sample)
	case r.MaxDuration < 0:
		return invalidf("max-duration %s: must be positive", r.MaxDuration)
	case r.Sample > 0 && r.Sample < 100 && r.ReadOnly:
		return invalidf("sample %d with read-only: a sampled verify records its rotation in the store", r.Sample)
	case r.Share != nil && ((r.Sample > 0 && r.Sample < 100) || r.MaxDuration > 0):
		return invalidf("sample or max-duration in a shard: each shard would advance the scope's rotation and resume records alone")
	}
	return nil
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
	// NotReached counts the snapshots a time-boxed run did not reach.
	NotReached int `json:"not-reached,omitempty"`
	// Resumed counts the snapshots an interrupted run of the job checked.
	Resumed int           `json:"resumed,omitempty"`
	Sample  *SampleResult `json:"sample,omitempty"`
}

// Add adds o's counts and lists to r: the sum of the shards of a job.
// Seconds, MiBPerSecond and Sample describe a whole run (a sampled run is
// never sharded) and are left to whoever ran it.
func (r *VerifyResult) Add(o *VerifyResult) {
	r.Snapshots += o.Snapshots
	r.OK += o.OK
	r.Failed = append(r.Failed, o.Failed...)
	r.Skipped = append(r.Skipped, o.Skipped...)
	r.Unfinished = append(r.Unfinished, o.Unfinished...)
	r.AlreadyVerified += o.AlreadyVerified
	r.Chunks += o.Chunks
	r.ChunksCorrupt += o.ChunksCorrupt
	r.ChunksMissing += o.ChunksMissing
	r.ChunksEncrypted += o.ChunksEncrypted
	r.RenamedBad = append(r.RenamedBad, o.RenamedBad...)
	r.Bytes += o.Bytes
	r.NotReached += o.NotReached
	r.Resumed += o.Resumed
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

// chunkVerdict is a checked chunk's state and, when good, its decoded
// length (at most 16 MiB), which every index listing it must agree with.
type chunkVerdict struct {
	st   chunkState
	size uint32
}

// verifier holds one task's state: the chunks already checked.
type verifier struct {
	s       *Store
	req     VerifyRequest
	res     *VerifyResult
	rep     *reporter
	start   time.Time
	mu      sync.Mutex
	checked map[Digest]chunkVerdict
	reasons map[Digest]string
	workers int
	plan    *verifyPlan

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
		checked: map[Digest]chunkVerdict{},
		reasons: map[Digest]string{},
		workers: runtime.GOMAXPROCS(0),

		decoders: newDecoderPool(verifyDecodeBudget),
	}
	defer v.decoders.close()
	if err := req.validate(); err != nil {
		return nil, err
	}
	if !req.ReadOnly {
		if _, err := s.beginWrite(ctx, false); err != nil {
			return nil, err
		}
	}
	var err error
	if v.plan, err = s.newVerifyPlan(ctx, req, v.start); err != nil {
		return nil, err
	}
	snaps, err := s.scopeSnapshots(ctx, req.Scope)
	if err != nil {
		return nil, err
	}
	for _, c := range v.plan.preload() {
		v.checked[c.digest] = chunkVerdict{st: chunkOK, size: c.size}
	}
	v.rep = newReporter(progress, "verify", int64(len(snaps)))
	s.obs.logf("verify datastore %s: %d snapshot(s) in scope", s.name, len(snaps))
	if v.plan.sample {
		s.obs.logf("sampled verify: %d%% of the chunks (buckets %d..%d of 100), rotation started %s",
			req.Sample, v.plan.from, (v.plan.from+v.plan.width-1)%sampleBuckets, v.plan.rot.Started.Format(time.RFC3339))
	}
	finished := 0
	err = busyRetry[SnapshotInfo]{
		run: func(ctx context.Context, sn SnapshotInfo) error {
			if v.plan.timeUp() {
				return errTimeBox
			}
			if v.plan.done(sn.Snapshot) {
				v.res.Resumed++
				return nil
			}
			return v.snapshot(ctx, sn)
		},
		aside: func(sn SnapshotInfo, busy error) {
			s.obs.logf("%s busy, retried at the end: %v", snapRef(sn.Snapshot), busy)
		},
		skip: func(sn SnapshotInfo, busy error) {
			v.res.Skipped = append(v.res.Skipped, Skipped{Item: snapshotLabel(sn.Snapshot), Reason: busy.Error()})
			s.obs.skipped("verify", "busy")
			s.obs.logf("skipped %s: busy: %v", snapRef(sn.Snapshot), busy)
		},
		done: func(SnapshotInfo) { finished++; v.rep.add(1) },
	}.do(ctx, snaps)
	if errors.Is(err, errTimeBox) {
		// Snapshots set aside as busy and not retried count as not reached.
		v.notReached(len(snaps) - finished)
		err = nil
	}
	if err != nil {
		return v.res, err
	}
	if err := s.finishVerifyPlan(ctx, req, v.plan, v.checked, v.res, time.Now()); err != nil {
		return v.res, err
	}
	v.res.Seconds = time.Since(v.start).Seconds()
	if v.res.Seconds > 0 {
		v.res.MiBPerSecond = float64(v.res.Bytes) / (1 << 20) / v.res.Seconds
	}
	v.rep.finish()
	s.obs.logf("verify summary: %d snapshot(s) checked, %d ok, %d failed, %d already verified, %d skipped, %d unfinished; %d chunk(s), %d bytes",
		v.res.Snapshots, v.res.OK, len(v.res.Failed), v.res.AlreadyVerified, len(v.res.Skipped), len(v.res.Unfinished), v.res.Chunks, v.res.Bytes)
	return v.res, nil
}

// notReached reports the n snapshots a time-boxed run did not reach.
func (v *verifier) notReached(n int) {
	v.res.NotReached += n
	v.res.Skipped = append(v.res.Skipped, Skipped{Item: fmt.Sprintf("%d snapshot(s)", n),
		Reason: fmt.Sprintf("max-duration %s reached; the next verify of this scope resumes", v.req.MaxDuration)})
	v.s.obs.skipped("verify", "max-duration")
	v.s.obs.logf("max-duration %s reached: %d snapshot(s) not reached, left for the next verify of this scope", v.req.MaxDuration, n)
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

// snapshot verifies one snapshot; an error wrapping lock.ErrBusy means it
// was locked (busyRetry sets it aside).
func (v *verifier) snapshot(ctx context.Context, sn SnapshotInfo) error {
	label := snapshotLabel(sn.Snapshot)
	if !sn.Finished {
		v.res.Unfinished = append(v.res.Unfinished, label)
		v.s.obs.logf("skipped %s: unfinished (no manifest)", snapRef(sn.Snapshot))
		return nil
	}
	ctx, release, err := hold(ctx, v.s.on(
		v.s.nsRequest(sn.NS, lock.Shared),
		v.s.snapshotRequest(sn.Snapshot, lock.Shared),
	)...)
	if err != nil {
		return err
	}
	defer release()

	m, err := v.s.ReadManifest(ctx, sn.Snapshot)
	if errors.Is(err, fs.ErrNotExist) {
		// Removed (pruned, moved) since it was listed: nothing to verify.
		v.s.obs.logf("skipped %s: removed since it was listed", snapRef(sn.Snapshot))
		return nil
	}
	if err != nil {
		v.fail(sn.Snapshot, []string{err.Error()})
		v.s.obs.logf("verify %s: FAILED: %v", snapRef(sn.Snapshot), err)
		return nil
	}
	if !v.wantVerify(m) {
		v.res.AlreadyVerified++
		v.s.obs.logf("skipped %s: already verified (%s)", snapRef(sn.Snapshot), m.VerifyState().State)
		return nil
	}
	v.res.Snapshots++
	reasons, err := v.files(ctx, sn.Snapshot, m)
	if errors.Is(err, errTimeBox) {
		v.res.Snapshots-- // not finished: the next run checks it
		return err
	}
	if err != nil {
		return err
	}
	state := format.VerifyOK
	if len(reasons) > 0 {
		state = format.VerifyFailed
		v.fail(sn.Snapshot, reasons)
		v.s.obs.logf("verify %s: FAILED: %s", snapRef(sn.Snapshot), strings.Join(reasons, "; "))
	} else {
		v.res.OK++
		v.s.obs.logf("verify %s: ok", snapRef(sn.Snapshot))
	}
	if v.req.ReadOnly {
		v.plan.checked(sn.Snapshot, len(reasons) == 0)
		return nil
	}
	if len(reasons) == 0 && !v.plan.recordOK(sn.Snapshot) {
		// Sampled: ok is recorded once the rotation has checked it all.
		v.plan.unrecorded++
		v.plan.checked(sn.Snapshot, true)
		return nil
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
		v.s.obs.logf("skipped recording the verify state of %s: busy: %v", snapRef(sn.Snapshot), err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("record verify state of %s: %w", label, err)
	}
	v.plan.checked(sn.Snapshot, len(reasons) == 0)
	return nil
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
		if !isBlobFile(f.Filename) {
			r, why, err := v.indexRefs(ctx, sn, f, seen)
			if err != nil {
				return nil, err
			}
			if why != "" {
				reasons = append(reasons, why)
			}
			refs = append(refs, r...)
			continue
		}
		raw, err := v.s.b.ReadFile(ctx, sn.File(f.Filename))
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			reasons = append(reasons, fmt.Sprintf("%s: %v", f.Filename, err))
			continue
		}
		if uint64(len(raw)) != f.Size || sha256.Sum256(raw) != f.Csum {
			reasons = append(reasons, fmt.Sprintf("%s: checksum or size differs from the manifest", f.Filename))
		} else if _, err := format.InspectBlob(raw); err != nil && !errors.Is(err, format.ErrEncrypted) {
			reasons = append(reasons, fmt.Sprintf("%s: %v", f.Filename, err))
		}
		v.res.Bytes += int64(len(raw))
	}
	bad, err := v.chunks(ctx, refs)
	if err != nil {
		return nil, err
	}
	return append(reasons, bad...), nil
}

// chunks checks the chunks not yet checked by this task on all cores and
// returns a reason for every bad chunk among refs (checked now or before).
func (v *verifier) chunks(ctx context.Context, refs []chunkRef) ([]string, error) {
	var todo []chunkRef
	v.mu.Lock()
	for _, r := range refs {
		if _, ok := v.checked[r.digest]; !ok && v.plan.wantChunk(r.digest) {
			todo = append(todo, r)
		}
	}
	v.mu.Unlock()
	// Chunk files sit in digest order in their prefix directories; reading
	// in that order keeps a filesystem's directory and inode access local.
	sort.Slice(todo, func(i, j int) bool { return bytes.Compare(todo[i].digest[:], todo[j].digest[:]) < 0 })
	todo, later, err := v.claimShared(ctx, todo)
	if err != nil {
		return nil, err
	}

	// A read error fails the task, but does not stop the other checks: the
	// chunks handed out are all checked, and the first error is returned.
	checks := new(errgroup.Group)
	checks.SetLimit(max(v.workers, 1))
	stopped := false
	for _, r := range todo {
		if ctx.Err() != nil {
			break
		}
		if stopped = v.plan.timeUp(); stopped {
			break
		}
		checks.Go(func() error { return v.checkOne(ctx, r) })
	}
	firstErr := checks.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if firstErr != nil {
		return nil, firstErr
	}
	if stopped {
		return nil, errTimeBox
	}
	if err := v.shareVerdicts(ctx, todo, later); err != nil {
		return nil, err
	}
	var reasons []string
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, r := range refs {
		switch c := v.checked[r.digest]; c.st {
		case chunkOK:
			if uint64(c.size) != r.size {
				reasons = append(reasons, sizeMismatch(r, int64(c.size)))
			}
		case chunkEncrypted:
		case 0: // outside this sampled run's window
		default:
			reasons = append(reasons, fmt.Sprintf("chunk %s %s: %s", r.digest, c.st, v.reasons[r.digest]))
		}
	}
	return reasons, nil
}

// checkOne checks a chunk, renames it when corrupt (unless read-only) and
// records the verdict; an I/O error that is not the chunk's fault is
// returned instead.
func (v *verifier) checkOne(ctx context.Context, r chunkRef) error {
	c := v.checker()
	defer v.putChecker(c)
	st, n, err := v.checkChunk(ctx, r, c)
	if st == 0 {
		return err
	}
	var why string
	if err != nil {
		why = err.Error()
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
	v.record(r, st, why, n)
	return nil
}

func (v *verifier) record(r chunkRef, st chunkState, why string, size int64) {
	v.mu.Lock()
	v.checked[r.digest] = chunkVerdict{st: st, size: uint32(size)}
	if why != "" {
		v.reasons[r.digest] = why
	}
	v.res.Chunks++
	switch st {
	case chunkCorrupt:
		v.res.ChunksCorrupt++
		v.s.obs.logf("chunk %s corrupt: %s", r.digest, why)
	case chunkMissing:
		v.res.ChunksMissing++
		v.s.obs.logf("chunk %s missing: %s", r.digest, why)
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

// checkChunk reads and checks one chunk; the error says what is wrong with
// it. State 0 means an I/O error that is not the chunk's fault (the task
// fails with it rather than blaming the data). A good chunk's decoded length
// is returned for the indexes to be compared.
func (v *verifier) checkChunk(ctx context.Context, r chunkRef, c *chunkChecker) (chunkState, int64, error) {
	open := func() (io.ReadCloser, error) { return backend.Open(ctx, v.s.b, ChunkPath(r.digest)) }
	for attempt := 1; ; attempt++ {
		st, n, err := checkChunkStream(ctx, v.decoders, c, open, r)
		switch {
		case errors.Is(err, errChunkRead) && attempt < verifyReadAttempts && ctx.Err() == nil:
		case errors.Is(err, errChunkRead):
			return 0, 0, fmt.Errorf("read chunk %s: %w", r.digest, err)
		case err != nil:
			return chunkCorrupt, 0, err
		default:
			return st, n, nil
		}
	}
}

// claimShared splits todo into the chunks to check here and those another
// shard of the job is checking (later); verdicts other shards published
// are taken as they are. Without a Share, all are to check here.
func (v *verifier) claimShared(ctx context.Context, todo []chunkRef) (mine, later []chunkRef, err error) {
	if v.req.Share == nil || len(todo) == 0 {
		return todo, nil, nil
	}
	ds := make([]Digest, len(todo))
	for i, r := range todo {
		ds[i] = r.digest
	}
	cl, err := v.req.Share.Claim(ctx, ds)
	if err != nil {
		return nil, nil, fmt.Errorf("verify: shared chunk ledger: %w", err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for i, c := range cl {
		switch {
		case c.Mine:
			mine = append(mine, todo[i])
		case c.Done:
			v.checked[todo[i].digest] = chunkVerdict{st: chunkState(c.Verdict.Code), size: c.Verdict.Size}
			if c.Verdict.Reason != "" {
				v.reasons[todo[i].digest] = c.Verdict.Reason
			}
		default:
			later = append(later, todo[i])
		}
	}
	return mine, later, nil
}

// shareVerdicts gives the job's other shards the verdicts of the chunks
// checked here, then waits for those of the chunks they are checking
// (checking here any whose shard died), so that every verdict a snapshot
// needs is known before its verify_state is recorded.
func (v *verifier) shareVerdicts(ctx context.Context, done, later []chunkRef) error {
	if v.req.Share == nil {
		return nil
	}
	if len(done) > 0 {
		vs := make([]SharedVerdict, 0, len(done))
		v.mu.Lock()
		for _, r := range done {
			if c, ok := v.checked[r.digest]; ok {
				vs = append(vs, SharedVerdict{Digest: r.digest, Code: uint8(c.st), Size: c.size, Reason: v.reasons[r.digest]})
			}
		}
		v.mu.Unlock()
		if err := v.req.Share.Publish(ctx, vs); err != nil {
			return fmt.Errorf("verify: shared chunk ledger: %w", err)
		}
	}
	for len(later) > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(sharePoll):
		}
		mine, rest, err := v.claimShared(ctx, later)
		if err != nil {
			return err
		}
		if len(mine) > 0 {
			// Claims of a shard that died, now this one's: check them
			// (and wait for the rest) as any.
			_, err := v.chunks(ctx, later)
			return err
		}
		later = rest
	}
	return nil
}
