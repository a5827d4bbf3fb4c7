// Package backendtest is the conformance suite every backend.Backend
// passes. A backend's tests call Run with a constructor that returns a
// fresh, empty backend for each subtest:
//
//	func TestConformance(t *testing.T) {
//		backendtest.Run(t, func(t *testing.T) backend.Backend { … })
//	}
//
// Subtests run in parallel, each on its own backend.
package backendtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend"
)

// ManyFiles is above S3's 1000-key page and DeleteObjects batch size.
const ManyFiles = 1100

// Run runs the whole suite.
func Run(t *testing.T, newBackend func(t *testing.T) backend.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b backend.Backend)
	}{
		{"ReadWrite", testReadWrite},
		{"Open", testOpen},
		{"AtomicOverwrite", testAtomicOverwrite},
		{"CreateFile", testCreateFile},
		{"CreateFileRace", testCreateFileRace},
		{"Stat", testStat},
		{"List", testList},
		{"PrefixBoundary", testPrefixBoundary},
		{"ManyFiles", testManyFiles},
		{"Remove", testRemove},
		{"MkdirRemoveDir", testMkdirRemoveDir},
		{"Rename", testRename},
		{"RenameDir", testRenameDir},
		{"Copy", testCopy},
		{"Touch", testTouch},
		{"Chunks", testChunks},
		{"InvalidPaths", testInvalidPaths},
		{"ColonKeys", testColonKeys},
		{"WalkErrors", testWalkErrors},
		{"ReadFileMax", testReadFileMax},
		{"Features", testFeatures},
		{"WriteFrom", testWriteFrom},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t)
			tc.fn(t, b)
		})
	}
}

// testFeatures: operations size their work from what the backend says
// about itself, and label metrics with its kind.
func testFeatures(t *testing.T, b backend.Backend) {
	f := b.Features()
	if f.Kind != "fs" && f.Kind != "s3" {
		t.Errorf("Kind %q, want fs or s3", f.Kind)
	}
	if f.InFlight < 1 {
		t.Errorf("InFlight %d, want at least 1", f.InFlight)
	}
	if f.AtomicRename == f.ImplicitDirs {
		t.Errorf("AtomicRename %v and ImplicitDirs %v: the datastore knows a directory store and an object store only", f.AtomicRename, f.ImplicitDirs)
	}
}

// ---- helpers

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func write(t *testing.T, b backend.Backend, name string, data []byte) {
	t.Helper()
	if err := b.WriteFile(ctxT(t), name, data); err != nil {
		t.Fatalf("WriteFile(%q): %v", name, err)
	}
}

func writeS(t *testing.T, b backend.Backend, name, data string) {
	t.Helper()
	write(t, b, name, []byte(data))
}

func read(t *testing.T, b backend.Backend, name string) string {
	t.Helper()
	data, err := b.ReadFile(ctxT(t), name)
	if err != nil {
		t.Fatalf("ReadFile(%q): %v", name, err)
	}
	return string(data)
}

func wantContent(t *testing.T, b backend.Backend, name, want string) {
	t.Helper()
	if got := read(t, b, name); got != want {
		t.Fatalf("ReadFile(%q) = %q, want %q", name, trunc(got), trunc(want))
	}
}

func wantMissing(t *testing.T, b backend.Backend, name string) {
	t.Helper()
	if _, err := b.ReadFile(ctxT(t), name); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("ReadFile(%q) = %v, want fs.ErrNotExist", name, err)
	}
	if _, err := b.Stat(ctxT(t), name); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("Stat(%q) = %v, want fs.ErrNotExist", name, err)
	}
}

func trunc(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%s…(%d bytes)", s[:40], len(s))
	}
	return s
}

// entries renders a listing as "name" for files and "name/" for dirs.
func entries(fis []backend.FileInfo) []string {
	out := make([]string, len(fis))
	for i, fi := range fis {
		out[i] = fi.Name
		if fi.Dir {
			out[i] += "/"
		}
	}
	return out
}

func list(t *testing.T, b backend.Backend, dir string) []string {
	t.Helper()
	fis, err := b.List(ctxT(t), dir)
	if err != nil {
		t.Fatalf("List(%q): %v", dir, err)
	}
	names := entries(fis)
	if !sort.SliceIsSorted(fis, func(i, j int) bool { return fis[i].Name < fis[j].Name }) {
		t.Fatalf("List(%q) not sorted: %q", dir, names)
	}
	return names
}

func wantList(t *testing.T, b backend.Backend, dir string, want ...string) {
	t.Helper()
	if got := list(t, b, dir); !slices.Equal(got, want) {
		t.Fatalf("List(%q) = %q, want %q", dir, got, want)
	}
}

