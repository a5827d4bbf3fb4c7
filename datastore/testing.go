package datastore

// Test fixtures, after restic's repository.TestRepository: exported from a
// non-test file so that this package's tests, its external tests and other
// packages' tests (worker, cmd) build stores, write test data, dump them
// and verify them the same way. They take TestingT rather than
// testing.TB so that the production binary does not link package
// testing, and they import no test servers: object storage comes in as a
// backend (TestOn). The loop over every backend kind is eachBackend in
// backends_test.go.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/local"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/flock"
	"github.com/pbsq/pbsq/datastore/name"
)

// TestingT is the part of testing.TB the fixtures use.
type TestingT interface {
	Helper()
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	TempDir() string
}

// TestEnv is a store made by NewTestEnv and where it lives.
type TestEnv struct {
	Kind    string // "fs", or the kind given to TestOn
	Store   *Store
	Dir     string // filesystem base; "" on object storage
	LockDir string // flock locks dir; "" without flock locks
}

// TestStoreOption configures NewTestEnv and TestStore.
type TestStoreOption func(*testConfig)

type testConfig struct {
	name     string
	kind     string
	b        backend.Backend // object storage; nil: filesystem
	dir      string
	flock    bool
	lockDir  string
	wait     time.Duration
	pbsLocks bool
}

// TestName names the store (default "test").
func TestName(storeName string) TestStoreOption {
	return func(c *testConfig) { c.name = storeName }
}

// TestAt puts the filesystem store at dir instead of a new temp dir (dir
// may already hold a store).
func TestAt(dir string) TestStoreOption {
	return func(c *testConfig) { c.dir = dir }
}

// TestOn puts the store on object storage b (Create writes the marker);
// kind names it in TestEnv.Kind ("gofakes3", "versitygw").
func TestOn(kind string, b backend.Backend) TestStoreOption {
	return func(c *testConfig) { c.kind, c.b = kind, b }
}

// TestFlock locks with flock in a new temp dir, retry window wait
// (negative: a single try).
func TestFlock(wait time.Duration) TestStoreOption {
	return TestFlockAt("", wait)
}

// TestFlockAt locks with flock in lockDir, shared with other stores or
// lockers standing in for other processes ("" is a new temp dir).
func TestFlockAt(lockDir string, wait time.Duration) TestStoreOption {
	return func(c *testConfig) { c.flock, c.lockDir, c.wait = true, lockDir, wait }
}

// TestPBSLocks also gives the store the flock dir as Options.LocksDir: PBS's
// manifest lock and move journal (see pbsinterop.go). Implies TestFlock
// (single try) unless a flock option is given.
func TestPBSLocks() TestStoreOption {
	return func(c *testConfig) { c.pbsLocks = true }
}

// TestStore is NewTestEnv's store: by default an unlocked filesystem store
// named "test" in a temp dir.
func TestStore(t TestingT, opts ...TestStoreOption) *Store {
	t.Helper()
	return NewTestEnv(t, opts...).Store
}

// NewTestEnv builds a fresh store as opts say.
func NewTestEnv(t TestingT, opts ...TestStoreOption) *TestEnv {
	t.Helper()
	c := testConfig{name: "test", kind: "fs", wait: -1}
	for _, o := range opts {
		o(&c)
	}
	env := &TestEnv{Kind: c.kind}
	var so Options
	if c.flock || c.pbsLocks {
		env.LockDir = c.lockDir
		if env.LockDir == "" {
			env.LockDir = filepath.Join(t.TempDir(), "locks")
		}
		so.Locker = TestFlockLocker(t, env.LockDir, c.wait)
		if c.pbsLocks {
			so.LocksDir = env.LockDir
		}
	}
	var err error
	if c.b != nil {
		env.Store, err = Create(context.Background(), c.name, c.b, so)
	} else {
		env.Dir = c.dir
		if env.Dir == "" {
			env.Dir = t.TempDir()
		}
		env.Store, err = testFSStore(c.name, env.Dir, so)
	}
	if err != nil {
		t.Fatalf("test store %s on %s: %v", c.name, c.kind, err)
	}
	return env
}

