package datastore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend/local"
	"github.com/pbsq/pbsq/datastore/name"
)

// allSnapshots lists every snapshot of the store (finished or not), through
// the same scope listing the operations use.
func allSnapshots(t testing.TB, s *Store) []SnapshotInfo {
	t.Helper()
	snaps, err := s.scopeSnapshots(context.Background(), Scope{NS: name.Root, MaxDepth: -1})
	if err != nil {
		t.Fatal(err)
	}
	return snaps
}

// pbsfmt runs the independent Python writer/checker and returns its
// standard output; it fails t if the script fails.
func pbsfmt(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command("python3", append([]string{"testdata/pbsfmt.py"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("pbsfmt.py %v: %v\n%s%s", args, err, out.String(), errb.String())
	}
	return out.String()
}

func TestCreateMakesChunkDirs(t *testing.T) {
	// 65536 mkdirs and their removal wait on the disk: beside the
	// CPU-bound TestMoveCrashPoints.
	t.Parallel()
	dir := t.TempDir()
	b, _ := local.New(dir)
	ctx := context.Background()
	if _, err := Create(ctx, "main", b, Options{}); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Join(dir, ".chunks"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1<<16 || ents[0].Name() != "0000" || ents[len(ents)-1].Name() != "ffff" {
		t.Fatalf("%d prefix dirs, first %s", len(ents), ents[0].Name())
	}
	ok, err := IsDatastore(ctx, b)
	if err != nil || !ok {
		t.Fatalf("IsDatastore = %v, %v", ok, err)
	}
	// PBS's chunk-store process lock file, empty, as PBS creates it.
	if fi, err := os.Lstat(filepath.Join(dir, ".lock")); err != nil || !fi.Mode().IsRegular() || fi.Size() != 0 {
		t.Fatalf(".lock after create: %v %v", fi, err)
	}
}

func TestNamespaces(t *testing.T) {
	env := NewTestEnv(t, TestFlock(-1))
	s, dir := env.Store, env.Dir
	ctx := context.Background()
	if err := s.CreateNamespace(ctx, name.MustNamespace("a/b/c")); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateNamespace(ctx, name.MustNamespace("a/x")); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, "ns/a/ns/b/ns/c")); err != nil || !st.IsDir() {
		t.Fatalf("mkdir -p layout: %v", err)
	}
	all, err := s.ListNamespaces(ctx, name.Root, -1)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range all {
		got = append(got, n.String())
	}
	if strings.Join(got, ",") != ",a,a/b,a/b/c,a/x" {
		t.Fatalf("ListNamespaces = %q", got)
	}
	one, _ := s.ListNamespaces(ctx, name.MustNamespace("a"), 1)
	if len(one) != 3 {
		t.Fatalf("depth-limited list = %v", one)
	}
	if _, err := s.ListNamespaces(ctx, name.MustNamespace("nope"), -1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing namespace: %v", err)
	}
	if err := s.RemoveNamespace(ctx, name.MustNamespace("a/b")); !strings.Contains(fmtErr(err), "child") {
		t.Fatalf("removed a namespace with children: %v", err)
	}
	TestBackup(t, s, "a/x", "vm/1", time.Unix(1700000000, 0), TestFile(t, "f.conf", 10, 0))
	before := TestDirTree(t, dir)
	if err := s.RemoveNamespace(ctx, name.MustNamespace("a/x")); err == nil {
		t.Fatal("removed a namespace with a group")
	}
	TestSameTree(t, "removing a namespace with a group", before, TestDirTree(t, dir))
	if err := s.RemoveNamespaceLocked(ctx, name.MustNamespace("a/b/c")); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.NamespaceExists(ctx, name.MustNamespace("a/b/c")); ok {
		t.Fatal("a/b/c still exists")
	}
	if err := s.RemoveNamespace(ctx, name.Root); !errors.Is(err, name.ErrInvalid) {
		t.Fatalf("root removal: %v", err)
	}
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestBackupPassesIndependentChecker writes a snapshot with every archive
// kind and checks it with the Python checker written from the spec.
func TestBackupPassesIndependentChecker(t *testing.T) {
	env := NewTestEnv(t, TestFlock(-1))
	s, dir := env.Store, env.Dir
	img := TestFile(t, "disk.img", 9<<20+123, 9<<20) // random, then zero chunks, short tail
	tar := TestFile(t, "data.tar", 11<<20, 0)
	conf := filepath.Join(t.TempDir(), "vm.conf")
	_ = os.WriteFile(conf, bytes.Repeat([]byte("memory: 2048\n"), 100), 0o644)
	res := TestBackup(t, s, "a", "vm/100", time.Unix(1700000000, 0), img, tar, conf)
	if len(res.Files) != 3 || res.Files[0].Filename != "disk.img.fidx" || res.Files[1].Filename != "data.tar.didx" || res.Files[2].Filename != "vm.conf.blob" {
		t.Fatalf("files = %+v", res.Files)
	}
	out := pbsfmt(t, "check", dir)
	if !strings.Contains(out, "checked 1 snapshots") || !strings.Contains(out, " 0 errors") {
		t.Fatalf("checker: %s", out)
	}
	// All-zero 4 MiB chunks are stored once.
	zero := Digest(zeroChunkDigest())
	if ok, _ := s.ChunkExists(context.Background(), zero); !ok {
		t.Fatal("zero chunk missing")
	}
	// A second backup of the same data stores no new chunk.
	res2 := TestBackup(t, s, "a", "vm/100", time.Unix(1700000100, 0), img, tar, conf)
	if res2.NewChunks != 0 {
		t.Fatalf("second backup stored %d new chunks", res2.NewChunks)
	}
	if out := pbsfmt(t, "check", dir); !strings.Contains(out, "checked 2 snapshots") {
		t.Fatalf("checker: %s", out)
	}
}

func TestBackupRefusals(t *testing.T) {
	env := NewTestEnv(t, TestFlock(-1))
	s, dir := env.Store, env.Dir
	f := TestFile(t, "x.bin", 1000, 0)
	TestBackup(t, s, "", "vm/1", time.Unix(1700000000, 0), f)
	before := TestDirTree(t, dir)
	ctx := context.Background()
	g, _ := name.NewGroup(name.Root, "vm", "1")
	cases := map[string]BackupRequest{
		"older time":    {Group: g, Time: time.Unix(1600000000, 0), Owner: "root@pam", Sources: []BackupSource{{Path: f}}},
		"other owner":   {Group: g, Time: time.Unix(1800000000, 0), Owner: "bob@pbs", Sources: []BackupSource{{Path: f}}},
		"bad owner":     {Group: g, Time: time.Unix(1800000000, 0), Owner: "bob", Sources: []BackupSource{{Path: f}}},
		"missing file":  {Group: g, Time: time.Unix(1800000000, 0), Owner: "root@pam", Sources: []BackupSource{{Path: "/nonexistent"}}},
		"bad archive":   {Group: g, Time: time.Unix(1800000000, 0), Owner: "root@pam", Sources: []BackupSource{{Path: f, Archive: "../x"}}},
		"duplicate":     {Group: g, Time: time.Unix(1800000000, 0), Owner: "root@pam", Sources: []BackupSource{{Path: f}, {Path: f}}},
		"no files":      {Group: g, Time: time.Unix(1800000000, 0), Owner: "root@pam"},
		"missing ns":    {Group: name.Group{NS: name.MustNamespace("nope"), Type: "vm", ID: "1"}, Time: time.Unix(1800000000, 0), Owner: "root@pam", Sources: []BackupSource{{Path: f}}},
		"invalid group": {Group: name.Group{NS: name.Root, Type: "vm", ID: "../1"}, Time: time.Unix(1800000000, 0), Owner: "root@pam", Sources: []BackupSource{{Path: f}}},
	}
	for what, req := range cases {
		if _, err := s.Backup(ctx, req, nil); !errors.Is(err, name.ErrInvalid) && !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: err = %v, want name.ErrInvalid/ErrNotFound", what, err)
		}
	}
	TestSameTree(t, "the refused backups", before, TestDirTree(t, dir))
}

// TestListsIndependentStore reads a store written by the Python program
// from the spec and compares the listing with what it says it wrote.
func TestListsIndependentStore(t *testing.T) {
	dir := t.TempDir()
	want := pbsfmt(t, "write", dir)
	s := TestStore(t, TestName("indep"), TestAt(dir))
	ctx := context.Background()
	type entry struct {
		NS         string  `json:"ns"`
		Type       string  `json:"backup-type"`
		ID         string  `json:"backup-id"`
		BackupTime int64   `json:"backup-time"`
		Time       string  `json:"time"`
		Finished   bool    `json:"finished"`
		Protected  bool    `json:"protected"`
		Verify     *string `json:"verify-state"`
	}
	var expected []entry
	if err := json.Unmarshal([]byte(want), &expected); err != nil {
		t.Fatal(err)
	}
	var got []entry
	nss, err := s.ListNamespaces(ctx, name.Root, -1)
	if err != nil {
		t.Fatal(err)
	}
	var nsNames []string
	for _, n := range nss {
		nsNames = append(nsNames, n.String())
		groups, err := s.ListGroups(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range groups {
			snaps, err := s.ListSnapshots(ctx, g)
			if err != nil {
				t.Fatal(err)
			}
			for _, sn := range snaps {
				e := entry{NS: n.String(), Type: string(g.Type), ID: g.ID, BackupTime: sn.Time.Unix(),
					Time: sn.Time.Format(time.RFC3339), Finished: sn.Finished, Protected: sn.Protected}
				if sn.Finished {
					m, err := s.ReadManifest(ctx, sn.Snapshot)
					if err != nil {
						t.Fatal(err)
					}
					if vs := m.VerifyState(); vs != nil {
						st := vs.State
						e.Verify = &st
					}
				}
				got = append(got, e)
			}
		}
	}
	if strings.Join(nsNames, ",") != ",a,a/b,a/b/empty" {
		t.Errorf("namespaces %q", nsNames)
	}
	key := func(e entry) string { return e.NS + "|" + e.Type + "|" + e.ID + "|" + e.Time }
	sort.Slice(expected, func(i, j int) bool { return key(expected[i]) < key(expected[j]) })
	sort.Slice(got, func(i, j int) bool { return key(got[i]) < key(got[j]) })
	gj, _ := json.Marshal(got)
	ej, _ := json.Marshal(expected)
	if string(gj) != string(ej) {
		t.Fatalf("listing differs:\n got %s\nwant %s", gj, ej)
	}
}