func walk(t *testing.T, b backend.Backend, dir string) map[string]int64 {
	t.Helper()
	var mu sync.Mutex
	got := map[string]int64{}
	err := b.Walk(ctxT(t), dir, func(fi backend.FileInfo) error {
		mu.Lock()
		defer mu.Unlock()
		if fi.Dir {
			t.Errorf("Walk(%q) yielded directory %q", dir, fi.Name)
		}
		if _, dup := got[fi.Name]; dup {
			t.Errorf("Walk(%q) yielded %q twice", dir, fi.Name)
		}
		got[fi.Name] = fi.Size
		return nil
	})
	if err != nil {
		t.Fatalf("Walk(%q): %v", dir, err)
	}
	return got
}

func wantWalk(t *testing.T, b backend.Backend, dir string, want ...string) {
	t.Helper()
	got := walk(t, b, dir)
	names := make([]string, 0, len(got))
	for n := range got {
		names = append(names, n)
	}
	sort.Strings(names)
	sort.Strings(want)
	if !slices.Equal(names, want) {
		t.Fatalf("Walk(%q) = %q, want %q", dir, names, want)
	}
}

// parallel runs fn(i) for i in [0,n) on workers goroutines and fails on the
// first error.
func parallel(t *testing.T, n, workers int, fn func(i int) error) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// ---- tests

func testReadWrite(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	wantMissing(t, b, "a/b/c")
	writeS(t, b, "a/b/c", "first")
	wantContent(t, b, "a/b/c", "first")
	writeS(t, b, "a/b/c", "second, longer")
	wantContent(t, b, "a/b/c", "second, longer")
	writeS(t, b, "a/b/c", "3")
	wantContent(t, b, "a/b/c", "3")

	write(t, b, "empty", nil)
	if data, err := b.ReadFile(ctx, "empty"); err != nil || len(data) != 0 {
		t.Fatalf("ReadFile(empty) = %q, %v", data, err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	write(t, b, "big", big)
	if got, err := b.ReadFile(ctx, "big"); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("ReadFile(big): %d bytes, %v", len(got), err)
	}
	if b.String() == "" {
		t.Error("String() is empty")
	}
}

// testOpen: a streamed read gives the same bytes as ReadFile, missing files
// are fs.ErrNotExist, and closing early releases what the read holds (the
// loop would exhaust an S3 backend's concurrency slots otherwise).
func testOpen(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	big := bytes.Repeat([]byte("streamed data 0123456789"), 1<<16)
	write(t, b, "dir/big", big)
	r, err := backend.Open(ctx, b, "dir/big")
	if err != nil {
		t.Fatalf("Open(dir/big): %v", err)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("Open(dir/big) read %d of %d bytes: %v", len(got), len(big), err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := backend.Open(ctx, b, "dir/missing"); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("Open(dir/missing) = %v, want fs.ErrNotExist", err)
	}
	for i := 0; i < 200; i++ {
		r, err := backend.Open(ctx, b, "dir/big")
		if err != nil {
			t.Fatalf("Open #%d: %v", i, err)
		}
		var head [16]byte
		if _, err := io.ReadFull(r, head[:]); err != nil || string(head[:]) != string(big[:16]) {
			t.Fatalf("Open #%d: read %q, %v", i, head, err)
		}
		r.Close()
	}
}

// testAtomicOverwrite: readers racing a rewriting writer only ever see a
// whole version. Versions differ in byte and length so that a torn or
// truncated read is detectable.
func testAtomicOverwrite(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	const name = "atomic/file"
	version := func(i int) []byte {
		return bytes.Repeat([]byte{byte('a' + i%26)}, 64<<10+i*4099)
	}
	write(t, b, name, version(0))
	const rewrites = 16
	var done atomic.Bool
	var wg sync.WaitGroup
	var reads atomic.Int64
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !done.Load() {
				data, err := b.ReadFile(ctx, name)
				if err != nil {
					t.Errorf("ReadFile during rewrite: %v", err)
					return
				}
				reads.Add(1)
				if len(data) == 0 {
					t.Errorf("read empty content during rewrite")
					return
				}
				i := int(data[0] - 'a')
				want := version(i)
				// i is ambiguous modulo 26; rewrites < 26 keeps it exact.
				if !bytes.Equal(data, want) {
					t.Errorf("torn read: %d bytes starting %q, want %d bytes of it", len(data), data[0], len(want))
					return
				}
			}
		}()
	}
	for i := 1; i <= rewrites; i++ {
		if err := b.WriteFile(ctx, name, version(i)); err != nil {
			t.Errorf("WriteFile #%d: %v", i, err)
			break
		}
	}
	done.Store(true)
	wg.Wait()
	if got, _ := b.ReadFile(ctx, name); !bytes.Equal(got, version(rewrites)) {
		t.Fatalf("final content is not the last version (%d bytes)", len(got))
	}
	t.Logf("%d reads during %d rewrites", reads.Load(), rewrites)
}

