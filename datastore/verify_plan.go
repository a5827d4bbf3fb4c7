package datastore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/name"
)

// Sampled and time-boxed verify (DESIGN §4.5). Two small records per scope
// live under .pbsq/, so every host sees them:
//
//	.pbsq/verify-rotation/<scope hash>.json  where a sampled rotation stands
//	.pbsq/verify-resume/<scope hash>.json    what a time-boxed run finished
//
// A chunk's place in the rotation is a bucket 0..99 taken from its digest.
// Each sampled run of P % checks the P buckets after the rotation's next
// one, so ceil(100/P) runs cover every bucket; the run that covers the last
// bucket completes the rotation and the next run starts a new one.
const (
	verifyRotationDir = ".pbsq/verify-rotation"
	verifyResumeDir   = ".pbsq/verify-resume"

	// maxVerifyRecord bounds the read of either record; the lists below
	// keep a written record under it.
	maxVerifyRecord = 24 << 20
	// maxRecordSnapshots bounds a list of snapshot hashes (8 bytes each).
	maxRecordSnapshots = 500_000
	// maxRecordChunks bounds a resume record's chunk list (36 bytes each);
	// beyond it the record keeps the snapshots only.
	maxRecordChunks = 200_000
	// verifyResumeMaxAge: an older resume record is discarded, so a job
	// never counts chunks checked longer ago than that as checked.
	verifyResumeMaxAge = 7 * 24 * time.Hour

	verifyRecordVersion = 1
	sampleBuckets       = 100
)

// chunkBucket places a chunk in the rotation: digests are uniform, so each
// bucket holds about 1 % of the chunks.
func chunkBucket(d Digest) int {
	hi, _ := bits.Mul64(binary.BigEndian.Uint64(d[:8]), sampleBuckets)
	return int(hi)
}

// scopeKey names a scope canonically; the records are keyed by its hash.
func scopeKey(sc Scope) string {
	k := "ns=" + sc.NS.String() + " depth=" + strconv.Itoa(sc.MaxDepth)
	if sc.Group != nil {
		k += " group=" + sc.Group.String()
	}
	if sc.Snapshot != nil {
		k += " snapshot=" + sc.Snapshot.String()
	}
	return k
}

func verifyRecordPath(dir string, sc Scope) string {
	h := sha256.Sum256([]byte(scopeKey(sc)))
	return backend.Join(dir, hex.EncodeToString(h[:16])+".json")
}

// snapHash identifies a snapshot in the records.
func snapHash(sn name.Snapshot) uint64 {
	h := sha256.Sum256([]byte(sn.NS.String() + ":" + sn.String()))
	return binary.BigEndian.Uint64(h[:8])
}

// hashList is a sorted set of snapshot hashes, stored as base64 of their
// big-endian bytes (compact: ~11 bytes a snapshot).
type hashList []uint64

func (l hashList) has(h uint64) bool {
	_, ok := slices.BinarySearch(l, h)
	return ok
}

func (l hashList) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 8*len(l))
	for _, h := range l {
		b = binary.BigEndian.AppendUint64(b, h)
	}
	return json.Marshal(base64.StdEncoding.EncodeToString(b))
}

func (l *hashList) UnmarshalJSON(data []byte) error {
	b, err := decodeList(data, 8, maxRecordSnapshots)
	if err != nil {
		return err
	}
	out := make(hashList, 0, len(b)/8)
	for i := 0; i < len(b); i += 8 {
		h := binary.BigEndian.Uint64(b[i:])
		if len(out) > 0 && h <= out[len(out)-1] {
			return errors.New("snapshot list not sorted")
		}
		out = append(out, h)
	}
	*l = out
	return nil
}