// testFSStore opens a filesystem store at dir with only .chunks made:
// writes create the chunk prefix directories on demand, much faster than
// Create's 65536 (TestCreateMakesChunkDirs covers those).
func testFSStore(storeName, dir string, opts Options) (*Store, error) {
	b, err := local.New(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, ".chunks"), 0o755); err != nil {
		return nil, err
	}
	return Open(storeName, b, opts)
}

// TestFlockLocker is a flock locker on lockDir with retry window wait,
// e.g. standing in for another process on a store's locks.
func TestFlockLocker(t TestingT, lockDir string, wait time.Duration) *lock.Locker {
	t.Helper()
	lb, err := flock.New(flock.Options{Dir: lockDir})
	if err != nil {
		t.Fatalf("flock %s: %v", lockDir, err)
	}
	return lock.New(lb, lock.Options{Wait: wait})
}

// TestTree is every file of s with its content, to show that an operation
// changed nothing (or exactly what). On a filesystem store it is
// TestDirTree of its base, directories included; on object storage every
// object.
func TestTree(t TestingT, s *Store) map[string]string {
	t.Helper()
	if fsb, ok := s.b.(*local.FS); ok {
		return TestDirTree(t, fsb.Base())
	}
	out := map[string]string{}
	ctx := context.Background()
	err := s.b.Walk(ctx, "", func(fi backend.FileInfo) error {
		data, err := s.b.ReadFile(ctx, fi.Name)
		out[fi.Name] = string(data)
		return err
	})
	if err != nil {
		t.Fatalf("tree of %s: %v", s, err)
	}
	return out
}

// TestDirTree is every entry below dir: each directory as "dir/" ("./"
// for dir itself), so that a refusal that only creates an empty directory
// shows too; each regular file with its content; anything else (link,
// FIFO, device) with its type and a link's target, never followed or
// opened.
func TestDirTree(t TestingT, dir string) map[string]string {
	t.Helper()
	return TestDirTreeBy(t, dir, func(_, p string) (string, error) {
		data, err := os.ReadFile(p)
		return string(data), err
	})
}

// TestDirTreeBy is TestDirTree with each regular file described by
// file(rel, path) instead of its content, e.g. by stat only where reading
// would move access times.
func TestDirTreeBy(t TestingT, dir string, file func(rel, path string) (string, error)) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			out[rel+"/"] = ""
		case d.Type().IsRegular():
			out[rel], err = file(rel, p)
		default:
			target, _ := os.Readlink(p)
			out[rel] = "\x00" + d.Type().String() + " " + target
		}
		return err
	})
	if err != nil {
		t.Fatalf("tree of %s: %v", dir, err)
	}
	return out
}

// TestTreeUnder returns the entries of tree below prefix (files only),
// keyed by the rest of their path: the content that moved from one place
// to another.
func TestTreeUnder(tree map[string]string, prefix string) map[string]string {
	out := map[string]string{}
	for k, v := range tree {
		if rest, ok := strings.CutPrefix(k, prefix); ok && rest != "" && !strings.HasSuffix(rest, "/") {
			out[rest] = v
		}
	}
	return out
}

// TestSameTree reports every path added, removed or changed between two
// trees as an error of t (what names the operation) and whether they are
// the same.
func TestSameTree(t TestingT, what string, before, after map[string]string) bool {
	t.Helper()
	var diffs []string
	for k, v := range before {
		if w, ok := after[k]; !ok {
			diffs = append(diffs, "removed "+k)
		} else if w != v {
			diffs = append(diffs, "changed "+k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			diffs = append(diffs, "added "+k)
		}
	}
	if len(diffs) == 0 {
		return true
	}
	sort.Strings(diffs)
	if len(diffs) > 20 {
		diffs = append(diffs[:20], fmt.Sprintf("and %d more", len(diffs)-20))
	}
	t.Errorf("%s changed the store: %s", what, strings.Join(diffs, ", "))
	return false
}

// TestVerifyAll verifies every snapshot of s and fails t unless all of
// them verified ok: no error, none failed or skipped, OK == Snapshots,
// exactly snapshots verified (any number when snapshots < 0) and exactly
// unfinished snapshots without a manifest passed over.
func TestVerifyAll(t TestingT, s *Store, snapshots, unfinished int) *VerifyResult {
	t.Helper()
	res, err := s.Verify(context.Background(), VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}}, nil)
	if err != nil {
		t.Fatalf("verify %s: %v", s, err)
	}
	if len(res.Failed) > 0 || len(res.Skipped) > 0 || res.OK != res.Snapshots ||
		(snapshots >= 0 && res.Snapshots != snapshots) || len(res.Unfinished) != unfinished {
		t.Fatalf("verify %s: want every snapshot ok (%d, %d unfinished), got %d ok of %d, failed %v, skipped %v, unfinished %v",
			s, snapshots, unfinished, res.OK, res.Snapshots, res.Failed, res.Skipped, res.Unfinished)
	}
	return res
}