func testCreateFile(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	created, err := b.CreateFile(ctx, "c/d/new", []byte("one"))
	if err != nil || !created {
		t.Fatalf("CreateFile(new) = %v, %v; want true, nil", created, err)
	}
	created, err = b.CreateFile(ctx, "c/d/new", []byte("two"))
	if err != nil || created {
		t.Fatalf("second CreateFile = %v, %v; want false, nil", created, err)
	}
	wantContent(t, b, "c/d/new", "one")
	// Over a file written by WriteFile too.
	writeS(t, b, "c/w", "written")
	if created, err := b.CreateFile(ctx, "c/w", []byte("x")); err != nil || created {
		t.Fatalf("CreateFile over WriteFile = %v, %v; want false, nil", created, err)
	}
	wantContent(t, b, "c/w", "written")
	// Empty content.
	if created, err := b.CreateFile(ctx, "c/empty", nil); err != nil || !created {
		t.Fatalf("CreateFile(empty) = %v, %v", created, err)
	}
	wantContent(t, b, "c/empty", "")
}

func testCreateFileRace(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	const racers = 20
	for round := 0; round < 3; round++ {
		name := fmt.Sprintf("race/%d/chunk", round)
		var wg sync.WaitGroup
		start := make(chan struct{})
		results := make([]bool, racers)
		for i := 0; i < racers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				created, err := b.CreateFile(ctx, name, []byte(fmt.Sprintf("racer %d", i)))
				if err != nil {
					t.Errorf("racer %d: %v", i, err)
				}
				results[i] = created
			}()
		}
		close(start)
		wg.Wait()
		winner := -1
		for i, ok := range results {
			if ok {
				if winner >= 0 {
					t.Fatalf("round %d: racers %d and %d both created the file", round, winner, i)
				}
				winner = i
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no racer created the file", round)
		}
		wantContent(t, b, name, fmt.Sprintf("racer %d", winner))
	}
}

func testStat(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	before := time.Now().Add(-time.Minute)
	writeS(t, b, "s/d/e/file", "12345")
	fi, err := b.Stat(ctx, "s/d/e/file")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Name != "file" || fi.Dir || fi.Size != 5 {
		t.Fatalf("Stat(file) = %+v", fi)
	}
	if fi.ModTime.Before(before) || fi.ModTime.After(time.Now().Add(time.Minute)) {
		t.Errorf("Stat(file).ModTime = %v, not about now", fi.ModTime)
	}
	if fi.AccessTime.IsZero() {
		t.Errorf("Stat(file).AccessTime is zero")
	}
	for _, dir := range []string{"s", "s/d", "s/d/e"} {
		fi, err := b.Stat(ctx, dir)
		if err != nil {
			t.Fatalf("Stat(%q): %v", dir, err)
		}
		if !fi.Dir || fi.Name != dir[strings.LastIndex(dir, "/")+1:] {
			t.Fatalf("Stat(%q) = %+v, want dir", dir, fi)
		}
	}
	for _, missing := range []string{"nope", "s/d/nope", "s/d/e/file/below", "s/d/e/fil", "s/d/e/file2"} {
		if _, err := b.Stat(ctx, missing); !errors.Is(err, iofs.ErrNotExist) {
			t.Errorf("Stat(%q) = %v, want fs.ErrNotExist", missing, err)
		}
	}
	// StatFile sees files only: directories and missing names are absent.
	if fi, err := backend.StatFile(ctx, b, "s/d/e/file"); err != nil || fi.Size != 5 || fi.Dir {
		t.Errorf("StatFile(file) = %+v, %v", fi, err)
	}
	for _, notFile := range []string{"s", "s/d/e", "nope", "s/d/e/file2"} {
		if _, err := backend.StatFile(ctx, b, notFile); !errors.Is(err, iofs.ErrNotExist) {
			t.Errorf("StatFile(%q) = %v, want fs.ErrNotExist", notFile, err)
		}
	}
	if fi, err := b.Stat(ctx, ""); err != nil || !fi.Dir {
		t.Errorf("Stat(root) = %+v, %v; want a dir", fi, err)
	}
}

