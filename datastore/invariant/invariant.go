// Package invariant checks what must hold of a datastore after any mix of
// operations, injected faults and crashes, independently of the operations
// under test (it reads through the backend and the format codecs only):
//
//   - every snapshot that should exist exists exactly once, finished, in
//     one of the namespaces it may be in, and every snapshot that should be
//     gone is gone;
//   - every file a finished snapshot's manifest lists is there and matches
//     it, and every chunk an index of a finished snapshot references exists
//     (and, with Deep, decodes and hashes to its name);
//   - optionally, Verify of the whole store finds nothing wrong.
//
// CheckFiles scans every file under a final name (no partial writes), and
// Audit checks a lock audit for overlaps the lock semantics forbid. Tests of
// several packages (datastore, worker, cmd/pbsq) share them.
package invariant

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/name"
)

// Key identifies a snapshot regardless of its namespace.
type Key struct {
	Type string
	ID   string
	Time int64 // Unix seconds
}

// KeyOf is the key of a snapshot.
func KeyOf(s name.Snapshot) Key {
	return Key{Type: string(s.Type), ID: s.ID, Time: s.Time.Unix()}
}

func (k Key) String() string {
	return fmt.Sprintf("%s/%s/%d", k.Type, k.ID, k.Time)
}

// Expect says which snapshots must exist, where, and which must be gone.
type Expect struct {
	// Present maps a snapshot to the namespaces it may be in: it must be
	// finished in exactly one place in the store, one of these.
	Present map[Key][]name.Namespace
	// Absent snapshots must not exist anywhere, finished or not.
	Absent map[Key]bool
	// Strict makes finished snapshots that are in neither set problems.
	Strict bool
	// AllowUnfinished tolerates unfinished snapshots (an interrupted
	// backup that nobody reran); otherwise each is a problem.
	AllowUnfinished bool
}

// NewExpect returns an empty Expect.
func NewExpect() *Expect {
	return &Expect{Present: map[Key][]name.Namespace{}, Absent: map[Key]bool{}}
}

// Want records that snap must exist exactly once, in one of nss (its own
// namespace when none are given).
func (e *Expect) Want(snap name.Snapshot, nss ...name.Namespace) {
	if len(nss) == 0 {
		nss = []name.Namespace{snap.NS}
	}
	k := KeyOf(snap)
	delete(e.Absent, k)
	e.Present[k] = nss
}

// Gone records that snap must no longer exist.
func (e *Expect) Gone(snap name.Snapshot) {
	k := KeyOf(snap)
	delete(e.Present, k)
	e.Absent[k] = true
}

// Options tune Check.
type Options struct {
	// Deep reads every referenced chunk, decodes it and compares its
	// SHA-256 with its name; otherwise chunks are only looked up.
	Deep bool
	// Verify runs the store's own Verify over everything as well (it
	// records verify_state in the manifests, so it changes them).
	Verify bool
}

// Report is what Check found.
type Report struct {
	Finished   int      // finished snapshots in the store
	Unfinished []string // "<ns>:<snapshot>"
	Chunks     int      // distinct chunks referenced and checked
	Problems   []string
}

// Err folds the problems into one error (nil when there are none).
func (r *Report) Err() error {
	if len(r.Problems) == 0 {
		return nil
	}
	shown := r.Problems[:min(len(r.Problems), 20)]
	more := ""
	if n := len(r.Problems) - len(shown); n > 0 {
		more = fmt.Sprintf("\n  ... and %d more", n)
	}
	return fmt.Errorf("%d invariant violation(s):\n  %s%s", len(r.Problems), strings.Join(shown, "\n  "), more)
}

