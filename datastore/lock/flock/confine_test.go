package flock_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/flock"
	"github.com/pbsq/pbsq/internal/confine"
	"github.com/pbsq/pbsq/internal/treetest"
)

// TestPlantedLinksInLocksDir is issue 21's first reproduction: the locks
// dir belongs to backup, who links locks/<store> (or a namespace dir
// below it) to a directory of root's. pbsq must neither create files
// there nor chown the ones that exist; it refuses with ErrSymlink.
func TestPlantedLinksInLocksDir(t *testing.T) {
	const uid, gid = 34, 34
	for _, tc := range []struct{ name, link string }{
		{"store entry", "main"},
		{"namespace dir below it", "main/a:b"},
		{"hashed dir", "main/a:b/hashed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			victim := filepath.Join(t.TempDir(), "victim")
			treetest.Victim(t, victim)
			// The lock file pbsq would open, present in the victim.
			snapFile := filepath.Base(flock.RelPath(snapReq(t, lock.Shared)))
			if err := os.WriteFile(filepath.Join(victim, snapFile), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(victim, ".ns-lock"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			before := treetest.Snapshot(t, victim)
			dir := t.TempDir()
			if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(tc.link)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(victim, filepath.Join(dir, tc.link)); err != nil {
				t.Fatal(err)
			}
			if os.Geteuid() == 0 {
				if err := os.Chown(dir, uid, gid); err != nil {
					t.Fatal(err)
				}
			}
			b, err := flock.New(flock.Options{Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			reqs := []lock.Request{snapReq(t, lock.Exclusive), snapReq(t, lock.Shared),
				lock.NamespaceRequest("main", snapReq(t, lock.Shared).Snapshot.NS, lock.Exclusive)}
			for _, req := range reqs {
				l, err := b.TryLock(context.Background(), req, lock.Holder{})
				if tc.link == "main/a:b/hashed" && err == nil {
					// Not a hashed name: the link is not on its path.
					l.Release()
					continue
				}
				if !errors.Is(err, confine.ErrSymlink) || errors.Is(err, lock.ErrBusy) {
					t.Errorf("TryLock(%s) = %v, want ErrSymlink", req, err)
				}
				if l != nil {
					l.Release()
				}
			}
			if _, err := b.Holders(context.Background()); err != nil {
				t.Errorf("Holders: %v", err)
			}
			treetest.Unchanged(t, victim, before)
		})
	}
}

// TestExistingLockFilesNotChowned: as root on a backup-owned locks dir, a
// lock file that pbsq did not create in this call keeps its owner (a
// root-only file once became backup's); the ones it creates are backup's.
func TestExistingLockFilesNotChowned(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	const uid, gid = 34, 34
	dir := t.TempDir()
	req := snapReq(t, lock.Shared)
	p := filepath.Join(dir, flock.RelPath(req))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	b, err := flock.New(flock.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l, err := b.TryLock(context.Background(), req, lock.Holder{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 0 || st.Gid != 0 || st.Mode&0o777 != 0o600 {
		t.Errorf("existing lock file now %d:%d %o, want it untouched (0:0 600)", st.Uid, st.Gid, st.Mode&0o777)
	}
	// A group lock file in a new store dir is created by this call: it
	// and its dir are backup's.
	greq := lock.GroupRequest("other", req.Snapshot.Group)
	gl, err := b.TryLock(context.Background(), greq, lock.Holder{})
	if err != nil {
		t.Fatal(err)
	}
	defer gl.Release()
	for _, g := range []string{"other", "other/a:b", flock.RelPath(greq)} {
		if err := unix.Stat(filepath.Join(dir, g), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("created %s owned by %d:%d, want %d:%d", g, st.Uid, st.Gid, uid, gid)
		}
	}
}

// TestFIFOLockFileRefused: a FIFO planted as a lock file neither blocks
// the open nor is locked.
func TestFIFOLockFileRefused(t *testing.T) {
	dir := t.TempDir()
	req := snapReq(t, lock.Shared)
	p := filepath.Join(dir, flock.RelPath(req))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := flock.New(flock.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.TryLock(context.Background(), req, lock.Holder{}); !errors.Is(err, confine.ErrNotRegular) {
		t.Fatalf("TryLock on a FIFO = %v, want ErrNotRegular", err)
	}
}