// TestFile writes a new temp file named base: n random bytes, then z zero
// bytes (which compress and deduplicate).
func TestFile(t TestingT, base string, n, z int) string {
	t.Helper()
	data := make([]byte, n+z)
	_, _ = rand.Read(data[:n])
	p := filepath.Join(t.TempDir(), base)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatalf("test file %s: %v", base, err)
	}
	return p
}

// TestFiles writes files (base name → content) into a new temp dir and
// returns their paths, sorted.
func TestFiles(t TestingT, files map[string][]byte) []string {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for base, data := range files {
		p := filepath.Join(dir, base)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatalf("test file %s: %v", base, err)
		}
		paths = append(paths, p)
	}
	sort.Strings(paths)
	return paths
}

// TestBackup writes a snapshot of group ("vm/100") in namespace ns ("" is
// the root; created with its parents when missing) at time at, owned by
// root@pam, with one archive per file of paths; it fails t on any error.
func TestBackup(t TestingT, s *Store, ns, group string, at time.Time, paths ...string) *BackupResult {
	t.Helper()
	req := BackupRequest{Time: at}
	for _, p := range paths {
		req.Sources = append(req.Sources, BackupSource{Path: p})
	}
	return TestBackupRequest(t, s, ns, group, req)
}

// TestBackupRequest is TestBackup with a request of one's own (owner,
// archive names): Group is set from ns and group, and Owner defaults to
// root@pam.
func TestBackupRequest(t TestingT, s *Store, ns, group string, req BackupRequest) *BackupResult {
	t.Helper()
	ctx := context.Background()
	n, err := name.ParseNamespace(ns)
	if err == nil {
		req.Group, err = name.ParseGroup(n, group)
	}
	if err == nil {
		err = s.CreateNamespace(ctx, n)
	}
	if err != nil {
		t.Fatalf("test backup %s in %q: %v", group, ns, err)
	}
	if req.Owner == "" {
		req.Owner = "root@pam"
	}
	res, err := s.Backup(ctx, req, nil)
	if err != nil {
		t.Fatalf("backup %s at %s into %q on %s: %v", group, req.Time.Format(time.RFC3339), ns, s.Name(), err)
	}
	return res
}

// TestAgeChunks sets the access and modification times of every chunk
// file of the filesystem store at dir, as if written at at.
func TestAgeChunks(t TestingT, dir string, at time.Time) {
	t.Helper()
	err := filepath.WalkDir(filepath.Join(dir, ".chunks"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		return os.Chtimes(p, at, at)
	})
	if err != nil {
		t.Fatalf("age chunks of %s: %v", dir, err)
	}
}

// TestChunk stores data as a chunk of s and returns its digest.
func TestChunk(t TestingT, s *Store, data []byte) Digest {
	t.Helper()
	d := Digest(sha256.Sum256(data))
	blob, err := format.EncodeBlob(data)
	if err == nil {
		_, err = s.InsertChunk(context.Background(), d, blob)
	}
	if err != nil {
		t.Fatalf("test chunk %s: %v", d, err)
	}
	return d
}

// TestCorruptChunk flips a bit of the last byte of chunk d of s (its
// payload, so that the CRC no longer matches).
func TestCorruptChunk(t TestingT, s *Store, d Digest) {
	t.Helper()
	ctx := context.Background()
	data, err := s.b.ReadFile(ctx, ChunkPath(d))
	if err == nil {
		data[len(data)-1] ^= 0x40
		err = s.b.WriteFile(ctx, ChunkPath(d), data)
	}
	if err != nil {
		t.Fatalf("corrupt chunk %s: %v", d, err)
	}
}