func decodeList(data []byte, size, maxN int) ([]byte, error) {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, err
	}
	if base64.StdEncoding.DecodedLen(len(s)) > size*maxN+size {
		return nil, fmt.Errorf("list longer than %d entries", maxN)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, err
	}
	if len(b)%size != 0 || len(b)/size > maxN {
		return nil, fmt.Errorf("list of %d bytes: not a list of at most %d %d-byte entries", len(b), maxN, size)
	}
	return b, nil
}

// union returns the sorted union of two sets.
func (l hashList) union(o hashList) hashList {
	out := slices.Concat(l, o)
	slices.Sort(out)
	return slices.Compact(out)
}

// intersect returns the elements of l also in o.
func (l hashList) intersect(o hashList) hashList {
	out := hashList{}
	for _, h := range l {
		if o.has(h) {
			out = append(out, h)
		}
	}
	return out
}

// goodChunk is a chunk a time-boxed run found good, with its length.
type goodChunk struct {
	digest Digest
	size   uint32
}

// chunkList is a sorted set of good chunks, base64 of digest ‖ size LE.
type chunkList []goodChunk

func (l chunkList) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 36*len(l))
	for _, c := range l {
		b = append(b, c.digest[:]...)
		b = binary.LittleEndian.AppendUint32(b, c.size)
	}
	return json.Marshal(base64.StdEncoding.EncodeToString(b))
}

func (l *chunkList) UnmarshalJSON(data []byte) error {
	b, err := decodeList(data, 36, maxRecordChunks)
	if err != nil {
		return err
	}
	out := make(chunkList, 0, len(b)/36)
	for i := 0; i < len(b); i += 36 {
		var c goodChunk
		copy(c.digest[:], b[i:i+32])
		c.size = binary.LittleEndian.Uint32(b[i+32:])
		if c.size > dynMaxChunk {
			return fmt.Errorf("chunk %s: length %d exceeds the largest chunk", c.digest, c.size)
		}
		if len(out) > 0 && bytes.Compare(c.digest[:], out[len(out)-1].digest[:]) <= 0 {
			return errors.New("chunk list not sorted")
		}
		out = append(out, c)
	}
	*l = out
	return nil
}

