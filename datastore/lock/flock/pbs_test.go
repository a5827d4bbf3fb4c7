package flock_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/flock"
	"github.com/pbsq/pbsq/datastore/name"
)

// TestManifestRelPath: the manifest lock sits where PBS's
// lock_file_path_helper puts "<type>/<id>/<time>/.index.json.lck".
func TestManifestRelPath(t *testing.T) {
	g, _ := name.ParseGroup(name.MustNamespace("a/b"), "vm/100")
	if got, want := flock.ManifestRelPath("main", name.NewSnapshot(g, snapTime)),
		`main/a:b/vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z-.index.json.lck`; got != want {
		t.Errorf("ManifestRelPath = %s, want %s", got, want)
	}
	g, _ = name.ParseGroup(name.Root, "ct/7")
	if got, want := flock.ManifestRelPath("main", name.NewSnapshot(g, snapTime)),
		`main/ct-7-2022\x2d05\x2d02T08\x3a11\x3a33Z-.index.json.lck`; got != want {
		t.Errorf("ManifestRelPath = %s, want %s", got, want)
	}
	// A long ID: PBS's hashed form.
	id := strings.Repeat("a-", 60) + "z"
	g, err := name.ParseGroup(name.Root, "host/"+id)
	if err != nil {
		t.Fatal(err)
	}
	rel := "host/" + id + "/2022-05-02T08:11:33Z/.index.json.lck"
	enc := `host-` + strings.Repeat(`a\x2d`, 60) + `z-2022\x2d05\x2d02T08\x3a11\x3a33Z-.index.json.lck`
	sum := sha256.Sum256([]byte(rel))
	want := "main/hashed/" + enc[:80] + "..." + enc[len(enc)-80:] + "-" + hex.EncodeToString(sum[:])
	if got := flock.ManifestRelPath("main", name.NewSnapshot(g, snapTime)); got != want {
		t.Errorf("hashed ManifestRelPath = %s, want %s", got, want)
	}
}

// TestLockManifest: a held manifest lock is busy (wrapping lock.ErrBusy)
// after the wait; released, it can be taken again.
func TestLockManifest(t *testing.T) {
	b, err := flock.New(flock.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	snap := snapReq(t, lock.Exclusive).Snapshot
	release, err := b.LockManifest(ctx, "main", snap, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(b.Dir(), flock.ManifestRelPath("main", snap))); err != nil {
		t.Fatal(err)
	}
	_, err = b.LockManifest(ctx, "main", snap, 100*time.Millisecond)
	var be *flock.ManifestBusyError
	if !errors.Is(err, lock.ErrBusy) || !errors.As(err, &be) {
		t.Fatalf("second LockManifest: %v; want busy", err)
	}
	release()
	release2, err := b.LockManifest(ctx, "main", snap, 0)
	if err != nil {
		t.Fatal(err)
	}
	release2()
}

// TestOldLocking: with <locks dir>/../old-locking present, no lock is
// taken (New, TryLock, manifest lock, journal), with an error that says
// why and is not "busy".
func TestOldLocking(t *testing.T) {
	run := t.TempDir()
	dir := filepath.Join(run, "locks")
	b, err := flock.New(flock.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(run, "old-locking"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, flock.ErrOldLocking) || errors.Is(err, lock.ErrBusy) ||
			!strings.Contains(err.Error(), "old-locking") || !strings.Contains(err.Error(), "reboot") {
			t.Errorf("%s: %v; want an old-locking refusal that says why", what, err)
		}
	}
	_, err = flock.New(flock.Options{Dir: dir})
	check("New", err)
	_, err = b.TryLock(context.Background(), snapReq(t, lock.Shared), lock.Holder{})
	check("TryLock", err)
	_, err = b.LockManifest(context.Background(), "main", snapReq(t, lock.Shared).Snapshot, 0)
	check("LockManifest", err)
	_, err = b.OpenMoveJournal(context.Background(), "main")
	check("OpenMoveJournal", err)
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("lock files created despite old-locking: %d", len(ents))
	}
}

// TestMoveJournal: the journal is opened for appending under an exclusive
// flock (a second open waits, then is busy), 0660, and a symlink in its
// place is refused. It is never readable by others (0660 as PBS).
func TestMoveJournal(t *testing.T) {
	b, err := flock.New(flock.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	f, err := b.OpenMoveJournal(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("/a\n"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(b.MoveJournalPath("main"))
	if err != nil || fi.Mode().Perm()&0o117 != 0 {
		t.Errorf("journal mode %v (%v)", fi.Mode(), err)
	}
	if testing.Short() {
		f.Close()
	} else {
		// The second opener waits MoveJournalWait (PBS's 10 s), then fails.
		_, err = b.OpenMoveJournal(ctx, "main")
		if !errors.Is(err, lock.ErrBusy) {
			t.Errorf("second open while held: %v; want busy", err)
		}
		f.Close()
	}
	f, err = b.OpenMoveJournal(ctx, "main")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("/b\n"); err != nil { // appended, whatever the offset
		t.Fatal(err)
	}
	f.Close()
	if raw, _ := os.ReadFile(b.MoveJournalPath("main")); string(raw) != "/a\n/b\n" {
		t.Errorf("journal %q", raw)
	}

	b2, _ := flock.New(flock.Options{Dir: t.TempDir()})
	if err := os.MkdirAll(filepath.Dir(b2.MoveJournalPath("main")), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", b2.MoveJournalPath("main")); err != nil {
		t.Fatal(err)
	}
	if _, err := b2.OpenMoveJournal(ctx, "main"); err == nil {
		t.Error("a symlinked journal was opened")
	}
}