func testList(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	writeS(t, b, "l/b", "bb")
	writeS(t, b, "l/a", "a")
	writeS(t, b, "l/c/x", "x")
	writeS(t, b, "l/d/y/z", "z")
	writeS(t, b, "l/Z", "upper")
	writeS(t, b, "l/a.b", "dot")
	writeS(t, b, "lx/other", "o")
	wantList(t, b, "l", "Z", "a", "a.b", "b", "c/", "d/")
	fis, err := b.List(ctx, "l")
	if err != nil {
		t.Fatal(err)
	}
	for _, fi := range fis {
		switch fi.Name {
		case "b":
			if fi.Size != 2 || fi.ModTime.IsZero() {
				t.Errorf("List entry b = %+v", fi)
			}
		case "c", "d":
			if fi.Size != 0 {
				t.Errorf("dir entry %q has size %d", fi.Name, fi.Size)
			}
		}
	}
	wantList(t, b, "l/d", "y/")
	wantList(t, b, "l/d/y", "z")
	wantList(t, b, "", "l/", "lx/")
	for _, missing := range []string{"nope", "l/nope", "l/d/y/z/nope"} {
		if _, err := b.List(ctx, missing); !errors.Is(err, iofs.ErrNotExist) {
			t.Errorf("List(%q) = %v, want fs.ErrNotExist", missing, err)
		}
	}
	// An empty directory only exists where directories are real.
	if err := b.Mkdir(ctx, "m/n"); err != nil {
		t.Fatalf("Mkdir: %v", err)
	}
	if !b.Features().ImplicitDirs {
		wantList(t, b, "m", "n/")
		wantList(t, b, "m/n")
	} else if got, err := b.List(ctx, "m/n"); err == nil && len(got) != 0 {
		t.Errorf("List(empty implicit dir) = %q", entries(got))
	}
}

// testPrefixBoundary: groups vm/10 and vm/100, namespaces ns/a and ns/ab —
// operations on one must never touch the other (an S3 prefix without the
// trailing "/" would).
func testPrefixBoundary(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	files := []string{
		"vm/10/owner",
		"vm/10/2024-03-01T10:00:00Z/index.json.blob",
		"vm/100/owner",
		"vm/100/2024-03-01T10:00:00Z/index.json.blob",
		"vm/10x",
		"ns/a/vm/1/owner",
		"ns/ab/vm/1/owner",
		"ns/a.b/vm/1/owner",
	}
	for _, f := range files {
		writeS(t, b, f, f)
	}
	wantList(t, b, "vm/10", "2024-03-01T10:00:00Z/", "owner")
	wantList(t, b, "ns", "a/", "a.b/", "ab/")
	wantWalk(t, b, "vm/10", "vm/10/owner", "vm/10/2024-03-01T10:00:00Z/index.json.blob")
	wantWalk(t, b, "ns/a", "ns/a/vm/1/owner")
	if err := b.RemoveDir(ctx, "vm/10"); !errors.Is(err, backend.ErrNotEmpty) {
		t.Fatalf("RemoveDir(vm/10) = %v, want ErrNotEmpty", err)
	}

	if err := b.RemoveAll(ctx, "vm/10"); err != nil {
		t.Fatal(err)
	}
	wantWalk(t, b, "vm", "vm/100/owner", "vm/100/2024-03-01T10:00:00Z/index.json.blob", "vm/10x")
	if _, err := b.Stat(ctx, "vm/10"); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("Stat(vm/10) after RemoveAll = %v, want fs.ErrNotExist", err)
	}
	if _, err := b.List(ctx, "vm/10"); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("List(vm/10) after RemoveAll = %v, want fs.ErrNotExist", err)
	}

	if err := b.RemoveAll(ctx, "ns/a"); err != nil {
		t.Fatal(err)
	}
	wantWalk(t, b, "ns", "ns/ab/vm/1/owner", "ns/a.b/vm/1/owner")
	// An empty ns/a next to a full ns/ab is empty.
	if err := b.Mkdir(ctx, "ns/a"); err != nil {
		t.Fatal(err)
	}
	if err := b.RemoveDir(ctx, "ns/a"); err != nil {
		t.Fatalf("RemoveDir(empty ns/a beside ns/ab) = %v", err)
	}
	if err := b.RemoveDir(ctx, "vm/10"); err != nil {
		t.Fatalf("RemoveDir(missing vm/10 beside vm/100) = %v", err)
	}
	wantList(t, b, "ns", "a.b/", "ab/")
	wantList(t, b, "vm", "100/", "10x")
}

