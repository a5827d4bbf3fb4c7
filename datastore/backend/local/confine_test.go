package local_test

import (
	"context"
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/local"
	"github.com/pbsq/pbsq/internal/treetest"
)

// plantedStore is a store whose "ns/x" is a link to a victim directory
// outside, whose "ns/y/owner" is a link to a victim file, and whose
// ".chunks/abcd" is a link to the victim's sub-directory.
func plantedStore(t *testing.T) (b *local.FS, victim string, before treetest.Tree) {
	t.Helper()
	victim = filepath.Join(t.TempDir(), "victim")
	treetest.Victim(t, victim)
	dir := t.TempDir()
	for _, d := range []string{"ns/y", ".chunks"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		"ns/x":         victim,
		"ns/y/owner":   filepath.Join(victim, "secret"),
		".chunks/abcd": filepath.Join(victim, "sub"),
		"rel":          "../../" + filepath.Base(filepath.Dir(victim)) + "/victim",
	}
	for l, target := range links {
		if err := os.Symlink(target, filepath.Join(dir, l)); err != nil {
			t.Fatal(err)
		}
	}
	before = treetest.Snapshot(t, victim)
	b, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, victim, before
}

// TestConfinedSymlinks runs every operation through every planted link:
// each fails with backend.ErrSymlink naming the link (or, for operations
// on the link itself that cannot reach the target, succeeds harmlessly),
// and the victim tree is unchanged, content and owners.
func TestConfinedSymlinks(t *testing.T) {
	ctx := context.Background()
	b, victim, before := plantedStore(t)
	wantLink := func(op, p string, err error) {
		t.Helper()
		if !errors.Is(err, backend.ErrSymlink) {
			t.Errorf("%s(%q) = %v, want ErrSymlink", op, p, err)
		}
	}
	writeS := func(p string) {
		t.Helper()
		if err := b.WriteFile(ctx, p, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	writeS("ns/y/file")
	// Paths through a linked directory, and the linked file itself.
	through := []string{"ns/x/secret", "ns/x/sub/data", ".chunks/abcd/data", "rel/secret"}
	for _, p := range append(through, "ns/y/owner") {
		_, err := b.ReadFile(ctx, p)
		wantLink("ReadFile", p, err)
		_, err = backend.ReadFileMax(ctx, b, p, 100)
		wantLink("ReadFileMax", p, err)
		_, err = b.ReadFileInto(ctx, p, nil)
		wantLink("ReadFileInto", p, err)
		_, err = b.Open(ctx, p)
		wantLink("Open", p, err)
		_, err = b.Stat(ctx, p)
		wantLink("Stat", p, err)
		wantLink("Copy", p, b.Copy(ctx, p, "copied"))
		wantLink("Rename", p, b.Rename(ctx, p, "renamed"))
	}
	for _, p := range through {
		wantLink("WriteFile", p, b.WriteFile(ctx, p, []byte("x")))
		wantLink("WriteFile", p, b.WriteFile(ctx, p+".new", []byte("x")))
		wantLink("WriteFile", p, b.WriteFile(ctx, p+"/deeper/f", []byte("x")))
		_, err := b.CreateFile(ctx, p+".new", []byte("x"))
		wantLink("CreateFile", p, err)
		wantLink("Copy to", p, b.Copy(ctx, "ns/y/file", p+".copy"))
		wantLink("Rename to", p, b.Rename(ctx, "ns/y/file", p+".moved"))
		wantLink("Mkdir", p, b.Mkdir(ctx, p+".d/e"))
		wantLink("Touch", p, b.Touch(ctx, p))
		wantLink("Remove", p, b.Remove(ctx, p))
		wantLink("RemoveAll", p, b.RemoveAll(ctx, p))
		wantLink("RemoveDir", p, b.RemoveDir(ctx, p))
	}
	for _, d := range []string{"ns/x", "ns/x/sub", ".chunks/abcd", "rel"} {
		_, err := b.List(ctx, d)
		wantLink("List", d, err)
		wantLink("Walk", d, b.Walk(ctx, d, func(backend.FileInfo) error { return nil }))
		wantLink("RemoveAll", d, b.RemoveAll(ctx, d))
		wantLink("RemoveDir", d, b.RemoveDir(ctx, d))
		wantLink("Rename", d, b.Rename(ctx, d, "moved-dir"))
		_, err = b.Stat(ctx, d)
		wantLink("Stat", d, err)
	}
	// Listing, walking or removing a tree that holds a link names the
	// link and removes nothing.
	for _, d := range []string{"", "ns", ".chunks"} {
		_, err := b.List(ctx, d)
		wantLink("List", d, err)
		wantLink("Walk", d, b.Walk(ctx, d, func(backend.FileInfo) error { return nil }))
	}
	wantLink("RemoveAll", "ns", b.RemoveAll(ctx, "ns"))
	wantLink("RemoveAll", ".chunks", b.RemoveAll(ctx, ".chunks"))
	if got := read(t, b, "ns/y/file"); got != "x" {
		t.Errorf("RemoveAll(ns) refused but removed ns/y/file")
	}
	_, err := b.List(ctx, "ns")
	var msg string
	if err != nil {
		msg = err.Error()
	}
	if want := filepath.Join(b.Base(), "ns/x"); !errors.Is(err, backend.ErrSymlink) || !strings.Contains(msg, want) {
		t.Errorf("List(ns) = %v, want an error naming %s", err, want)
	}
	// The links are still there: reported, not removed.
	for _, l := range []string{"ns/x", "ns/y/owner", ".chunks/abcd", "rel"} {
		if st, err := os.Lstat(filepath.Join(b.Base(), l)); err != nil || st.Mode()&iofs.ModeSymlink == 0 {
			t.Errorf("link %s: %v", l, err)
		}
	}
	// A link as the last component is replaced by a write and removed by
	// Remove, never written or removed through; Touch touches the link.
	if err := b.Touch(ctx, "ns/y/owner"); err != nil {
		t.Errorf("Touch(link) = %v", err)
	}
	if err := b.WriteFile(ctx, "ns/y/owner", []byte("root@pam\n")); err != nil {
		t.Errorf("WriteFile(link) = %v", err)
	}
	if got := read(t, b, "ns/y/owner"); got != "root@pam\n" {
		t.Errorf("ns/y/owner = %q after WriteFile", got)
	}
	if err := os.Symlink(filepath.Join(victim, "x.json"), filepath.Join(b.Base(), "ns/y/w.json")); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(ctx, "ns/y/w.json"); err != nil {
		t.Errorf("Remove(link) = %v", err)
	}
	if _, err := os.Lstat(filepath.Join(b.Base(), "ns/y/w.json")); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("Remove(link) left %v", err)
	}
	treetest.Unchanged(t, victim, before)
}

func read(t *testing.T, b *local.FS, p string) string {
	t.Helper()
	data, err := b.ReadFile(context.Background(), p)
	if err != nil {
		t.Fatalf("ReadFile(%s): %v", p, err)
	}
	return string(data)
}

// TestNonRegularNeverBlocks: a FIFO (and a socket, a directory) where a
// file is expected is refused at once with ErrNotRegular; reading a FIFO
// with no writer would block for good.
func TestNonRegularNeverBlocks(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, p := range []string{"fifo", "adir"} {
			_, err := b.ReadFile(ctx, p)
			if !errors.Is(err, backend.ErrNotRegular) {
				t.Errorf("ReadFile(%s) = %v, want ErrNotRegular", p, err)
			}
			if _, err := b.Open(ctx, p); !errors.Is(err, backend.ErrNotRegular) {
				t.Errorf("Open(%s) = %v, want ErrNotRegular", p, err)
			}
			if _, err := b.ReadFileInto(ctx, p, nil); !errors.Is(err, backend.ErrNotRegular) {
				t.Errorf("ReadFileInto(%s) = %v, want ErrNotRegular", p, err)
			}
			if _, err := b.ReadFileMax(ctx, p, 10); !errors.Is(err, backend.ErrNotRegular) {
				t.Errorf("ReadFileMax(%s) = %v, want ErrNotRegular", p, err)
			}
		}
		if err := b.Copy(ctx, "fifo", "copy"); !errors.Is(err, backend.ErrNotRegular) {
			t.Errorf("Copy(fifo) = %v, want ErrNotRegular", err)
		}
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute): // a hang, not a slow machine
		t.Fatal("reading a FIFO blocked")
	}
}

