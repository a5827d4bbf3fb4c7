package flock

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
)

func mustGroup(t *testing.T, ns, g string) name.Group {
	t.Helper()
	gr, err := name.ParseGroup(name.MustNamespace(ns), g)
	if err != nil {
		t.Fatal(err)
	}
	return gr
}

func TestRelPath(t *testing.T) {
	at := time.Date(2022, 5, 2, 8, 11, 33, 0, time.UTC)
	for _, tc := range []struct {
		req  lock.Request
		want string
	}{
		{lock.NamespaceRequest("main", name.MustNamespace("a"), lock.Shared), "main/a/.ns-lock"},
		{lock.NamespaceRequest("main", name.MustNamespace("a/b/c"), lock.Exclusive), "main/a:b:c/.ns-lock"},
		{lock.NamespaceRequest("main", name.Root, lock.Shared), "main/.ns-lock"},
		{lock.GroupRequest("main", mustGroup(t, "", "vm/100")), "main/vm-100"},
		{lock.GroupRequest("main", mustGroup(t, "a/b", "ct/my-ct")), `main/a:b/ct-my\x2dct`},
		{lock.SnapshotRequest("main", name.NewSnapshot(mustGroup(t, "", "vm/100"), at), lock.Shared),
			`main/vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z`},
		{lock.SnapshotRequest("store2", name.NewSnapshot(mustGroup(t, "n1/n2/n3/n4/n5/n6/n7", "vm/100"), at), lock.Exclusive),
			`store2/n1:n2:n3:n4:n5:n6:n7/vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z`},
	} {
		got := RelPath(tc.req)
		if got != tc.want {
			t.Errorf("RelPath(%s) = %q, want %q", tc.req, got, tc.want)
		}
		back, ok := decode(strings.Split(got, "/"))
		tc.req.Mode = lock.ModeUnknown
		if !ok || back.ID() != tc.req.ID() {
			t.Errorf("decode(%q) = %s, %v; want %s", got, back, ok, tc.req)
		}
	}
}

func TestRelPathHashed(t *testing.T) {
	id := "x" + strings.Repeat("-", 100) // each '-' escapes to 4 bytes
	g := mustGroup(t, "a/b", "vm/"+id)
	at := time.Date(2022, 5, 2, 8, 11, 33, 0, time.UTC)
	for _, tc := range []struct {
		req  lock.Request
		rel  string
		kind lock.Kind
	}{
		{lock.GroupRequest("main", g), g.RelPath(), lock.Group},
		{lock.SnapshotRequest("main", name.NewSnapshot(g, at), lock.Shared), name.NewSnapshot(g, at).RelPath(), lock.Snapshot},
	} {
		got := RelPath(tc.req)
		dir, file := filepath.Split(got)
		if dir != "main/a:b/hashed/" {
			t.Errorf("hashed lock of %s in %q, want main/a:b/hashed/", tc.req, dir)
		}
		enc := escapePath(tc.rel)
		sum := sha256.Sum256([]byte(tc.rel))
		want := enc[:80] + "..." + enc[len(enc)-80:] + "-" + hex.EncodeToString(sum[:])
		if file != want || len(file) >= maxName {
			t.Errorf("hashed name %q (%d bytes), want %q", file, len(file), want)
		}
		back, ok := decode(strings.Split(got, "/"))
		if !ok || back.Kind != tc.kind || back.NS.String() != "a/b" || back.Group.Type != "vm" || !strings.HasSuffix(back.Group.ID, "…") {
			t.Errorf("decode(%q) = %+v, %v", got, back, ok)
		}
	}
	// A root-namespace hashed lock lives in <store>/hashed, which must not
	// be mistaken for a namespace called "hashed".
	rootHashed := RelPath(lock.GroupRequest("main", mustGroup(t, "", "vm/"+id)))
	if back, ok := decode(strings.Split(rootHashed, "/")); !ok || !back.NS.IsRoot() || back.Kind != lock.Group {
		t.Errorf("decode(%q) = %+v, %v; want a root group", rootHashed, back, ok)
	}
	nsHashed := RelPath(lock.GroupRequest("main", mustGroup(t, "hashed", "vm/100")))
	if back, ok := decode(strings.Split(nsHashed, "/")); !ok || back.NS.String() != "hashed" || back.Group.ID != "100" {
		t.Errorf("decode(%q) = %+v, %v; want vm/100 in namespace hashed", nsHashed, back, ok)
	}
}

func TestDecodeIgnoresForeignFiles(t *testing.T) {
	for _, p := range []string{"main", "x/a/.ns-lock", "main/a/b/c/d", "main/a:b/not a lock", "main/bad-type-1", "main/BAD:/.ns-lock"} {
		if req, ok := decode(strings.Split(p, "/")); ok {
			t.Errorf("decode(%q) = %s, want not a lock file", p, req)
		}
	}
}

func TestParseProcLocks(t *testing.T) {
	data := []byte(`1: FLOCK  ADVISORY  WRITE 1397 00:19:2453 0 EOF
1: -> FLOCK  ADVISORY  WRITE 1400 00:19:2453 0 EOF
2: FLOCK  ADVISORY  READ 1398 fd:01:77 0 EOF
3: POSIX  ADVISORY  WRITE 533 08:01:1234 0 EOF
4: OFDLCK ADVISORY  READ  -1 00:06:9 0 EOF
`)
	got := parseProcLocks(data)
	if l := got[fileID{0, 0x19, 2453}]; len(l) != 1 || l[0] != (procLock{pid: 1397, write: true}) {
		t.Errorf("00:19:2453: %v", l)
	}
	if l := got[fileID{0xfd, 1, 77}]; len(l) != 1 || l[0] != (procLock{pid: 1398}) {
		t.Errorf("fd:01:77: %v", l)
	}
	if len(got) != 2 {
		t.Errorf("%d files, want 2 (waiters and record locks ignored): %v", len(got), got)
	}
}