// recordHeader is what both verify records hold: the format version, the
// scope they are of, and when their first run started and the last one
// wrote them.
type recordHeader struct {
	Version int       `json:"version"`
	Scope   string    `json:"scope"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
}

func newRecordHeader(scope string, started, updated time.Time) recordHeader {
	return recordHeader{Version: verifyRecordVersion, Scope: scope, Started: started, Updated: updated}
}

func (h *recordHeader) validate(scope string) error {
	switch {
	case h.Version != verifyRecordVersion:
		return fmt.Errorf("version %d", h.Version)
	case h.Scope != scope:
		return fmt.Errorf("scope %q, not %q", h.Scope, scope)
	case h.Started.IsZero() || h.Updated.IsZero():
		return errors.New("no start or update time")
	}
	return nil
}

// rotationRecord is where a scope's sampled rotation stands; Started is
// when the rotation's first run started.
type rotationRecord struct {
	recordHeader
	// Next is the first bucket of the next run's window.
	Next int `json:"next"`
	// Covered is how many buckets the rotation's finished runs covered;
	// 100: complete, the next run starts a new rotation.
	Covered int `json:"covered"`
	Runs    int `json:"runs"`
	// Members are the snapshots that passed every finished run of the
	// rotation: the ones whose every chunk will have been checked when it
	// completes. Overflow: too many to keep; none is recorded as ok.
	Members  hashList `json:"members"`
	Overflow bool     `json:"overflow,omitempty"`
}

func (r *rotationRecord) validate(scope string) error {
	if err := r.recordHeader.validate(scope); err != nil {
		return err
	}
	if r.Next < 0 || r.Next >= sampleBuckets || r.Covered < 0 || r.Covered > sampleBuckets {
		return fmt.Errorf("next %d, covered %d: out of range", r.Next, r.Covered)
	}
	return nil
}

// resumeRecord is what a time-boxed run finished, for the next run of the
// same scope and mode.
type resumeRecord struct {
	recordHeader
	// Mode is "full" or the sample window ("sample <from>+<width>").
	Mode   string    `json:"mode"`
	Passed hashList  `json:"passed"`
	Failed hashList  `json:"failed"`
	Chunks chunkList `json:"chunks"`
}

func (r *resumeRecord) validate(scope string) error {
	if err := r.recordHeader.validate(scope); err != nil {
		return err
	}
	if len(r.Mode) > 64 {
		return errors.New("mode too long")
	}
	return nil
}

// decodeVerifyRecord decodes either record strictly.
func decodeVerifyRecord(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// readVerifyRecord reads a record; a missing one is (false, nil), an
// unreadable one a warning and (false, nil): it is rewritten or removed
// at the end of the run, and the worst it costs is checking more.
func (s *Store) readVerifyRecord(ctx context.Context, path, scope string, v interface{ validate(string) error }) (bool, error) {
	data, err := backend.ReadFileMax(ctx, s.b, path, maxVerifyRecord)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err == nil {
		if err = decodeVerifyRecord(data, v); err == nil {
			err = v.validate(scope)
		}
	}
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err != nil {
		s.log.Warn("verify record ignored", "store", s.name, "file", path, "err", err)
		s.obs.logf("verify record %s ignored: %v", path, err)
		return false, nil
	}
	return true, nil
}

func (s *Store) writeVerifyRecord(ctx context.Context, path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := s.b.WriteFile(ctx, path, data); err != nil {
		return fmt.Errorf("verify record %s: %w", path, err)
	}
	return nil
}

func (s *Store) removeVerifyRecord(ctx context.Context, path string) error {
	err := s.b.Remove(ctx, path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("verify record %s: %w", path, err)
	}
	return nil
}

// SampleResult describes a sampled run's place in its rotation.
type SampleResult struct {
	Percent int `json:"percent"`
	// From and Width are the run's bucket window (of 100).
	From  int `json:"from"`
	Width int `json:"width"`
	// Coverage is the share of the chunks the rotation has checked after
	// this run (1 when this run completed it).
	Coverage        float64   `json:"coverage"`
	RotationStarted time.Time `json:"rotation-started"`
	// Completed: this run completed the rotation; the snapshots checked
	// in every run of it were recorded as verified ok.
	Completed bool `json:"completed"`
	// Unrecorded counts snapshots that passed this run but are not yet
	// recorded as verified (their rotation is not complete).
	Unrecorded int `json:"unrecorded"`
}

// verifyPlan is a run's sampling window, time box and resume state.
type verifyPlan struct {
	scope      string
	sample     bool
	from       int
	width      int
	complete   bool // this window completes the rotation
	rot        rotationRecord
	resume     resumeRecord // what earlier interrupted runs finished
	resumed    bool
	deadline   time.Time
	clock      func() time.Time
	stopped    bool // the time box ended the run
	unrecorded int
	passed     hashList
	failed     hashList
}

// mode names the run's selection; a resume record applies only to a run
// of the same mode.
func (p *verifyPlan) mode() string {
	if !p.sample {
		return "full"
	}
	return fmt.Sprintf("sample %d+%d", p.from, p.width)
}

// newVerifyPlan reads the records of req's scope.
func (s *Store) newVerifyPlan(ctx context.Context, req VerifyRequest, start time.Time) (*verifyPlan, error) {
	p := &verifyPlan{scope: scopeKey(req.Scope), clock: req.Clock}
	if p.clock == nil {
		p.clock = time.Now
	}
	if req.MaxDuration > 0 {
		p.deadline = p.clock().Add(req.MaxDuration)
	}
	if req.Sample > 0 && req.Sample < 100 {
		p.sample = true
		p.width = req.Sample
		ok, err := s.readVerifyRecord(ctx, verifyRecordPath(verifyRotationDir, req.Scope), p.scope, &p.rot)
		if err != nil {
			return nil, err
		}
		if !ok || p.rot.Covered >= sampleBuckets {
			next := 0
			if ok {
				next = p.rot.Next // a completed rotation: the next one goes on from there
			}
			p.rot = rotationRecord{recordHeader: newRecordHeader(p.scope, start.UTC(), time.Time{}), Next: next, Members: hashList{}}
		}
		p.from = p.rot.Next
		p.complete = p.rot.Covered+p.width >= sampleBuckets
	}
	if req.ReadOnly {
		return p, nil
	}
	ok, err := s.readVerifyRecord(ctx, verifyRecordPath(verifyResumeDir, req.Scope), p.scope, &p.resume)
	if err != nil {
		return nil, err
	}
	switch {
	case !ok:
	case p.resume.Mode != p.mode():
		s.obs.logf("resume record of an earlier %s run discarded: this run is %s", p.resume.Mode, p.mode())
	case start.Sub(p.resume.Updated) > verifyResumeMaxAge:
		s.obs.logf("resume record of %s discarded: older than %s", p.resume.Updated.Format(time.RFC3339), verifyResumeMaxAge)
	default:
		p.resumed = true
		s.obs.logf("resuming the verify of %s interrupted at %s: %d snapshot(s) and %d chunk(s) already checked",
			p.scope, p.resume.Updated.Format(time.RFC3339), len(p.resume.Passed)+len(p.resume.Failed), len(p.resume.Chunks))
	}
	if !p.resumed {
		p.resume = resumeRecord{}
	}
	return p, nil
}

// wantChunk: is the chunk in this run's sample window?
func (p *verifyPlan) wantChunk(d Digest) bool {
	if p == nil || !p.sample {
		return true
	}
	return (chunkBucket(d)-p.from+sampleBuckets)%sampleBuckets < p.width
}

// errTimeBox stops a snapshot's chunks when the time box ends; the chunks
// checked so far go into the resume record, so stopping loses no work.
var errTimeBox = errors.New("max-duration reached")

// timeUp: has the time box ended? Checked before each snapshot and each
// chunk handed to the checkers, so a run overruns its bound by the chunks
// in flight (one per core), never by more than one snapshot.
func (p *verifyPlan) timeUp() bool {
	if p == nil || p.deadline.IsZero() {
		return false
	}
	if !p.stopped && !p.clock().Before(p.deadline) {
		p.stopped = true
	}
	return p.stopped
}

// done: did an interrupted run of this job finish the snapshot?
func (p *verifyPlan) done(sn name.Snapshot) bool {
	if p == nil || !p.resumed {
		return false
	}
	h := snapHash(sn)
	return p.resume.Passed.has(h) || p.resume.Failed.has(h)
}

// checked records a snapshot's verdict for the records.
func (p *verifyPlan) checked(sn name.Snapshot, ok bool) {
	if ok {
		p.passed = append(p.passed, snapHash(sn))
	} else {
		p.failed = append(p.failed, snapHash(sn))
	}
}

// recordOK: may a passed snapshot be recorded as verified ok? In a sampled
// run only when this run completes the rotation and the snapshot passed
// every earlier run of it.
func (p *verifyPlan) recordOK(sn name.Snapshot) bool {
	if p == nil || !p.sample {
		return true
	}
	if !p.complete || p.rot.Overflow {
		return false
	}
	return p.rot.Covered == 0 || p.rot.Members.has(snapHash(sn))
}

// preload returns the good chunks an interrupted run of this job checked.
func (p *verifyPlan) preload() chunkList {
	if p == nil || !p.resumed {
		return nil
	}
	return p.resume.Chunks
}

// finish writes the records: after a time-boxed stop the resume record
// (with the good chunks checked, while they fit); after a whole run the
// resume record is removed and a sampled run advances its rotation.
func (s *Store) finishVerifyPlan(ctx context.Context, req VerifyRequest, p *verifyPlan, checked map[Digest]chunkVerdict, res *VerifyResult, now time.Time) error {
	slices.Sort(p.passed)
	slices.Sort(p.failed)
	passed := slices.Compact(p.passed)
	failed := slices.Compact(p.failed)
	if p.resumed {
		passed = passed.union(p.resume.Passed)
		failed = failed.union(p.resume.Failed)
	}
	if p.sample {
		cov := p.rot.Covered + p.width
		if p.stopped {
			cov = p.rot.Covered
		}
		res.Sample = &SampleResult{Percent: req.Sample, From: p.from, Width: p.width,
			Coverage: float64(min(cov, sampleBuckets)) / sampleBuckets, RotationStarted: p.rot.Started,
			Completed: p.complete && !p.stopped, Unrecorded: p.unrecorded}
	}
	if req.ReadOnly {
		return nil
	}
	resumePath := verifyRecordPath(verifyResumeDir, req.Scope)
	if p.stopped {
		rec := resumeRecord{recordHeader: newRecordHeader(p.scope, now.UTC(), now.UTC()), Mode: p.mode(),
			Passed: passed, Failed: failed, Chunks: chunkList{}}
		if p.resumed {
			rec.Started = p.resume.Started
		}
		if len(passed) > maxRecordSnapshots || len(failed) > maxRecordSnapshots {
			s.obs.logf("too many snapshots to record for resuming; the next run starts over")
			return s.removeVerifyRecord(ctx, resumePath)
		}
		if len(checked) <= maxRecordChunks {
			for d, c := range checked {
				if c.st == chunkOK {
					rec.Chunks = append(rec.Chunks, goodChunk{digest: d, size: c.size})
				}
			}
			slices.SortFunc(rec.Chunks, func(a, b goodChunk) int { return bytes.Compare(a.digest[:], b.digest[:]) })
		}
		return s.writeVerifyRecord(ctx, resumePath, &rec)
	}
	if err := s.removeVerifyRecord(ctx, resumePath); err != nil {
		return err
	}
	if !p.sample {
		return nil
	}
	r := p.rot
	r.Updated = now.UTC()
	r.Runs++
	if p.complete {
		s.obs.logf("sample rotation of %s started %s completed in %d run(s)", p.scope, r.Started.Format(time.RFC3339), r.Runs)
		r.Covered, r.Members = sampleBuckets, hashList{}
	} else {
		// Members: snapshots that passed every run so far; failed ones
		// never are.
		if r.Covered == 0 {
			r.Members = passed
		} else {
			r.Members = r.Members.intersect(passed)
		}
		r.Covered += p.width
		if len(r.Members) > maxRecordSnapshots {
			r.Members, r.Overflow = hashList{}, true
		}
	}
	r.Next = (p.from + p.width) % sampleBuckets
	return s.writeVerifyRecord(ctx, verifyRecordPath(verifyRotationDir, req.Scope), &r)
}

// VerifySampleCoverage returns the coverage (0..1) of the store's most
// recently advanced sample rotation; ok is false when there is none.
func (s *Store) VerifySampleCoverage(ctx context.Context) (coverage float64, ok bool, err error) {
	ents, err := s.b.List(ctx, verifyRotationDir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("verify rotations: %w", err)
	}
	var latest time.Time
	for _, fi := range ents {
		if fi.Dir || !strings.HasSuffix(fi.Name, ".json") || strings.HasPrefix(fi.Name, ".") {
			continue
		}
		data, err := backend.ReadFileMax(ctx, s.b, backend.Join(verifyRotationDir, fi.Name), maxVerifyRecord)
		if err != nil {
			continue
		}
		var r rotationRecord
		if decodeVerifyRecord(data, &r) != nil || r.validate(r.Scope) != nil {
			continue
		}
		if !ok || r.Updated.After(latest) {
			latest, ok = r.Updated, true
			coverage = float64(r.Covered) / sampleBuckets
		}
	}
	return coverage, ok, nil
}