// testManyFiles: more files than one S3 list page / delete batch, both in
// one directory (List paging) and below it (Walk paging, RemoveAll batches).
func testManyFiles(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	name := func(i int) string {
		if i%20 == 0 {
			return fmt.Sprintf("many/sub%d/f%04d", i%3, i)
		}
		return fmt.Sprintf("many/flat/f%04d", i)
	}
	parallel(t, ManyFiles, 16, func(i int) error {
		return b.WriteFile(ctx, name(i), []byte(fmt.Sprint(i)))
	})
	writeS(t, b, "manyx/keep", "k")
	writeS(t, b, "man/keep", "k")

	got := walk(t, b, "many")
	if len(got) != ManyFiles {
		t.Fatalf("Walk(many) found %d files, want %d", len(got), ManyFiles)
	}
	for i := 0; i < ManyFiles; i++ {
		if size, ok := got[name(i)]; !ok || size != int64(len(fmt.Sprint(i))) {
			t.Fatalf("Walk(many): %s missing or wrong size (%d, %v)", name(i), size, ok)
		}
	}
	if all := walk(t, b, ""); len(all) != ManyFiles+2 {
		t.Fatalf("Walk(root) found %d files, want %d", len(all), ManyFiles+2)
	}
	flat := list(t, b, "many/flat")
	if want := ManyFiles - ManyFiles/20; len(flat) != want || flat[0] != "f0001" || flat[len(flat)-1] != fmt.Sprintf("f%04d", ManyFiles-1) {
		t.Fatalf("List(many/flat) has %d entries, want %d", len(flat), want)
	}
	wantList(t, b, "many", "flat/", "sub0/", "sub1/", "sub2/")

	if err := b.RemoveAll(ctx, "many"); err != nil {
		t.Fatalf("RemoveAll(many): %v", err)
	}
	if left := walk(t, b, "many"); len(left) != 0 {
		t.Fatalf("RemoveAll(many) left %d files", len(left))
	}
	wantWalk(t, b, "", "manyx/keep", "man/keep")
	if err := b.RemoveAll(ctx, "many"); err != nil {
		t.Fatalf("RemoveAll(missing) = %v", err)
	}
}

func testRemove(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	writeS(t, b, "r/f", "x")
	writeS(t, b, "r/g", "y")
	if err := b.Remove(ctx, "r/f"); err != nil {
		t.Fatal(err)
	}
	wantMissing(t, b, "r/f")
	wantContent(t, b, "r/g", "y")
	for _, missing := range []string{"r/f", "r/nope", "nodir/nope"} {
		if err := b.Remove(ctx, missing); err != nil {
			t.Errorf("Remove(%q) = %v, want nil", missing, err)
		}
	}
	// RemoveAll of a single file.
	if err := b.RemoveAll(ctx, "r/g"); err != nil {
		t.Fatal(err)
	}
	wantMissing(t, b, "r/g")
}

func testMkdirRemoveDir(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	if err := b.Mkdir(ctx, "d1/d2"); err != nil {
		t.Fatal(err)
	}
	if err := b.Mkdir(ctx, "d1/d2"); err != nil {
		t.Fatalf("Mkdir(existing) = %v", err)
	}
	writeS(t, b, "d1/d2/f", "x")
	if err := b.RemoveDir(ctx, "d1/d2"); !errors.Is(err, backend.ErrNotEmpty) {
		t.Fatalf("RemoveDir(non-empty) = %v, want ErrNotEmpty", err)
	}
	if err := b.RemoveDir(ctx, "d1"); !errors.Is(err, backend.ErrNotEmpty) {
		t.Fatalf("RemoveDir(non-empty parent) = %v, want ErrNotEmpty", err)
	}
	wantContent(t, b, "d1/d2/f", "x")
	if err := b.Remove(ctx, "d1/d2/f"); err != nil {
		t.Fatal(err)
	}
	if err := b.RemoveDir(ctx, "d1/d2"); err != nil {
		t.Fatalf("RemoveDir(empty) = %v", err)
	}
	if _, err := b.Stat(ctx, "d1/d2"); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("Stat(removed dir) = %v, want fs.ErrNotExist", err)
	}
	if err := b.RemoveDir(ctx, "d1"); err != nil {
		t.Fatalf("RemoveDir(empty parent) = %v", err)
	}
	if err := b.RemoveDir(ctx, "d1"); err != nil {
		t.Fatalf("RemoveDir(missing) = %v", err)
	}
	// The root is never removed, even when empty.
	if err := b.RemoveAll(ctx, ""); !errors.Is(err, backend.ErrInvalidPath) {
		t.Fatalf("RemoveAll(root) = %v, want ErrInvalidPath", err)
	}
	if err := b.RemoveDir(ctx, ""); !errors.Is(err, backend.ErrInvalidPath) {
		t.Fatalf("RemoveDir(root) = %v, want ErrInvalidPath", err)
	}
	if _, err := b.List(ctx, ""); err != nil {
		t.Fatalf("List(root) after RemoveDir(root) = %v", err)
	}
}

