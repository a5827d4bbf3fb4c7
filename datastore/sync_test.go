package datastore

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/s3"
	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

// Helpers of this file are prefixed st (sync test).

var stT0 = time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC)

// stAt is the fixtures' snapshot time h hours after stT0.
func stAt(h int) time.Time { return stT0.Add(time.Duration(h) * time.Hour) }

// stCounter records every call that changes a backend.
type stCounter struct {
	backend.Backend
	mu  sync.Mutex
	ops []string
}

func (c *stCounter) add(op, name string) {
	c.mu.Lock()
	c.ops = append(c.ops, op+" "+name)
	c.mu.Unlock()
}

// take returns the recorded changes and forgets them.
func (c *stCounter) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.ops
	c.ops = nil
	return out
}

func (c *stCounter) WriteFile(ctx context.Context, name string, data []byte) error {
	c.add("write", name)
	return c.Backend.WriteFile(ctx, name, data)
}

func (c *stCounter) CreateFile(ctx context.Context, name string, data []byte) (bool, error) {
	ok, err := c.Backend.CreateFile(ctx, name, data)
	if ok {
		c.add("create", name)
	}
	return ok, err
}

func (c *stCounter) Remove(ctx context.Context, name string) error {
	c.add("remove", name)
	return c.Backend.Remove(ctx, name)
}

func (c *stCounter) RemoveAll(ctx context.Context, dir string) error {
	c.add("removeall", dir)
	return c.Backend.RemoveAll(ctx, dir)
}

func (c *stCounter) Mkdir(ctx context.Context, dir string) error {
	c.add("mkdir", dir)
	return c.Backend.Mkdir(ctx, dir)
}

func (c *stCounter) RemoveDir(ctx context.Context, dir string) error {
	c.add("rmdir", dir)
	return c.Backend.RemoveDir(ctx, dir)
}

func (c *stCounter) Rename(ctx context.Context, from, to string) error {
	c.add("rename", from)
	return c.Backend.Rename(ctx, from, to)
}

func (c *stCounter) Copy(ctx context.Context, from, to string) error {
	c.add("copy", to)
	return c.Backend.Copy(ctx, from, to)
}

func (c *stCounter) Touch(ctx context.Context, name string) error {
	c.add("touch", name)
	return c.Backend.Touch(ctx, name)
}

// stData is n deterministic bytes for seed: random, or compressible text.
func stData(seed string, n int, text bool) []byte {
	var key [32]byte
	copy(key[:], seed)
	r := rand.New(rand.NewChaCha8(key))
	out := make([]byte, n)
	if text {
		words := []string{"alpha ", "beta ", "gamma ", "delta\n", "epsilon ", "zeta "}
		for i := 0; i < n; {
			i += copy(out[i:], words[r.IntN(len(words))])
		}
		return out
	}
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			out[i+j] = byte(v >> (8 * j))
		}
	}
	return out
}

// stSmall writes a small snapshot: an 8 KiB disk image and a config.
func stSmall(t testing.TB, s *Store, ns, group string, h int) name.Snapshot {
	t.Helper()
	seed := fmt.Sprintf("%s/%s/%d", ns, group, h)
	return TestBackup(t, s, ns, group, stAt(h), TestFiles(t, map[string][]byte{
		"disk.img":         stData(seed, 8<<10, false),
		"qemu-server.conf": []byte("memory: 2048\n# " + seed + "\n"),
	})...).SnapshotName()
}