// TestCreatedFilesBelongToStoreOwner: as root, everything the backend
// creates in a store owned by another user is given to that user; an
// existing file of someone else is never chowned.
func TestCreatedFilesBelongToStoreOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	ctx := context.Background()
	const uid, gid = 34, 34
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rootfile"), []byte("r"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	b, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.WriteFile(ctx, "a/b/c/file", []byte("x")))
	_, err = b.CreateFile(ctx, ".chunks/0000/0000aa", []byte("chunk"))
	must(err)
	must(b.Mkdir(ctx, "ns/n1/ns/n2"))
	must(b.Rename(ctx, "a/b/c/file", "moved/deep/file"))
	must(b.Copy(ctx, "moved/deep/file", "copies/file"))
	must(b.Touch(ctx, "copies/file"))
	must(os.Remove(filepath.Join(dir, "rootfile")))
	treetest.OwnedBy(t, dir, uid, gid)
	for _, d := range []string{".chunks", ".chunks/0000"} {
		st, err := os.Stat(filepath.Join(dir, d))
		must(err)
		if st.Mode().Perm() != 0o750 {
			t.Errorf("%s mode %v, want 0750 as PBS", d, st.Mode().Perm())
		}
	}
}

// TestReadFileIntoBuffers: the caller's buffer is used when it is large
// enough (exactly the file's size included) and replaced otherwise.
func TestReadFileIntoBuffers(t *testing.T) {
	ctx := context.Background()
	b, err := local.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	data := []byte(strings.Repeat("0123456789", 100))
	if err := b.WriteFile(ctx, "f", data); err != nil {
		t.Fatal(err)
	}
	for _, c := range []int{0, 10, len(data) - 1, len(data), len(data) + 1, 4096} {
		buf := make([]byte, 7, c+7)[7:]
		got, err := b.ReadFileInto(ctx, "f", buf)
		if err != nil || string(got) != string(data) {
			t.Fatalf("cap %d: %d bytes, %v", c, len(got), err)
		}
		if reused := c >= len(data) && &got[0] == &buf[:1][0]; c >= len(data) && !reused {
			t.Errorf("cap %d: buffer not reused", c)
		}
	}
	for _, max := range []int64{int64(len(data)), int64(len(data)) + 1} {
		if _, err := b.ReadFileMax(ctx, "f", max); err != nil {
			t.Errorf("ReadFileMax(%d): %v", max, err)
		}
	}
	if _, err := b.ReadFileMax(ctx, "f", int64(len(data))-1); !errors.Is(err, backend.ErrTooLarge) {
		t.Errorf("ReadFileMax(size-1) = %v, want ErrTooLarge", err)
	}
}