func testRename(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	writeS(t, b, "mv/a", "A")
	if err := b.Rename(ctx, "mv/a", "mv/sub/b"); err != nil {
		t.Fatal(err)
	}
	wantMissing(t, b, "mv/a")
	wantContent(t, b, "mv/sub/b", "A")

	// The target must not be replaced.
	writeS(t, b, "mv/c", "C")
	if err := b.Rename(ctx, "mv/c", "mv/sub/b"); err == nil {
		t.Fatal("Rename onto an existing file succeeded")
	}
	wantContent(t, b, "mv/c", "C")
	wantContent(t, b, "mv/sub/b", "A")

	if err := b.Rename(ctx, "mv/nope", "mv/x"); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("Rename(missing) = %v, want fs.ErrNotExist", err)
	}
	wantMissing(t, b, "mv/x")
}

func testRenameDir(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	writeS(t, b, "rd/x/1", "one")
	writeS(t, b, "rd/x/sub/2", "two")
	err := b.Rename(ctx, "rd/x", "rd/y")
	if !b.Features().AtomicRename {
		if !errors.Is(err, backend.ErrNotSupported) {
			t.Fatalf("Rename(dir) without AtomicRename = %v, want ErrNotSupported", err)
		}
		wantWalk(t, b, "rd", "rd/x/1", "rd/x/sub/2")
		return
	}
	if err != nil {
		t.Fatalf("Rename(dir): %v", err)
	}
	wantWalk(t, b, "rd", "rd/y/1", "rd/y/sub/2")
	wantContent(t, b, "rd/y/sub/2", "two")

	writeS(t, b, "rd/z/1", "other")
	if err := b.Rename(ctx, "rd/y", "rd/z"); err == nil {
		t.Fatal("Rename(dir) onto an existing dir succeeded")
	}
	wantWalk(t, b, "rd", "rd/y/1", "rd/y/sub/2", "rd/z/1")
	wantContent(t, b, "rd/z/1", "other")
}

func testCopy(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	writeS(t, b, "cp/src", "source")
	if err := b.Copy(ctx, "cp/src", "cp/dst/deep"); err != nil {
		t.Fatal(err)
	}
	wantContent(t, b, "cp/dst/deep", "source")
	writeS(t, b, "cp/src", "changed")
	wantContent(t, b, "cp/dst/deep", "source")
	// Copy replaces an existing target.
	if err := b.Copy(ctx, "cp/src", "cp/dst/deep"); err != nil {
		t.Fatal(err)
	}
	wantContent(t, b, "cp/dst/deep", "changed")
	if err := b.Copy(ctx, "cp/nope", "cp/x"); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("Copy(missing) = %v, want fs.ErrNotExist", err)
	}
	wantMissing(t, b, "cp/x")
}