// stUnfinish removes a snapshot's manifest (as a crashed backup leaves
// it) and returns it, to finish the snapshot again later.
func stUnfinish(t testing.TB, s *Store, snap name.Snapshot) []byte {
	t.Helper()
	raw, err := s.b.ReadFile(context.Background(), snap.File(ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.b.Remove(context.Background(), snap.File(ManifestName)); err != nil {
		t.Fatal(err)
	}
	return raw
}

// stFixture fills a source: three groups at the root and in namespaces,
// snapshots sharing chunks, one unfinished snapshot, an empty namespace.
type stFixture struct {
	finished   int // finished snapshots
	groups     int // groups with a finished snapshot
	unfinished name.Snapshot
}

func stFill(t testing.TB, s *Store) stFixture {
	t.Helper()
	// vm/100: a 9 MiB disk (chunks of 4, 4 and 1 MiB) whose last MiB
	// changes per snapshot, so the first two chunks are shared.
	base := stData("vm100", 8<<20, false)
	for h := 0; h < 3; h++ {
		disk := append(slices.Clone(base), stData(fmt.Sprintf("vm100-%d", h), 1<<20, false)...)
		TestBackup(t, s, "", "vm/100", stAt(h), TestFiles(t, map[string][]byte{
			"drive-scsi0.img":  disk,
			"qemu-server.conf": []byte(fmt.Sprintf("memory: %d\n", 1024*(h+1))),
		})...)
	}
	// ct/200: a dynamic archive, half text, two finished and one unfinished.
	for h := 0; h < 3; h++ {
		TestBackup(t, s, "", "ct/200", stAt(h), TestFiles(t, map[string][]byte{
			"root.pxar":     append(stData("ct200", 1<<20, true), stData(fmt.Sprintf("ct200-%d", h), 1<<20, false)...),
			"pct.conf":      []byte("arch: amd64\n"),
			"catalog.pcat1": stData(fmt.Sprintf("cat-%d", h), 4<<10, true),
		})...)
	}
	unfinished := name.NewSnapshot(name.Group{NS: name.Root, Type: name.TypeCT, ID: "200"}, stAt(2))
	stUnfinish(t, s, unfinished)
	stSmall(t, s, "a", "host/web-1.example", 0)
	stSmall(t, s, "a", "host/web-1.example", 1)
	stSmall(t, s, "a/b", "vm/100", 5)
	if err := s.CreateNamespace(context.Background(), name.MustNamespace("a/empty")); err != nil {
		t.Fatal(err)
	}
	return stFixture{finished: 3 + 2 + 2 + 1, groups: 4, unfinished: unfinished}
}

// stListing lists namespaces, groups and finished
// snapshots, the comparable content of a store.
func stListing(t testing.TB, s *Store) []string {
	t.Helper()
	ctx := context.Background()
	nss, err := s.ListNamespaces(ctx, name.Root, -1)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ns := range nss {
		out = append(out, "ns "+ns.String())
		gs, err := s.ListGroups(ctx, ns)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range gs {
			out = append(out, "group "+groupLabel(g))
			snaps, err := s.ListSnapshots(ctx, g)
			if err != nil {
				t.Fatal(err)
			}
			for _, sn := range snaps {
				if sn.Finished {
					out = append(out, "snapshot "+snapshotLabel(sn.Snapshot))
				}
			}
		}
	}
	return out
}

func stSameListing(t testing.TB, src, dst *Store) {
	t.Helper()
	a, b := stListing(t, src), stListing(t, dst)
	if !slices.Equal(a, b) {
		t.Fatalf("listings differ\nsource:\n  %s\ntarget:\n  %s", strings.Join(a, "\n  "), strings.Join(b, "\n  "))
	}
}

// stSync runs Sync and fails the test on an error of the operation.
func stSync(t testing.TB, src, dst *Store, req SyncRequest) *SyncResult {
	t.Helper()
	res, err := Sync(context.Background(), src, dst, req, nil)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	return res
}

func stJSON(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

func stFilters(t testing.TB, specs ...string) []name.GroupFilter {
	t.Helper()
	var out []name.GroupFilter
	for _, s := range specs {
		f, err := name.ParseGroupFilter(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, f)
	}
	return out
}

// TestSyncBackends syncs the fixture between every pair of backends: the
// target lists exactly what the source has (finished snapshots only),
// verifies, a second sync changes nothing at all, and an incremental sync
// copies only the new chunk.
func TestSyncBackends(t *testing.T) {
	fake := s3test.StartFake(t)
	open := func(t *testing.T, kind, storeName string) *Store {
		if kind == "fs" {
			return TestStore(t, TestName(storeName))
		}
		return TestStore(t, TestName(storeName), TestOn("s3", fake.New(t, fake.UniquePrefix(storeName))))
	}
	for _, c := range [][2]string{{"fs", "fs"}, {"fs", "s3"}, {"s3", "fs"}, {"s3", "s3"}} {
		t.Run(c[0]+"-to-"+c[1], func(t *testing.T) {
			ctx := context.Background()
			src := open(t, c[0], "src")
			fx := stFill(t, src)
			raw := open(t, c[1], "dst")
			cnt := &stCounter{Backend: raw.Backend()}
			var obsCopied, obsPresent atomic.Int64
			dst, err := Open("dst", cnt, Options{Observer: &Observer{SyncChunk: func(action string, _ int64) {
				switch action {
				case "copied":
					obsCopied.Add(1)
				case "present":
					obsPresent.Add(1)
				}
			}}})
			if err != nil {
				t.Fatal(err)
			}
			var progressCalls atomic.Int64
			res, err := Sync(ctx, src, dst, SyncRequest{MaxDepth: -1}, func(Progress) { progressCalls.Add(1) })
			if err != nil {
				t.Fatal(err)
			}
			if err := res.Outcome(); err != nil || res.Snapshots != fx.finished || res.Chunks == 0 || res.Bytes == 0 ||
				res.NamespacesCreated != 3 || res.GroupsCreated != 4 || res.Groups != 4 {
				t.Fatalf("first sync: %v\n%s", err, stJSON(res))
			}
			if obsCopied.Load() != int64(res.Chunks) || obsPresent.Load() != int64(res.ChunksPresent) {
				t.Errorf("observer saw %d copied/%d present, result says %d/%d", obsCopied.Load(), obsPresent.Load(), res.Chunks, res.ChunksPresent)
			}
			if progressCalls.Load() == 0 {
				t.Error("no progress reported")
			}
			stSameListing(t, src, dst)
			if _, err := dst.SnapshotInfo(ctx, fx.unfinished); !errors.Is(err, ErrNotFound) {
				t.Errorf("unfinished source snapshot %s reached the target: %v", fx.unfinished, err)
			}
			if owner, err := dst.GroupOwner(ctx, name.Group{NS: name.MustNamespace("a/b"), Type: name.TypeVM, ID: "100"}); err != nil || owner != DefaultSyncOwner {
				t.Errorf("owner of a new group: %q, %v", owner, err)
			}
			cnt.take()

			// Unchanged: nothing written, no chunk even looked at.
			res = stSync(t, src, dst, SyncRequest{MaxDepth: -1})
			if ops := cnt.take(); len(ops) > 0 {
				t.Errorf("unchanged re-sync changed the target: %v", ops)
			}
			if res.Outcome() != nil || res.Snapshots != 0 || res.Chunks != 0 || res.ChunksPresent != 0 || res.FilesWritten != 0 ||
				res.SnapshotsPresent != fx.groups || res.NamespacesCreated != 0 || res.GroupsCreated != 0 {
				t.Errorf("unchanged re-sync: %s", stJSON(res))
			}

			// Incremental: a new vm/100 snapshot shares two of three chunks.
			disk := append(stData("vm100", 8<<20, false), stData("vm100-new", 1<<20, false)...)
			TestBackup(t, src, "", "vm/100", stAt(10), TestFiles(t, map[string][]byte{"drive-scsi0.img": disk, "qemu-server.conf": []byte("memory: 1\n")})...)
			res = stSync(t, src, dst, SyncRequest{MaxDepth: -1})
			if res.Outcome() != nil || res.Snapshots != 1 || res.Chunks != 1 || res.ChunksPresent != 2 || res.FilesWritten != 3 ||
				res.SnapshotsPresent != fx.groups {
				t.Errorf("incremental sync: %s", stJSON(res))
			}
			for _, op := range cnt.take() {
				if !strings.Contains(op, "2024-03-01T20:00:00Z") && !strings.HasPrefix(op, "create .chunks/") &&
					!strings.HasPrefix(op, "touch .chunks/") && !strings.Contains(op, writersDir) {
					t.Errorf("incremental sync wrote outside the new snapshot: %s", op)
				}
			}
			stSameListing(t, src, dst)
			TestVerifyAll(t, dst, fx.finished+1, 0)
		})
	}
}

// TestSyncIndependentStore syncs a store written by the independent
// Python writer fs→fs and fs→S3 (versitygw)→fs; the Python checker passes
// on the final copies, which list exactly the source's finished snapshots
// with their verify states.
func TestSyncIndependentStore(t *testing.T) {
	ctx := context.Background()
	srcDir := t.TempDir()
	out := pbsfmt(t, "write", srcDir)
	var expected []struct {
		NS          string  `json:"ns"`
		Type        string  `json:"backup-type"`
		ID          string  `json:"backup-id"`
		Time        string  `json:"time"`
		Finished    bool    `json:"finished"`
		VerifyState *string `json:"verify-state"`
	}
	if err := json.Unmarshal([]byte(out), &expected); err != nil {
		t.Fatalf("pbsfmt listing: %v\n%s", err, out)
	}
	src := TestStore(t, TestName("pbsfmt"), TestAt(srcDir))
	check := func(t *testing.T, dst *Store, dir string) {
		pbsfmt(t, "check", dir)
		stSameListing(t, src, dst)
		n := 0
		for _, e := range expected {
			snap, err := name.ParseSnapshot(name.MustNamespace(e.NS), e.Type+"/"+e.ID+"/"+e.Time)
			if err != nil {
				t.Fatal(err)
			}
			info, err := dst.SnapshotInfo(ctx, snap)
			if !e.Finished {
				if err == nil && info.Finished {
					t.Errorf("unfinished %s synced", snap)
				}
				continue
			}
			n++
			m, err := dst.ReadManifest(ctx, snap)
			if err != nil {
				t.Fatalf("%s: %v", snap, err)
			}
			got := ""
			if vs := m.VerifyState(); vs != nil {
				got = vs.State
			}
			if want := e.VerifyState; (want == nil && got != "") || (want != nil && *want != got) {
				t.Errorf("%s: verify state %q after sync, source has %v", snap, got, e.VerifyState)
			}
		}
		if n == 0 {
			t.Fatal("the writer's listing has no finished snapshot")
		}
	}
	t.Run("fs-to-fs", func(t *testing.T) {
		dir := t.TempDir()
		dst := TestStore(t, TestName("dst"), TestAt(dir))
		res := stSync(t, src, dst, SyncRequest{MaxDepth: -1})
		if res.Outcome() != nil || res.Snapshots != 5 {
			t.Fatalf("%s", stJSON(res))
		}
		check(t, dst, dir)
		res = stSync(t, src, dst, SyncRequest{MaxDepth: -1})
		if res.Snapshots != 0 || res.Chunks != 0 || res.FilesWritten != 0 {
			t.Errorf("unchanged re-sync: %s", stJSON(res))
		}
	})
	t.Run("fs-to-versitygw-to-fs", func(t *testing.T) {
		srv := s3test.StartVersity(t)
		mid := TestStore(t, TestName("mid"), TestOn("s3", srv.New(t, srv.UniquePrefix("mid"))))
		res := stSync(t, src, mid, SyncRequest{MaxDepth: -1})
		if res.Outcome() != nil || res.Snapshots != 5 {
			t.Fatalf("fs→s3: %s", stJSON(res))
		}
		stSameListing(t, src, mid)
		dir := t.TempDir()
		dst := TestStore(t, TestName("dst"), TestAt(dir))
		res = stSync(t, mid, dst, SyncRequest{MaxDepth: -1})
		if res.Outcome() != nil || res.Snapshots != 5 {
			t.Fatalf("s3→fs: %s", stJSON(res))
		}
		check(t, dst, dir)
		res = stSync(t, src, mid, SyncRequest{MaxDepth: -1})
		if res.Snapshots != 0 || res.Chunks != 0 || res.FilesWritten != 0 {
			t.Errorf("unchanged re-sync into S3: %s", stJSON(res))
		}
	})
}

// stFilterSource: groups of all types at the root and in namespace x; the
// newest ct/200 snapshot is unfinished.
func stFilterSource(t testing.TB, src *Store) *Store {
	t.Helper()
	for h := 0; h < 3; h++ {
		stSmall(t, src, "", "vm/100", h)
		stSmall(t, src, "", "ct/200", h)
	}
	stUnfinish(t, src, stSmall(t, src, "", "ct/200", 3))
	for h := 0; h < 2; h++ {
		stSmall(t, src, "", "vm/101", h)
		stSmall(t, src, "", "host/h1", h)
		stSmall(t, src, "x", "ct/300", h)
	}
	stSmall(t, src, "x", "vm/102", 0)
	return src
}

// TestSyncFiltersTransferLast: exclude:type:vm with transfer-last 1 copies
// exactly the newest finished snapshot of each non-vm group; group: and
// regex: filters include, exclude: wins.
func TestSyncFiltersTransferLast(t *testing.T) {
	fake := s3test.StartFake(t)
	t.Run("s3-to-s3", func(t *testing.T) {
		// Object storage lists snapshots lazily: the same selection.
		src := stFilterSource(t, TestStore(t, TestName("src"), TestOn("s3", fake.New(t, fake.UniquePrefix("src")))))
		dst := TestStore(t, TestName("dst"), TestOn("s3", fake.New(t, fake.UniquePrefix("dst"))))
		stSync(t, src, dst, SyncRequest{MaxDepth: -1, Filters: stFilters(t, "exclude:type:vm"), TransferLast: 1})
		fsDst := TestStore(t, TestName("dst"))
		stSync(t, stFilterSource(t, TestStore(t, TestName("src"))), fsDst, SyncRequest{MaxDepth: -1, Filters: stFilters(t, "exclude:type:vm"), TransferLast: 1})
		if a, b := stListing(t, dst), stListing(t, fsDst); !slices.Equal(a, b) {
			t.Fatalf("s3:\n  %s\nfs:\n  %s", strings.Join(a, "\n  "), strings.Join(b, "\n  "))
		}
		res := stSync(t, src, dst, SyncRequest{MaxDepth: -1, Filters: stFilters(t, "exclude:type:vm"), TransferLast: 1})
		if res.Snapshots != 0 || res.SnapshotsPresent != 3 || res.FilesWritten != 0 {
			t.Errorf("second run: %s", stJSON(res))
		}
	})
	src := stFilterSource(t, TestStore(t, TestName("src")))
	dst := TestStore(t, TestName("dst"))
	res := stSync(t, src, dst, SyncRequest{MaxDepth: -1, Filters: stFilters(t, "exclude:type:vm"), TransferLast: 1})
	want := []string{
		"ns ",
		"group :ct/200", "snapshot :ct/200/2024-03-01T12:00:00Z",
		"group :host/h1", "snapshot :host/h1/2024-03-01T11:00:00Z",
		"ns x",
		"group x:ct/300", "snapshot x:ct/300/2024-03-01T11:00:00Z",
	}
	if got := stListing(t, dst); !slices.Equal(got, want) || res.Snapshots != 3 || res.Outcome() != nil {
		t.Fatalf("got\n  %s\nwant\n  %s\n%s", strings.Join(got, "\n  "), strings.Join(want, "\n  "), stJSON(res))
	}
	// Again: the newest is re-checked and found present; nothing older
	// is pulled in by the second run.
	res = stSync(t, src, dst, SyncRequest{MaxDepth: -1, Filters: stFilters(t, "exclude:type:vm"), TransferLast: 1})
	if res.Snapshots != 0 || res.SnapshotsPresent != 3 || res.FilesWritten != 0 {
		t.Errorf("second run: %s", stJSON(res))
	}
	// Without transfer-last the older ones are not back-filled either
	// (PBS: only snapshots from the newest target one on).
	res = stSync(t, src, dst, SyncRequest{MaxDepth: -1, Filters: stFilters(t, "exclude:type:vm")})
	if res.Snapshots != 0 {
		t.Errorf("back-filled older snapshots: %s", stJSON(res))
	}

	for _, c := range []struct {
		filters []string
		groups  []string
	}{
		{[]string{"group:vm/100", "regex:^host/"}, []string{":host/h1", ":vm/100"}},
		{[]string{"type:vm", "exclude:group:vm/101"}, []string{":vm/100", "x:vm/102"}},
		{[]string{"regex:^(ct|vm)/[0-9]+$", "exclude:regex:^ct/2"}, []string{":vm/100", ":vm/101", "x:ct/300", "x:vm/102"}},
		{[]string{"group:vm/999"}, nil},
	} {
		dst := TestStore(t, TestName("dst"))
		res := stSync(t, src, dst, SyncRequest{MaxDepth: -1, Filters: stFilters(t, c.filters...)})
		var got []string
		for _, l := range stListing(t, dst) {
			if g, ok := strings.CutPrefix(l, "group "); ok {
				got = append(got, g)
			}
		}
		if !slices.Equal(got, c.groups) || res.Outcome() != nil {
			t.Errorf("filters %v: groups %v, want %v", c.filters, got, c.groups)
		}
	}
}

// TestSyncNamespaceMapping: namespaces below the source namespace land at
// the same relative place below the target namespace, down to max-depth;
// a mapping deeper than 7 levels is refused before anything is written.
func TestSyncNamespaceMapping(t *testing.T) {
	ctx := context.Background()
	src := TestStore(t, TestName("src"))
	stSmall(t, src, "", "vm/1", 0)
	stSmall(t, src, "a", "vm/2", 0)
	stSmall(t, src, "a/b", "vm/3", 0)
	stSmall(t, src, "a/b/c", "vm/4", 0)
	dstDir := t.TempDir()
	dst := TestStore(t, TestName("dst"), TestAt(dstDir))
	res := stSync(t, src, dst, SyncRequest{SourceNS: name.MustNamespace("a"), NS: name.MustNamespace("x/y"), MaxDepth: 1})
	want := []string{
		"ns ", "ns x",
		"ns x/y", "group x/y:vm/2", "snapshot x/y:vm/2/2024-03-01T10:00:00Z",
		"ns x/y/b", "group x/y/b:vm/3", "snapshot x/y/b:vm/3/2024-03-01T10:00:00Z",
	}
	if got := stListing(t, dst); !slices.Equal(got, want) || res.NamespacesCreated != 2 {
		t.Fatalf("got\n  %s\nwant\n  %s\n%s", strings.Join(got, "\n  "), strings.Join(want, "\n  "), stJSON(res))
	}

	deep := "d1/d2/d3/d4/d5/d6/d7"
	stSmall(t, src, deep, "vm/9", 0)
	before := TestDirTree(t, dstDir)
	_, err := Sync(ctx, src, dst, SyncRequest{NS: name.MustNamespace("z"), MaxDepth: -1}, nil)
	if !errors.Is(err, name.ErrInvalid) || !strings.Contains(err.Error(), deep) {
		t.Fatalf("too deep: %v, want name.ErrInvalid naming %s", err, deep)
	}
	TestSameTree(t, "the refused sync", before, TestDirTree(t, dstDir))

	if _, err := Sync(ctx, src, src, SyncRequest{SourceNS: name.MustNamespace("a"), NS: name.MustNamespace("a/b")}, nil); !errors.Is(err, name.ErrInvalid) {
		t.Errorf("overlapping namespaces in one store: %v, want name.ErrInvalid", err)
	}
	for _, req := range []SyncRequest{{TransferLast: -1}, {Owner: "nobody"}, {Rate: -1}, {MaxDepth: 8}} {
		if _, err := Sync(ctx, src, dst, req, nil); !errors.Is(err, name.ErrInvalid) {
			t.Errorf("%+v: %v, want name.ErrInvalid", req, err)
		}
	}
	if _, err := Sync(ctx, src, dst, SyncRequest{SourceNS: name.MustNamespace("nope")}, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing source namespace: %v, want ErrNotFound", err)
	}
}

// TestSyncOwner: an existing target group of another owner is skipped
// with the reason (nothing written into it); new groups get the owner.
func TestSyncOwner(t *testing.T) {
	ctx := context.Background()
	src := TestStore(t, TestName("src"))
	stSmall(t, src, "", "vm/100", 0)
	stSmall(t, src, "", "vm/100", 1)
	stSmall(t, src, "", "ct/200", 0)
	dst := TestStore(t, TestName("dst"))
	ct := name.Group{NS: name.Root, Type: name.TypeCT, ID: "200"}
	if err := dst.SetGroupOwner(ctx, ct, "other@pbs"); err != nil {
		t.Fatal(err)
	}
	res := stSync(t, src, dst, SyncRequest{MaxDepth: -1})
	if !errors.Is(res.Outcome(), ErrSkipped) || len(res.Skipped) != 1 || res.Skipped[0].Item != ":ct/200" ||
		!strings.Contains(res.Skipped[0].Reason, `"other@pbs"`) || res.Snapshots != 2 {
		t.Fatalf("%v\n%s", res.Outcome(), stJSON(res))
	}
	if snaps, _ := dst.ListSnapshots(ctx, ct); len(snaps) != 0 {
		t.Errorf("snapshots written into a group of another owner: %v", snaps)
	}
	// As other@pbs: ct/200 is synced, vm/100 (root@pam's now) skipped.
	res = stSync(t, src, dst, SyncRequest{MaxDepth: -1, Owner: "other@pbs"})
	if len(res.Skipped) != 1 || res.Skipped[0].Item != ":vm/100" || res.Snapshots != 1 {
		t.Fatalf("%s", stJSON(res))
	}
	stSameListing(t, src, dst)
}

// TestSyncRemoveVanished: vanished snapshots, groups and namespaces go,
// except protected snapshots, groups of another owner, groups outside the
// filters and non-empty namespaces.
func TestSyncRemoveVanished(t *testing.T) {
	ctx := context.Background()
	src := TestStore(t, TestName("src"))
	var vm []name.Snapshot
	for h := 0; h < 3; h++ {
		vm = append(vm, stSmall(t, src, "", "vm/100", h))
	}
	host := stSmall(t, src, "", "host/h1", 0)
	stSmall(t, src, "a", "ct/200", 0)
	if err := src.CreateNamespace(ctx, name.MustNamespace("a/empty")); err != nil {
		t.Fatal(err)
	}
	dst := TestStore(t, TestName("dst"))
	stSync(t, src, dst, SyncRequest{MaxDepth: -1})

	// The source loses vm/100's two oldest, host/h1 and a/empty, and
	// gains a newer vm/100 snapshot.
	for _, sn := range []name.Snapshot{vm[0], vm[1], host} {
		if err := src.removeSnapshotFiles(ctx, sn); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.removeGroupIfEmpty(ctx, host.Group); err != nil {
		t.Fatal(err)
	}
	if err := src.RemoveNamespace(ctx, name.MustNamespace("a/empty")); err != nil {
		t.Fatal(err)
	}
	stSmall(t, src, "", "vm/100", 3)
	// The target has a protected copy of vm[1], groups of its own, and
	// namespaces the source never had.
	if err := dst.SetProtected(ctx, vm[1], true); err != nil {
		t.Fatal(err)
	}
	stSmall(t, dst, "", "ct/300", 0)
	other := stSmall(t, dst, "", "vm/999", 0)
	if err := dst.SetGroupOwner(ctx, other.Group, "other@pbs"); err != nil {
		t.Fatal(err)
	}
	stSmall(t, dst, "gone", "ct/1", 0)
	if err := dst.SetGroupOwner(ctx, name.Group{NS: name.MustNamespace("gone"), Type: name.TypeCT, ID: "1"}, "other@pbs"); err != nil {
		t.Fatal(err)
	}
	if err := dst.CreateNamespace(ctx, name.MustNamespace("gone2/deeper")); err != nil {
		t.Fatal(err)
	}

	// Outside the filters, ct groups stay; host/h1 goes, and the empty
	// vanished namespaces (gone2 after gone2/deeper).
	res := stSync(t, src, dst, SyncRequest{MaxDepth: -1, RemoveVanished: true, Filters: stFilters(t, "exclude:type:ct")})
	if _, err := dst.SnapshotInfo(ctx, name.Snapshot{Group: name.Group{NS: name.Root, Type: name.TypeCT, ID: "300"}, Time: stAt(0)}); err != nil {
		t.Errorf("filtered-out group ct/300 removed: %v (%s)", err, stJSON(res))
	}
	if res.RemovedSnapshots != 2 || res.RemovedGroups != 1 || res.RemovedNamespaces != 3 || res.Outcome() != nil {
		t.Errorf("first run: %s", stJSON(res))
	}

	res = stSync(t, src, dst, SyncRequest{MaxDepth: -1, RemoveVanished: true})
	want := []string{
		"ns ",
		"group :vm/100", "snapshot :vm/100/2024-03-01T11:00:00Z", "snapshot :vm/100/2024-03-01T12:00:00Z", "snapshot :vm/100/2024-03-01T13:00:00Z",
		"group :vm/999", "snapshot :vm/999/2024-03-01T10:00:00Z",
		"ns a", "group a:ct/200", "snapshot a:ct/200/2024-03-01T10:00:00Z",
		"ns gone", "group gone:ct/1", "snapshot gone:ct/1/2024-03-01T10:00:00Z",
	}
	if got := stListing(t, dst); !slices.Equal(got, want) {
		t.Fatalf("got\n  %s\nwant\n  %s\n%s", strings.Join(got, "\n  "), strings.Join(want, "\n  "), stJSON(res))
	}
	// ct/300 now; gone keeps another owner's group; vm[1] is protected.
	if res.RemovedSnapshots != 1 || res.RemovedGroups != 1 || res.RemovedNamespaces != 0 || res.Outcome() != nil || len(res.Warnings) != 2 {
		t.Errorf("second run: %s", stJSON(res))
	}
	if info, err := dst.SnapshotInfo(ctx, vm[1]); err != nil || !info.Protected {
		t.Errorf("protected vanished snapshot: %+v, %v", info, err)
	}
}

// TestSyncCorruptSourceChunk: a source chunk with a bad CRC, and one that
// decodes to data of another digest, each fail only their snapshot, which
// stays unfinished in the target without the bad chunk; the rest syncs.
func TestSyncCorruptSourceChunk(t *testing.T) {
	ctx := context.Background()
	srcDir := t.TempDir()
	src := TestStore(t, TestName("src"), TestAt(srcDir))
	s0 := TestBackup(t, src, "", "vm/100", stAt(0), TestFiles(t, map[string][]byte{"drive-scsi0.img": stData("a", 5<<20, false)})...).SnapshotName()
	TestBackup(t, src, "", "vm/100", stAt(1), TestFiles(t, map[string][]byte{"drive-scsi0.img": stData("b", 5<<20, false)})...)
	c0 := TestBackup(t, src, "", "ct/200", stAt(0), TestFiles(t, map[string][]byte{"root.pxar": stData("c", 300<<10, true)})...).SnapshotName()
	TestBackup(t, src, "", "ct/200", stAt(1), TestFiles(t, map[string][]byte{"root.pxar": stData("d", 300<<10, true)})...)

	badCRC := vtDigests(t, src, s0, "drive-scsi0.img.fidx")[1]
	TestCorruptChunk(t, src, badCRC)
	// A well-formed blob under the wrong name.
	wrong := vtDigests(t, src, c0, "root.pxar.didx")[0]
	blob, err := format.EncodeBlob(stData("other", 1000, true))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(srcDir, filepath.FromSlash(ChunkPath(wrong))), blob, 0o644); err != nil {
		t.Fatal(err)
	}

	dstDir := t.TempDir()

	dst := TestStore(t, TestName("dst"), TestAt(dstDir))
	res := stSync(t, src, dst, SyncRequest{MaxDepth: -1})
	if !errors.Is(res.Outcome(), ErrFailed) || len(res.Failed) != 2 || res.Snapshots != 2 {
		t.Fatalf("%v\n%s", res.Outcome(), stJSON(res))
	}
	reasons := stJSON(res.Failed)
	for _, want := range []string{badCRC.String(), "crc", wrong.String(), "SHA-256"} {
		if !strings.Contains(reasons, want) {
			t.Errorf("failure reasons lack %q: %s", want, reasons)
		}
	}
	for _, sn := range []name.Snapshot{s0, c0} {
		if info, err := dst.SnapshotInfo(ctx, sn); err == nil && info.Finished {
			t.Errorf("%s finished in the target despite a corrupt chunk", sn)
		}
	}
	for _, d := range []Digest{badCRC, wrong} {
		if ok, _ := dst.ChunkExists(ctx, d); ok {
			t.Errorf("corrupt chunk %s copied", d)
		}
	}
	TestVerifyAll(t, dst, 2, 0)
	pbsfmt(t, "check", dstDir)
}

// TestSyncResyncCorrupt: a target snapshot that failed verification is
// re-synced with resync-corrupt (only then), whether verify renamed its bad
// chunk away or the chunk is still there, corrupt.
func TestSyncResyncCorrupt(t *testing.T) {
	ctx := context.Background()
	src := TestStore(t, TestName("src"))
	var snaps []name.Snapshot
	for h := 0; h < 3; h++ {
		snaps = append(snaps, TestBackup(t, src, "", "vm/100", stAt(h), TestFiles(t, map[string][]byte{"drive-scsi0.img": stData(fmt.Sprint(h), 5<<20, false)})...).SnapshotName())
	}
	dstDir := t.TempDir()
	dst := TestStore(t, TestName("dst"), TestAt(dstDir))
	stSync(t, src, dst, SyncRequest{MaxDepth: -1})

	// snaps[0]: verify finds the corrupt chunk and renames it .bad.
	d0 := vtDigests(t, dst, snaps[0], "drive-scsi0.img.fidx")[0]
	TestCorruptChunk(t, dst, d0)
	vres, err := dst.Verify(ctx, VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}}, nil)
	if err != nil || len(vres.Failed) != 1 {
		t.Fatalf("verify: %v %s", err, stJSON(vres))
	}
	// snaps[1]: marked failed, its chunk corrupted afterwards (not renamed).
	d1 := vtDigests(t, dst, snaps[1], "drive-scsi0.img.fidx")[1]
	TestCorruptChunk(t, dst, d1)
	if err := dst.UpdateManifest(ctx, snaps[1], func(m *format.Manifest) error { m.SetVerifyState(format.VerifyFailed, "UPID:test"); return nil }); err != nil {
		t.Fatal(err)
	}

	res := stSync(t, src, dst, SyncRequest{MaxDepth: -1})
	if res.Chunks != 0 {
		t.Fatalf("without resync-corrupt: %s", stJSON(res))
	}
	res = stSync(t, src, dst, SyncRequest{MaxDepth: -1, ResyncCorrupt: true})
	if res.Outcome() != nil || res.Snapshots != 2 || res.SnapshotsPresent != 1 || res.Chunks != 2 || res.ChunksRenamed != 1 {
		t.Fatalf("with resync-corrupt: %s", stJSON(res))
	}
	TestVerifyAll(t, dst, 3, 0)
}

// TestSyncRate: the token bucket holds the chunk bytes read to the rate
// (after a burst of one chunk).
func TestSyncRate(t *testing.T) {
	src := TestStore(t, TestName("src"))
	TestBackup(t, src, "", "vm/100", stAt(0), TestFiles(t, map[string][]byte{"drive-scsi0.img": stData("rate", 16<<20, false)})...)
	dst := TestStore(t, TestName("dst"))
	const rate = 8 << 20
	start := time.Now()
	res := stSync(t, src, dst, SyncRequest{MaxDepth: -1, Rate: rate})
	elapsed := time.Since(start)
	floor := time.Duration(float64(res.Bytes-minSyncBurst) / rate * float64(time.Second))
	if res.Bytes < 16<<20 || elapsed < floor*9/10 {
		t.Fatalf("%d bytes in %v at %d B/s: want at least %v", res.Bytes, elapsed, rate, floor)
	}
	t.Logf("%d bytes in %v (limit %d B/s, floor %v)", res.Bytes, elapsed, rate, floor)
}

// TestSyncBusy: a group whose target group lock (or a source snapshot's
// lock) is held elsewhere is retried once at the end, then skipped; the
// rest is synced, and a later run catches up.
func TestSyncBusy(t *testing.T) {
	ctx := context.Background()
	lockDir := t.TempDir()
	src0 := TestStore(t, TestName("src"))
	dst0 := TestStore(t, TestName("dst"))
	src := src0.WithLocker(TestFlockLocker(t, lockDir, -1))
	dst := dst0.WithLocker(TestFlockLocker(t, lockDir, -1))
	other := dst0.WithLocker(TestFlockLocker(t, lockDir, -1)).locks
	stSmall(t, src, "", "vm/100", 0)
	ct0 := stSmall(t, src, "", "ct/200", 0)
	stSmall(t, src, "", "ct/200", 1)
	stSmall(t, src, "n", "host/h", 0)

	g, err := other.Acquire(ctx, lock.GroupRequest("dst", name.Group{NS: name.Root, Type: name.TypeVM, ID: "100"}))
	if err != nil {
		t.Fatal(err)
	}
	// A prune removing ct/200's oldest holds it exclusively.
	sl, err := other.Acquire(ctx, lock.SnapshotRequest("src", ct0, lock.Exclusive))
	if err != nil {
		t.Fatal(err)
	}
	res := stSync(t, src, dst, SyncRequest{MaxDepth: -1})
	if !errors.Is(res.Outcome(), ErrSkipped) || len(res.Skipped) != 2 || res.Snapshots != 1 ||
		!strings.Contains(stJSON(res.Skipped), "busy") {
		t.Fatalf("%v\n%s", res.Outcome(), stJSON(res))
	}
	// A refused lock is busy, not a failure: sync succeeds (stSync) and
	// each skip names the lock that stayed held (TestBusyNotMistaken: the
	// other way round).
	wantSkip := map[string]string{
		":vm/100": `group "vm/100" (exclusive) on store "dst"`,
		":ct/200": `snapshot "` + ct0.String() + `" (shared) on store "src"`,
	}
	for _, sk := range res.Skipped {
		if w, ok := wantSkip[sk.Item]; !ok || !strings.Contains(sk.Reason, w) || !strings.Contains(sk.Reason, lock.ErrBusy.Error()) {
			t.Errorf("skip %q: %q, want a busy reason naming %s", sk.Item, sk.Reason, w)
		}
	}
	_ = g.Release()
	_ = sl.Release()
	res = stSync(t, src, dst, SyncRequest{MaxDepth: -1})
	if res.Outcome() != nil || res.Snapshots != 3 {
		t.Fatalf("after release: %s", stJSON(res))
	}
	stSameListing(t, src, dst)
}

// TestSyncUnfinishedThenFinished: an unfinished source snapshot is left
// out, and synced once it is finished; a client log uploaded after the
// previous sync reaches the target through the re-check of the newest.
func TestSyncUnfinishedThenFinished(t *testing.T) {
	fake := s3test.StartFake(t)
	for _, kind := range []string{"fs", "s3"} {
		t.Run(kind, func(t *testing.T) {
			var src, dst *Store
			if kind == "fs" {
				src, dst = TestStore(t, TestName("src")), TestStore(t, TestName("dst"))
			} else {
				src, dst = TestStore(t, TestName("src"), TestOn("s3", fake.New(t, fake.UniquePrefix("src")))), TestStore(t, TestName("dst"), TestOn("s3", fake.New(t, fake.UniquePrefix("dst"))))
			}
			stUnfinishedThenFinished(t, src, dst)
		})
	}
}

func stUnfinishedThenFinished(t *testing.T, src, dst *Store) {
	ctx := context.Background()
	s0 := stSmall(t, src, "", "vm/100", 0)
	s1 := stSmall(t, src, "", "vm/100", 1)
	manifest := stUnfinish(t, src, s1)
	if res := stSync(t, src, dst, SyncRequest{MaxDepth: -1}); res.Snapshots != 1 {
		t.Fatalf("%s", stJSON(res))
	}
	log, err := format.EncodeBlob([]byte("client log\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := src.b.WriteFile(ctx, s0.File(clientLogName), log); err != nil {
		t.Fatal(err)
	}
	res := stSync(t, src, dst, SyncRequest{MaxDepth: -1})
	if res.Snapshots != 0 || res.SnapshotsPresent != 1 || res.FilesWritten != 1 {
		t.Fatalf("client log: %s", stJSON(res))
	}
	if got, err := dst.b.ReadFile(ctx, s0.File(clientLogName)); err != nil || string(got) != string(log) {
		t.Fatalf("client log not synced: %v", err)
	}
	if err := src.b.WriteFile(ctx, s1.File(ManifestName), manifest); err != nil {
		t.Fatal(err)
	}
	if res := stSync(t, src, dst, SyncRequest{MaxDepth: -1}); res.Snapshots != 1 || res.SnapshotsPresent != 1 {
		t.Fatalf("%s", stJSON(res))
	}
	stSameListing(t, src, dst)
}

// TestSyncChangedNewestSnapshot: when the newest target snapshot differs
// from the source's (a different index under the same time), its manifest
// is removed before the new files land, and the re-sync completes it.
func TestSyncChangedNewestSnapshot(t *testing.T) {
	src := TestStore(t, TestName("src"))
	stSmall(t, src, "", "vm/100", 0)
	dst := TestStore(t, TestName("dst"))
	// The target got a different backup at the same time.
	TestBackup(t, dst, "", "vm/100", stAt(0), TestFiles(t, map[string][]byte{"disk.img": stData("other", 9000, false), "qemu-server.conf": []byte("x\n")})...)
	cnt := &stCounter{Backend: dst.b}
	dstC, _ := Open("dst", cnt, Options{})
	res := stSync(t, src, dstC, SyncRequest{MaxDepth: -1})
	ops := cnt.take()
	mi := slices.IndexFunc(ops, func(op string) bool { return strings.HasPrefix(op, "remove ") && strings.HasSuffix(op, ManifestName) })
	fi := slices.IndexFunc(ops, func(op string) bool { return strings.HasPrefix(op, "write ") && strings.HasSuffix(op, ".fidx") })
	if res.Snapshots != 1 || mi < 0 || fi < mi {
		t.Fatalf("ops %v\n%s", ops, stJSON(res))
	}
	if res := stSync(t, src, dst, SyncRequest{MaxDepth: -1}); res.FilesWritten != 0 || res.SnapshotsPresent != 1 {
		t.Errorf("%s", stJSON(res))
	}
	TestVerifyAll(t, dst, 1, 0)
}

// Kill -9 trials: the child re-runs this test binary with the helper test
// below, which syncs until it is killed.
const (
	stKillEnvSrc    = "PBSQ_SYNC_KILL_SRC"
	stKillEnvDst    = "PBSQ_SYNC_KILL_DST"
	stKillEnvS3     = "PBSQ_SYNC_KILL_S3"
	stKillEnvPrefix = "PBSQ_SYNC_KILL_PREFIX"
)

// stKillSource builds the source of the kill trials: 3 groups of 3
// snapshots, about 40 MiB of chunks, some shared.
func stKillSource(t testing.TB) (*Store, string, int) {
	t.Helper()
	dir := t.TempDir()
	src := TestStore(t, TestName("src"), TestAt(dir))
	n := 0
	for _, grp := range []string{"vm/100", "vm/101", "ct/200"} {
		base := stData(grp, 4<<20, false)
		for h := 0; h < 3; h++ {
			seed := fmt.Sprint(grp, h)
			TestBackup(t, src, "k", grp, stAt(h), TestFiles(t, map[string][]byte{
				"drive-scsi0.img":  append(slices.Clone(base), stData(seed, 2<<20, false)...),
				"root.pxar":        append(stData(seed+"p", 1<<20, false), stData(seed+"t", 512<<10, true)...),
				"qemu-server.conf": []byte(seed + "\n"),
			})...)
			n++
		}
	}
	return src, dir, n
}

// TestSyncKillChild is the child side of TestSyncKill9; it does nothing
// unless started by it.
func TestSyncKillChild(t *testing.T) {
	srcDir := os.Getenv(stKillEnvSrc)
	if srcDir == "" {
		t.Skip("helper process of TestSyncKill9")
	}
	ctx := context.Background()
	src := TestStore(t, TestName("src"), TestAt(srcDir))
	var dst *Store
	if ep := os.Getenv(stKillEnvS3); ep != "" {
		b, err := s3.New(ctx, s3.Config{Endpoint: ep, Region: s3test.Region, Bucket: s3test.Bucket, Prefix: os.Getenv(stKillEnvPrefix), PathStyle: true})
		if err != nil {
			t.Fatal(err)
		}
		if dst, err = Open("dst", b, Options{}); err != nil {
			t.Fatal(err)
		}
	} else {
		dst = TestStore(t, TestName("dst"), TestAt(os.Getenv(stKillEnvDst)))
	}
	fmt.Fprintln(os.Stdout, "SYNCING")
	res, err := Sync(ctx, src, dst, SyncRequest{MaxDepth: -1}, nil)
	if err != nil || res.Outcome() != nil {
		t.Fatalf("child sync: %v %v", err, res)
	}
	fmt.Fprintln(os.Stdout, "SYNCED")
}

// stKillOnce runs the child and SIGKILLs it after delay (counted from
// when it starts syncing); it reports whether the sync had finished, and
// how long it took if so.
func stKillOnce(t *testing.T, env []string, delay time.Duration) (bool, time.Duration) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSyncKillChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var log []string
	syncing, synced := false, false
	var timer <-chan time.Time
	var began time.Time
	for !synced {
		select {
		case l, ok := <-lines:
			if !ok {
				_ = cmd.Wait()
				if !synced && syncing {
					t.Fatalf("child ended before being killed:\n%s", strings.Join(log, "\n"))
				}
				if !syncing {
					t.Fatalf("child never started syncing:\n%s", strings.Join(log, "\n"))
				}
				return synced, time.Since(began)
			}
			log = append(log, l)
			switch l {
			case "SYNCING":
				syncing, began = true, time.Now()
				timer = time.After(delay)
			case "SYNCED":
				synced = true
			}
		case <-timer:
			_ = cmd.Process.Signal(syscall.SIGKILL)
			for range lines {
			}
			_ = cmd.Wait()
			return false, 0
		}
	}
	took := time.Since(began)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	for range lines {
	}
	_ = cmd.Wait()
	return true, took
}

// TestSyncKill9 kills a sync child with SIGKILL at random moments (seeded;
// PBSQ_SYNC_KILL_SEED to repeat), sometimes twice, and checks that the
// target is consistent right after (every finished snapshot verifies) and
// complete and valid after an in-process rerun: Verify, the Python
// checker for filesystem targets, and the same listing as the source.
func TestSyncKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("kill trials are slow")
	}
	ctx := context.Background()
	seed := uint64(time.Now().UnixNano())
	if v, err := strconv.ParseUint(os.Getenv("PBSQ_SYNC_KILL_SEED"), 10, 64); err == nil {
		seed = v
	}
	t.Logf("seed %d (PBSQ_SYNC_KILL_SEED)", seed)
	src, srcDir, nsnaps := stKillSource(t)
	fake := s3test.StartFake(t)

	type target struct {
		store *Store
		dir   string
		env   []string
	}
	newTarget := func(kind string) target {
		if kind == "fs" {
			dir := t.TempDir()
			s := TestStore(t, TestName("dst"), TestAt(dir))
			return target{s, dir, []string{stKillEnvSrc + "=" + srcDir, stKillEnvDst + "=" + dir}}
		}
		prefix := fake.UniquePrefix("kill")
		s := TestStore(t, TestName("dst"), TestOn("gofakes3", fake.New(t, prefix)))
		return target{s, "", []string{stKillEnvSrc + "=" + srcDir, stKillEnvS3 + "=" + fake.Endpoint(), stKillEnvPrefix + "=" + prefix}}
	}
	// Calibrate: how long a whole sync takes in a child.
	durations := map[string]time.Duration{}
	for _, kind := range []string{"fs", "s3"} {
		done, took := stKillOnce(t, newTarget(kind).env, time.Hour)
		if !done {
			t.Fatal("calibration run did not finish")
		}
		durations[kind] = took
	}
	t.Logf("uninterrupted sync in a child: %v", durations)
	rng := rand.New(rand.NewPCG(seed, 9))
	kinds := []string{"fs", "fs", "fs", "fs", "fs", "fs", "fs", "fs", "fs", "fs", "s3", "s3", "s3"}
	for i, kind := range kinds {
		tg := newTarget(kind)
		kills := 1 + i%3/2 // every third trial is killed twice
		var delays []string
		for k := 0; k < kills; k++ {
			// Anywhere from the start to near the end (runs vary).
			d := time.Duration(rng.Int64N(int64(durations[kind]) * 4 / 5))
			if done, _ := stKillOnce(t, tg.env, d); done {
				delays = append(delays, "finished before kill at "+d.String())
				break
			}
			delays = append(delays, "killed at "+d.Round(time.Millisecond).String())
			// Right after the kill: whatever looks finished is complete.
			vres, err := tg.store.Verify(ctx, VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}}, nil)
			if err != nil && !errors.Is(err, ErrNotFound) {
				t.Fatalf("trial %d: verify after kill: %v", i, err)
			}
			if vres != nil && len(vres.Failed) > 0 {
				t.Fatalf("trial %d (%s, %v): finished-looking snapshots are broken: %s", i, kind, delays, stJSON(vres.Failed))
			}
			if tg.dir != "" && vres != nil && vres.Snapshots > 0 {
				pbsfmt(t, "check", tg.dir)
			}
		}
		res := stSync(t, src, tg.store, SyncRequest{MaxDepth: -1})
		if err := res.Outcome(); err != nil {
			t.Fatalf("trial %d: rerun: %v\n%s", i, err, stJSON(res))
		}
		stSameListing(t, src, tg.store)
		TestVerifyAll(t, tg.store, nsnaps, 0)
		if tg.dir != "" {
			pbsfmt(t, "check", tg.dir)
		}
		t.Logf("trial %d (%s): %s; rerun synced %d snapshots, %d chunks (%d present)", i, kind, strings.Join(delays, ", "), res.Snapshots, res.Chunks, res.ChunksPresent)
	}
}

