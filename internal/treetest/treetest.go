// Package treetest snapshots a directory tree (path, type, mode, owner,
// content hash, link target) so that tests can show an operation left a
// tree outside a datastore byte for byte and owner for owner unchanged.
package treetest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// Entry is one path of a tree.
type Entry struct {
	Mode     fs.FileMode
	UID, GID uint32
	Hash     string // content of a regular file
	Link     string // target of a symbolic link
}

func (e Entry) String() string {
	return fmt.Sprintf("%v uid=%d gid=%d sha256=%.12s link=%q", e.Mode, e.UID, e.GID, e.Hash, e.Link)
}

// Tree maps a path relative to the snapshotted root ("." for the root) to
// its entry.
type Tree map[string]Entry

// Snapshot records dir and everything below it, never following links.
func Snapshot(t testing.TB, dir string) Tree {
	t.Helper()
	tree := Tree{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sys := st.Sys().(*syscall.Stat_t)
		e := Entry{Mode: st.Mode(), UID: sys.Uid, GID: sys.Gid}
		switch {
		case st.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(data)
			e.Hash = hex.EncodeToString(sum[:])
		case st.Mode()&fs.ModeSymlink != 0:
			if e.Link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		tree[rel] = e
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	return tree
}

// Diff lists the differences between two snapshots, empty when equal.
func Diff(before, after Tree) []string {
	var out []string
	for p, b := range before {
		a, ok := after[p]
		switch {
		case !ok:
			out = append(out, "removed "+p)
		case a != b:
			out = append(out, fmt.Sprintf("changed %s: %v -> %v", p, b, a))
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			out = append(out, "added "+p)
		}
	}
	slices.Sort(out)
	return out
}

// Unchanged fails t when dir differs from before.
func Unchanged(t testing.TB, dir string, before Tree) {
	t.Helper()
	if d := Diff(before, Snapshot(t, dir)); len(d) > 0 {
		t.Errorf("tree %s outside the store changed:\n  %s", dir, strings.Join(d, "\n  "))
	}
}

// OwnedBy fails t unless every path below dir (dir included) belongs to
// uid and gid.
func OwnedBy(t testing.TB, dir string, uid, gid uint32) {
	t.Helper()
	var wrong []string
	for p, e := range Snapshot(t, dir) {
		if e.UID != uid || e.GID != gid {
			wrong = append(wrong, fmt.Sprintf("%s (%d:%d)", p, e.UID, e.GID))
		}
	}
	slices.Sort(wrong)
	if len(wrong) > 0 {
		t.Errorf("%d paths below %s not owned by %d:%d: %s", len(wrong), dir, uid, gid, strings.Join(wrong, ", "))
	}
}

// Victim creates a small tree at dir to be attacked: files of several
// modes, owned by root, and a sub-directory.
func Victim(t testing.TB, dir string) Tree {
	t.Helper()
	files := map[string]string{
		"secret":              "root-only secret\n",
		"x.json":              `{"id":"victim"}`,
		"owner":               "victim@pam\n",
		"sub/data":            "data",
		"sub/index.json.blob": "not a blob",
	}
	for p, c := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return Snapshot(t, dir)
}