func testTouch(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	const name = ".chunks/0123/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	writeS(t, b, name, "chunk")
	before, err := b.Stat(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	// S3 LastModified has one-second resolution, and a backend may compare
	// it to the server's Date header (itself up to a second stale on some
	// servers) to see whether a touch took effect.
	time.Sleep(2100 * time.Millisecond)
	if err := b.Touch(ctx, name); err != nil {
		t.Fatal(err)
	}
	after, err := b.Stat(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if !after.AccessTime.After(before.AccessTime) {
		t.Fatalf("Touch did not advance AccessTime: %v -> %v", before.AccessTime, after.AccessTime)
	}
	wantContent(t, b, name, "chunk")
	if err := b.Touch(ctx, "nope/chunk"); !errors.Is(err, iofs.ErrNotExist) {
		t.Fatalf("Touch(missing) = %v, want fs.ErrNotExist", err)
	}
}

func testChunks(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	var names []string
	for i := 0; i < 3; i++ {
		data := []byte(fmt.Sprintf("chunk %d", i))
		sum := sha256.Sum256(data)
		digest := hex.EncodeToString(sum[:])
		name := ".chunks/" + digest[:4] + "/" + digest
		names = append(names, name)
		if created, err := b.CreateFile(ctx, name, data); err != nil || !created {
			t.Fatalf("CreateFile(%s) = %v, %v", name, created, err)
		}
		if got := read(t, b, name); got != string(data) {
			t.Fatalf("chunk %d round trip: %q", i, got)
		}
		fi, err := b.Stat(ctx, name)
		if err != nil || fi.Size != int64(len(data)) || fi.Name != digest {
			t.Fatalf("Stat(%s) = %+v, %v", name, fi, err)
		}
		wantList(t, b, ".chunks/"+digest[:4], digest)
	}
	writeS(t, b, "vm/100/owner", "root@pam")
	wantList(t, b, "", ".chunks/", "vm/")
	if l := list(t, b, ".chunks"); len(l) != 3 {
		t.Fatalf("List(.chunks) = %q", l)
	}
	wantWalk(t, b, ".chunks", names...)
	wantWalk(t, b, "", append(names, "vm/100/owner")...)
	if fi, err := b.Stat(ctx, ".chunks"); err != nil || !fi.Dir {
		t.Fatalf("Stat(.chunks) = %+v, %v", fi, err)
	}
	if err := b.Remove(ctx, names[0]); err != nil {
		t.Fatal(err)
	}
	wantMissing(t, b, names[0])
	wantWalk(t, b, ".chunks", names[1:]...)
}

func testInvalidPaths(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	writeS(t, b, "ok/file", "x")
	// Paths that are never valid, and names that are not files.
	bad := []string{"../x", "..", "/abs", "/", "a//b", "a/", "a/../b", "./a", "a/./b", "."}
	notFiles := []string{""}
	check := func(op, p string, err error) {
		t.Helper()
		if !errors.Is(err, backend.ErrInvalidPath) {
			t.Errorf("%s(%q) = %v, want ErrInvalidPath", op, p, err)
		}
	}
	for _, p := range append(bad, notFiles...) {
		check("WriteFile", p, b.WriteFile(ctx, p, []byte("bad")))
		_, err := b.CreateFile(ctx, p, []byte("bad"))
		check("CreateFile", p, err)
		_, err = b.ReadFile(ctx, p)
		check("ReadFile", p, err)
		check("Remove", p, b.Remove(ctx, p))
		check("Touch", p, b.Touch(ctx, p))
		check("Copy from", p, b.Copy(ctx, p, "ok/copy"))
		check("Copy to", p, b.Copy(ctx, "ok/file", p))
		check("Rename from", p, b.Rename(ctx, p, "ok/moved"))
		check("Rename to", p, b.Rename(ctx, "ok/file", p))
		check("RemoveAll", p, b.RemoveAll(ctx, p))
	}
	for _, p := range bad {
		_, err := b.Stat(ctx, p)
		check("Stat", p, err)
		_, err = b.List(ctx, p)
		check("List", p, err)
		check("Walk", p, b.Walk(ctx, p, func(backend.FileInfo) error { return nil }))
		check("Mkdir", p, b.Mkdir(ctx, p))
		check("RemoveDir", p, b.RemoveDir(ctx, p))
	}
	wantWalk(t, b, "", "ok/file")
	wantList(t, b, "", "ok/")
	wantContent(t, b, "ok/file", "x")
}

func testColonKeys(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	const snap = "ns/prod/vm/100/2024-03-01T10:00:00Z"
	writeS(t, b, snap+"/index.json.blob", "manifest")
	writeS(t, b, snap+"/drive-scsi0.img.fidx", "index")
	wantContent(t, b, snap+"/index.json.blob", "manifest")
	wantList(t, b, "ns/prod/vm/100", "2024-03-01T10:00:00Z/")
	wantList(t, b, snap, "drive-scsi0.img.fidx", "index.json.blob")
	if fi, err := b.Stat(ctx, snap); err != nil || !fi.Dir || fi.Name != "2024-03-01T10:00:00Z" {
		t.Fatalf("Stat(snapshot) = %+v, %v", fi, err)
	}
	const other = "ns/prod/vm/100/2024-03-02T10:00:00Z"
	if err := b.Copy(ctx, snap+"/index.json.blob", other+"/index.json.blob"); err != nil {
		t.Fatalf("Copy with ':' = %v", err)
	}
	if err := b.Rename(ctx, snap+"/drive-scsi0.img.fidx", other+"/drive-scsi0.img.fidx"); err != nil {
		t.Fatalf("Rename with ':' = %v", err)
	}
	if err := b.Touch(ctx, other+"/index.json.blob"); err != nil {
		t.Fatalf("Touch with ':' = %v", err)
	}
	wantWalk(t, b, "ns/prod/vm/100", snap+"/index.json.blob", other+"/index.json.blob", other+"/drive-scsi0.img.fidx")
	wantContent(t, b, other+"/index.json.blob", "manifest")
	// Other characters S3 clients commonly mangle.
	for _, name := range []string{"odd/a+b", "odd/a b", "odd/ä%20ö", "odd/q?x=1&y", "odd/#hash"} {
		writeS(t, b, name, name)
		if err := b.Copy(ctx, name, name+".copy"); err != nil {
			t.Fatalf("Copy(%q): %v", name, err)
		}
		wantContent(t, b, name+".copy", name)
	}
	if err := b.RemoveAll(ctx, snap); err != nil {
		t.Fatal(err)
	}
	wantList(t, b, "ns/prod/vm/100", "2024-03-02T10:00:00Z/")
}

func testWalkErrors(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	if err := b.Walk(ctx, "missing", func(fi backend.FileInfo) error {
		t.Errorf("Walk(missing) yielded %q", fi.Name)
		return nil
	}); err != nil {
		t.Fatalf("Walk(missing) = %v, want nil", err)
	}
	for i := 0; i < 5; i++ {
		writeS(t, b, fmt.Sprintf("w/%d", i), "x")
	}
	stop := errors.New("stop")
	calls := 0
	err := b.Walk(ctx, "w", func(backend.FileInfo) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("Walk with failing fn = %v after %d calls, want stop after 1", err, calls)
	}
	// fn may call back into the backend (GC removes while walking).
	err = b.Walk(ctx, "w", func(fi backend.FileInfo) error { return b.Remove(ctx, fi.Name) })
	if err != nil {
		t.Fatal(err)
	}
	wantWalk(t, b, "w")
}

// testReadFileMax: a bounded read returns files up to the limit and
// refuses larger ones with ErrTooLarge, whatever the backend.
func testReadFileMax(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	writeS(t, b, "m/small", "0123456789")
	for _, max := range []int64{10, 11, 1 << 20} {
		got, err := backend.ReadFileMax(ctx, b, "m/small", max)
		if err != nil || string(got) != "0123456789" {
			t.Errorf("ReadFileMax(small, %d) = %q, %v", max, got, err)
		}
	}
	for _, max := range []int64{1, 9} {
		if got, err := backend.ReadFileMax(ctx, b, "m/small", max); !errors.Is(err, backend.ErrTooLarge) {
			t.Errorf("ReadFileMax(small, %d) = %q, %v; want ErrTooLarge", max, got, err)
		}
	}
	write(t, b, "m/empty", nil)
	if got, err := backend.ReadFileMax(ctx, b, "m/empty", 1); err != nil || len(got) != 0 {
		t.Errorf("ReadFileMax(empty) = %q, %v", got, err)
	}
	if _, err := backend.ReadFileMax(ctx, b, "m/missing", 10); !errors.Is(err, iofs.ErrNotExist) {
		t.Errorf("ReadFileMax(missing) = %v, want fs.ErrNotExist", err)
	}
	if _, ok := b.(backend.MaxReader); !ok {
		t.Errorf("%T does not implement backend.MaxReader", b)
	}
}

// pieceReader hands out data in pieces of at most n bytes, then fails
// with err (io.EOF for a clean end).
type pieceReader struct {
	data []byte
	n    int
	err  error
}

func (r *pieceReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	k := copy(p[:min(len(p), r.n)], r.data)
	r.data = r.data[k:]
	return k, nil
}

var errSourceFailed = errors.New("source failed")

// testWriteFrom: a streamed write gives the same file as WriteFile, small
// or larger than any buffer a backend holds (20 MiB, read in odd pieces);
// a reader failing midway leaves the old content, or no file, and no
// partial file or temp file in a listing.
func testWriteFrom(t *testing.T, b backend.Backend) {
	ctx := ctxT(t)
	if _, ok := b.(backend.StreamWriter); !ok {
		t.Errorf("%T does not implement backend.StreamWriter", b)
	}
	big := make([]byte, 20<<20+17)
	for i := range big {
		big[i] = byte(i*7 + i>>13)
	}
	small := []byte("streamed small file")
	for _, c := range []struct {
		name string
		data []byte
	}{{"w/small", small}, {"w/empty", nil}, {"w/big", big}} {
		if err := backend.WriteFrom(ctx, b, c.name, &pieceReader{data: c.data, n: 65521, err: io.EOF}); err != nil {
			t.Fatalf("WriteFrom(%s): %v", c.name, err)
		}
		got, err := b.ReadFile(ctx, c.name)
		if err != nil || !bytes.Equal(got, c.data) {
			t.Fatalf("WriteFrom(%s) then ReadFile: %d bytes (%x), want %d (%x); %v",
				c.name, len(got), sha256.Sum256(got), len(c.data), sha256.Sum256(c.data), err)
		}
	}
	// Failing readers: before and after a backend's first buffer fills.
	for _, cut := range []int{5, 9 << 20, 20 << 20} {
		for _, name := range []string{"w/small", "w/new"} {
			err := backend.WriteFrom(ctx, b, name, &pieceReader{data: big[:cut], n: 1 << 20, err: errSourceFailed})
			if !errors.Is(err, errSourceFailed) {
				t.Fatalf("WriteFrom(%s) from a reader failing after %d bytes = %v, want its error", name, cut, err)
			}
		}
		wantContent(t, b, "w/small", string(small))
		wantMissing(t, b, "w/new")
	}
	// Overwriting streams replace the whole file.
	if err := backend.WriteFrom(ctx, b, "w/big", bytes.NewReader(small)); err != nil {
		t.Fatal(err)
	}
	wantContent(t, b, "w/big", string(small))
	wantList(t, b, "w", "big", "empty", "small")
}