// stBenchMB is the datastore size of BenchmarkSyncFSToS3 (env
// PBSQ_BENCH_MB, default 1024).
func stBenchMB() int {
	if v, err := strconv.Atoi(os.Getenv("PBSQ_BENCH_MB")); err == nil && v > 0 {
		return v
	}
	return 1024
}

// stBenchFile writes a file of random MiB random bytes interleaved (every
// fifth 4 MiB piece) with compressible text, a quarter as much again.
func stBenchFile(b *testing.B, dir, base, seed string, random int) string {
	b.Helper()
	p := filepath.Join(dir, base)
	fh, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	pieces := random / 4
	for i := 0; i < pieces+pieces/4; i++ {
		text := i%5 == 4
		if _, err := fh.Write(stData(fmt.Sprint(seed, i), 4<<20, text)); err != nil {
			b.Fatal(err)
		}
	}
	if err := fh.Close(); err != nil {
		b.Fatal(err)
	}
	return p
}

// stDirBytes sums the sizes of the files below dir.
func stDirBytes(b *testing.B, dir string) (int64, int) {
	b.Helper()
	var n int64
	files := 0
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n += fi.Size()
		files++
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return n, files
}

// BenchmarkSyncFSToS3 measures a first sync of a datastore of
// PBSQ_BENCH_MB MiB of chunks (random and compressible data, written with
// Store.Backup) into versitygw, against `rclone copy --transfers 32` of
// the same directory to the same server. ratio_vs_rclone is rclone's time
// over pbsq's (above 1: pbsq is faster). The source has no 65536-directory
// chunk skeleton, which would only slow rclone's walk down.
func BenchmarkSyncFSToS3(b *testing.B) {
	rclone, err := exec.LookPath("rclone")
	if err != nil {
		b.Skip("rclone not installed")
	}
	ctx := context.Background()
	mb := stBenchMB()
	srv := s3test.StartVersity(b)
	srcDir := b.TempDir()
	src := TestStore(b, TestName("src"), TestAt(srcDir))
	in := b.TempDir()
	img := stBenchFile(b, in, "drive-scsi0.img", "img", mb*3/5)
	pxar := stBenchFile(b, in, "root.pxar", "pxar", mb*2/5)
	for _, bk := range []struct {
		group, file string
	}{{"vm/100", img}, {"ct/200", pxar}} {
		g, _ := name.ParseGroup(name.Root, bk.group)
		if _, err := src.Backup(ctx, BackupRequest{Group: g, Time: stT0, Owner: "root@pam", Sources: []BackupSource{{Path: bk.file}}}, nil); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.RemoveAll(in); err != nil {
		b.Fatal(err)
	}
	size, files := stDirBytes(b, srcDir)
	b.Logf("source datastore: %.1f MiB in %d files", float64(size)/(1<<20), files)
	b.SetBytes(size)

	// rclone's AWS SDK refuses a CA bundle with its own transport; the
	// endpoint is plain http anyway.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "AWS_CA_BUNDLE=") })
	env = append(env,
		"RCLONE_CONFIG_X_TYPE=s3", "RCLONE_CONFIG_X_PROVIDER=Other",
		"RCLONE_CONFIG_X_ENDPOINT="+srv.Endpoint(), "RCLONE_CONFIG_X_REGION="+s3test.Region,
		"RCLONE_CONFIG_X_ACCESS_KEY_ID="+s3test.AccessKey, "RCLONE_CONFIG_X_SECRET_ACCESS_KEY="+s3test.SecretKey,
		"RCLONE_CONFIG_X_FORCE_PATH_STYLE=true")
	var pbsqTime, rcloneTime time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst := TestStore(b, TestName("dst"), TestOn("s3", srv.New(b, srv.UniquePrefix("dst"))))
		start := time.Now()
		res, err := Sync(ctx, src, dst, SyncRequest{MaxDepth: -1}, nil)
		pbsqTime += time.Since(start)
		if err != nil || res.Outcome() != nil || res.Snapshots != 2 {
			b.Fatalf("sync: %v %s", err, stJSON(res))
		}
		b.StopTimer()
		cmd := exec.Command(rclone, "copy", srcDir, "X:"+srv.Bucket()+"/"+srv.UniquePrefix("rclone"),
			"--s3-no-check-bucket", "--transfers", "32")
		cmd.Env = env
		start = time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("rclone: %v\n%s", err, out)
		}
		rcloneTime += time.Since(start)
		b.StartTimer()
	}
	b.StopTimer()
	mib := float64(size) / (1 << 20) * float64(b.N)
	b.ReportMetric(mib/pbsqTime.Seconds(), "pbsq_MiB/s")
	b.ReportMetric(mib/rcloneTime.Seconds(), "rclone_MiB/s")
	b.ReportMetric(rcloneTime.Seconds()/pbsqTime.Seconds(), "ratio_vs_rclone")
}

