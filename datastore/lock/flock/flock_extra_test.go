package flock_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/flock"
	"github.com/pbsq/pbsq/datastore/name"
)

var snapTime = time.Date(2022, 5, 2, 8, 11, 33, 0, time.UTC)

func snapReq(t *testing.T, mode lock.Mode) lock.Request {
	g, err := name.ParseGroup(name.MustNamespace("a/b"), "vm/100")
	if err != nil {
		t.Fatal(err)
	}
	return lock.SnapshotRequest("main", name.NewSnapshot(g, snapTime), mode)
}

func TestUnwritableLocksDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(file, "locks")
	_, err := flock.New(flock.Options{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), dir) || errors.Is(err, lock.ErrBusy) {
		t.Fatalf("New on %s: %v; want an error naming the dir, not busy", dir, err)
	}

	// The store's dir cannot be created under an existing locks dir.
	dir = t.TempDir()
	b, err := flock.New(flock.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := os.WriteFile(filepath.Join(dir, "main"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = b.TryLock(context.Background(), snapReq(t, lock.Shared), lock.Holder{})
	if err == nil || !strings.Contains(err.Error(), dir) || errors.Is(err, lock.ErrBusy) {
		t.Fatalf("TryLock: %v; want an error naming the locks dir, not busy", err)
	}
	t.Log(err)
}

func TestFilesAndModes(t *testing.T) {
	dir := t.TempDir()
	b, err := flock.New(flock.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	old := unix.Umask(0)
	defer unix.Umask(old)
	l, err := b.TryLock(context.Background(), lock.NamespaceRequest("main", name.MustNamespace("a/b"), lock.Exclusive), lock.Holder{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	for path, want := range map[string]os.FileMode{
		"main": 0o755 | os.ModeDir, "main/a": 0o755 | os.ModeDir, "main/a:b": 0o755 | os.ModeDir,
		"main/a/.ns-lock": 0o644, "main/a:b/.ns-lock": 0o644,
	} {
		st, err := os.Stat(filepath.Join(dir, path))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, st.Mode(), want)
		}
		if !st.IsDir() && st.Size() != 0 {
			t.Errorf("%s: %d bytes; lock files stay empty", path, st.Size())
		}
	}
}

// A PBS on the same host flocks the same files; simulate it with a raw
// flock on the path PBS would use.
func TestInteropWithPBSLockFile(t *testing.T) {
	dir := t.TempDir()
	pbsPath := filepath.Join(dir, "main", "a:b", `vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z`)
	if err := os.MkdirAll(filepath.Dir(pbsPath), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(pbsPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	b, err := flock.New(flock.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if p := b.Path(snapReq(t, lock.Shared)); p != pbsPath {
		t.Fatalf("Path = %s, want %s", p, pbsPath)
	}
	_, err = b.TryLock(context.Background(), snapReq(t, lock.Shared), lock.Holder{})
	if !errors.Is(err, lock.ErrBusy) {
		t.Fatalf("TryLock against PBS's lock: %v, want busy", err)
	}
	held, err := b.Holders(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 1 || held[0].Path != pbsPath || held[0].Request.Kind != lock.Snapshot || held[0].Request.Mode != lock.Exclusive {
		t.Fatalf("Holders = %+v; want PBS's exclusive snapshot lock", held)
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	l, err := b.TryLock(context.Background(), snapReq(t, lock.Exclusive), lock.Holder{})
	if err != nil {
		t.Fatal(err)
	}
	// And PBS is kept out while pbsq holds it.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != unix.EWOULDBLOCK {
		t.Fatalf("PBS-side flock while pbsq holds the lock: %v, want EWOULDBLOCK", err)
	}
	l.Release()
}

const envHelper = "PBSQ_FLOCK_TEST_HOLD"

// TestHelperHold is a child process of TestHolderInOtherProcess: it takes
// the lock file named by its environment and keeps it until stdin closes.
func TestHelperHold(t *testing.T) {
	path := os.Getenv(envHelper)
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
}

func TestHolderInOtherProcess(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b, err := flock.New(flock.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	req := lock.NamespaceRequest("main", name.MustNamespace("a"), lock.Exclusive)
	path := b.Path(req)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHold$", "-test.count=1")
	cmd.Env = append(os.Environ(), envHelper+"="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("helper: %q, %v", line, err)
	}
	pid := cmd.Process.Pid

	_, err = b.TryLock(context.Background(), req, lock.Holder{})
	if !errors.Is(err, lock.ErrBusy) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(pid)) {
		t.Fatalf("TryLock: %v; want busy naming pid %d", err, pid)
	}
	t.Log(err)
	held, err := b.Holders(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 1 || held[0].Holder.PID != pid || held[0].Request.Mode != lock.Shared || held[0].Request.NS.String() != "a" {
		t.Fatalf("Holders = %+v; want shared namespace a held by pid %d", held, pid)
	}
	// Shared with the other process is fine.
	l, err := b.TryLock(context.Background(), lock.NamespaceRequest("main", name.MustNamespace("a/b"), lock.Exclusive), lock.Holder{})
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
}

// A holder may unlink its lock file at the end, before releasing (as PBS
// does when it removes a snapshot). Someone who opened the old file earlier
// must notice ("double stat") instead of holding a lock on an inode that
// newcomers, who create a fresh file, never see.
func TestUnlinkedLockFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b, err := flock.New(flock.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	req := snapReq(t, lock.Exclusive)
	path := b.Path(req)
	deadline := time.Now().Add(700 * time.Millisecond)
	var (
		mu      sync.Mutex
		holders int
		grants  int
		wg      sync.WaitGroup
	)
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				l, err := b.TryLock(context.Background(), req, lock.Holder{})
				if err != nil {
					if !errors.Is(err, lock.ErrBusy) {
						t.Error(err)
						return
					}
					continue
				}
				mu.Lock()
				holders++
				grants++
				if holders > 1 {
					t.Errorf("%d exclusive holders at once", holders)
				}
				mu.Unlock()
				time.Sleep(50 * time.Microsecond)
				mu.Lock()
				holders--
				mu.Unlock()
				_ = os.Remove(path) // the protected work is done; the file goes, then the lock
				_ = l.Release()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d grants", grants)
	if grants == 0 {
		t.Fatal("never granted")
	}
}

// Running as root on a locks dir owned by someone else (PBS's is owned by
// backup), new lock files and dirs get that owner, so they can open them.
func TestOwnerFollowsLocksDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Log("not root: ownership is left to the kernel; checking creation only")
	}
	dir := t.TempDir()
	const uid, gid = 34, 34 // backup:backup on Debian
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
	l, err := b.TryLock(context.Background(), snapReq(t, lock.Exclusive), lock.Holder{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if os.Geteuid() != 0 {
		return
	}
	for _, p := range []string{"main", "main/a:b", filepath.Base(b.Path(snapReq(t, lock.Shared)))} {
		if p[0] != 'm' {
			p = filepath.Join("main/a:b", p)
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(dir, p), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s owned by %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, gid)
		}
	}
}