func (r *Report) problem(format string, args ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

// Check examines the whole store against exp. The error is for I/O that
// prevented the check; what is wrong with the store is in the report.
func Check(ctx context.Context, s *datastore.Store, exp *Expect, opts Options) (*Report, error) {
	if exp == nil {
		exp = NewExpect()
	}
	r := &Report{}
	nss, err := s.ListNamespaces(ctx, name.Root, -1)
	if err != nil {
		return nil, fmt.Errorf("invariant: list namespaces: %w", err)
	}
	found := map[Key][]name.Namespace{}
	unfinished := map[Key][]name.Namespace{}
	var finished []name.Snapshot
	for _, ns := range nss {
		groups, err := s.ListGroups(ctx, ns)
		if err != nil {
			return nil, fmt.Errorf("invariant: %w", err)
		}
		for _, g := range groups {
			snaps, err := s.ListSnapshots(ctx, g)
			if err != nil {
				return nil, fmt.Errorf("invariant: %w", err)
			}
			for _, sn := range snaps {
				k := KeyOf(sn.Snapshot)
				if sn.Finished {
					found[k] = append(found[k], ns)
					finished = append(finished, sn.Snapshot)
				} else {
					unfinished[k] = append(unfinished[k], ns)
					r.Unfinished = append(r.Unfinished, ns.String()+":"+sn.Snapshot.String())
				}
			}
		}
	}
	r.Finished = len(finished)
	sort.Strings(r.Unfinished)

	// Placement.
	for _, k := range sortedKeys(exp.Present) {
		allowed := exp.Present[k]
		locs := found[k]
		switch {
		case len(locs) == 0:
			r.problem("snapshot %s lost: finished nowhere (unfinished in %q; may be in %q)", k, unfinished[k], allowed)
		case len(locs) > 1:
			r.problem("snapshot %s finished %d times, in %q (must be exactly once)", k, len(locs), locs)
		case !slices.Contains(allowed, locs[0]):
			r.problem("snapshot %s is in namespace %q, must be in one of %q", k, locs[0], allowed)
		}
	}
	for k := range exp.Absent {
		if len(found[k]) > 0 || len(unfinished[k]) > 0 {
			r.problem("snapshot %s should be gone, but is in %q (finished) %q (unfinished)", k, found[k], unfinished[k])
		}
	}
	if exp.Strict {
		for k, locs := range found {
			if _, ok := exp.Present[k]; !ok && !exp.Absent[k] {
				r.problem("unexpected snapshot %s in %q", k, locs)
			}
		}
	}
	if !exp.AllowUnfinished {
		for _, u := range r.Unfinished {
			r.problem("unfinished snapshot %s left behind", u)
		}
	}

	// Contents of every finished snapshot, and the chunks they need.
	refs := map[datastore.Digest]string{} // digest → first referrer
	for _, sn := range finished {
		if err := checkSnapshot(ctx, s, sn, refs, r); err != nil {
			return nil, err
		}
	}
	digests := make([]datastore.Digest, 0, len(refs))
	for d := range refs {
		digests = append(digests, d)
	}
	sort.Slice(digests, func(i, j int) bool { return bytes.Compare(digests[i][:], digests[j][:]) < 0 })
	r.Chunks = len(digests)
	if err := checkChunks(ctx, s, digests, refs, opts.Deep, r); err != nil {
		return nil, err
	}

	if opts.Verify {
		res, err := s.Verify(ctx, datastore.VerifyRequest{Scope: datastore.Scope{NS: name.Root, MaxDepth: -1}}, nil)
		if err != nil {
			return nil, fmt.Errorf("invariant: verify: %w", err)
		}
		for _, f := range res.Failed {
			r.problem("verify: %s:%s failed: %s", f.NS, f.Snapshot, strings.Join(f.Reasons, "; "))
		}
		for _, sk := range res.Skipped {
			r.problem("verify: %s skipped: %s", sk.Item, sk.Reason)
		}
		if res.OK != r.Finished {
			r.problem("verify: %d snapshot(s) ok, but %d are finished", res.OK, r.Finished)
		}
	}
	sort.Strings(r.Problems)
	return r, nil
}

func sortedKeys(m map[Key][]name.Namespace) []Key {
	keys := make([]Key, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	return keys
}

// checkSnapshot checks a finished snapshot's manifest and files and adds
// the chunks its indexes reference to refs.
func checkSnapshot(ctx context.Context, s *datastore.Store, sn name.Snapshot, refs map[datastore.Digest]string, r *Report) error {
	b := s.Backend()
	label := sn.NS.String() + ":" + sn.String()
	raw, err := b.ReadFile(ctx, sn.File(datastore.ManifestName))
	if errors.Is(err, fs.ErrNotExist) {
		r.problem("%s: manifest vanished during the check", label)
		return nil
	}
	if err != nil {
		return fmt.Errorf("invariant: %s: %w", label, err)
	}
	m, err := format.ParseManifest(raw)
	if err != nil {
		r.problem("%s: manifest: %v", label, err)
		return nil
	}
	if m.BackupType != string(sn.Type) || m.BackupID != sn.ID || m.BackupTime != sn.Time.Unix() {
		r.problem("%s: manifest names %s/%s/%d", label, m.BackupType, m.BackupID, m.BackupTime)
	}
	for _, f := range m.Files {
		data, err := b.ReadFile(ctx, sn.File(f.Filename))
		if errors.Is(err, fs.ErrNotExist) {
			r.problem("%s: %s listed in the manifest but missing", label, f.Filename)
			continue
		}
		if err != nil {
			return fmt.Errorf("invariant: %s/%s: %w", label, f.Filename, err)
		}
		if strings.HasSuffix(f.Filename, ".blob") {
			if uint64(len(data)) != f.Size || sha256.Sum256(data) != f.Csum {
				r.problem("%s: %s differs from the manifest (size or SHA-256)", label, f.Filename)
			}
			continue
		}
		idx, err := format.ParseIndex(f.Filename, data)
		if err != nil {
			r.problem("%s: %s: %v", label, f.Filename, err)
			continue
		}
		if idx.Checksum() != f.Csum || idx.DataSize() != f.Size {
			r.problem("%s: %s differs from the manifest (index checksum or size)", label, f.Filename)
			continue
		}
		for i := 0; i < idx.ChunkCount(); i++ {
			d := datastore.Digest(idx.ChunkDigest(i))
			if _, ok := refs[d]; !ok {
				refs[d] = label + "/" + f.Filename
			}
		}
	}
	return nil
}

// checkChunks looks up (or with deep reads and hashes) every chunk, a few
// at a time: on object storage each is a round trip.
func checkChunks(ctx context.Context, s *datastore.Store, digests []datastore.Digest, refs map[datastore.Digest]string, deep bool, r *Report) error {
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for _, d := range digests {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			why, err := checkChunk(ctx, s, d, deep)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			if why != "" {
				r.problem("chunk %s (used by %s): %s", d, refs[d], why)
			}
		}()
	}
	wg.Wait()
	return firstErr
}

func checkChunk(ctx context.Context, s *datastore.Store, d datastore.Digest, deep bool) (string, error) {
	if !deep {
		ok, err := s.ChunkExists(ctx, d)
		if err != nil {
			return "", fmt.Errorf("invariant: %w", err)
		}
		if !ok {
			return "missing", nil
		}
		return "", nil
	}
	raw, err := s.Backend().ReadFile(ctx, datastore.ChunkPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return "missing", nil
	}
	if err != nil {
		return "", fmt.Errorf("invariant: chunk %s: %w", d, err)
	}
	return chunkProblem(d, raw), nil
}

// chunkProblem says what is wrong with an encoded chunk stored as d.
func chunkProblem(d datastore.Digest, raw []byte) string {
	data, err := format.DecodeBlob(raw)
	if errors.Is(err, format.ErrEncrypted) {
		return "" // only its CRC could be checked, and decoding did
	}
	if err != nil {
		return "does not decode: " + err.Error()
	}
	if datastore.Digest(sha256.Sum256(data)) != d {
		return "SHA-256 of its data differs from its name"
	}
	return ""
}

// PBSFmtCheck runs the independent Python checker (datastore/testdata/
// pbsfmt.py) on a filesystem datastore and returns its output.
func PBSFmtCheck(ctx context.Context, dir string) (string, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("invariant: cannot locate pbsfmt.py")
	}
	script := filepath.Join(filepath.Dir(self), "..", "testdata", "pbsfmt.py")
	out, err := exec.CommandContext(ctx, "python3", script, "check", dir).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("pbsfmt.py check %s: %w\n%s", dir, err, out)
	}
	return string(out), nil
}

// walkAll walks every file of a backend.
func walkAll(ctx context.Context, b backend.Backend, fn func(backend.FileInfo) error) error {
	return b.Walk(ctx, "", fn)
}