// BenchmarkResyncUnchanged: 1,000 small snapshots (20 groups of 50), a
// first sync against an unchanged re-sync, into a filesystem and into
// versitygw. resync_fraction is the re-sync's time over the first's.
func BenchmarkResyncUnchanged(b *testing.B) {
	src := TestStore(b, TestName("src"))
	for g := 0; g < 20; g++ {
		for h := 0; h < 50; h++ {
			stSmall(b, src, "", fmt.Sprintf("vm/%d", 100+g), h)
		}
	}
	srv := s3test.StartVersity(b)
	for _, kind := range []string{"fs", "versitygw"} {
		b.Run("fs-to-"+kind, func(b *testing.B) {
			var first, again time.Duration
			for i := 0; i < b.N; i++ {
				var dst *Store
				if kind == "fs" {
					dst = TestStore(b, TestName("dst"))
				} else {
					dst = TestStore(b, TestName("dst"), TestOn("s3", srv.New(b, srv.UniquePrefix("dst"))))
				}
				start := time.Now()
				res := stSync(b, src, dst, SyncRequest{MaxDepth: -1})
				first += time.Since(start)
				if res.Snapshots != 1000 {
					b.Fatalf("first sync: %s", stJSON(res))
				}
				start = time.Now()
				res = stSync(b, src, dst, SyncRequest{MaxDepth: -1})
				again += time.Since(start)
				if res.Snapshots != 0 || res.FilesWritten != 0 || res.Chunks != 0 || res.SnapshotsPresent != 20 {
					b.Fatalf("re-sync: %s", stJSON(res))
				}
			}
			n := float64(b.N)
			b.ReportMetric(first.Seconds()/n, "first_s")
			b.ReportMetric(again.Seconds()/n, "resync_s")
			b.ReportMetric(again.Seconds()/first.Seconds(), "resync_fraction")
		})
	}
}
