package datastore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/lock/flock"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/datastore/prune"
)

// These tests play PBS's side with PBS's own primitives: a child process
// holding classic POSIX record locks (F_SETLK, whole file) on <store>/.lock
// as proxmox-sys's ProcessLocker does, util-linux flock(1) holding a
// manifest lock, and a move journal written in PBS's format.

// TestHelperPBS is the child process that plays a PBS process. Modes:
// hold-read / hold-write take the record lock on PBS_PATH and keep it
// until stdin closes; try-write attempts PBS GC's exclusive lock once,
// try-read a PBS writer's shared one, and prints OK or BUSY.
func TestHelperPBS(t *testing.T) {
	mode := os.Getenv("PBSQ_PBS_HELPER")
	if mode == "" {
		t.Skip("child process of the PBS interop tests")
	}
	f, err := os.OpenFile(os.Getenv("PBSQ_PBS_PATH"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	lk := &unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart, Start: 0, Len: 0}
	if mode != "hold-read" && mode != "try-read" {
		lk.Type = unix.F_WRLCK
	}
	err = unix.FcntlFlock(f.Fd(), unix.F_SETLK, lk)
	if mode == "try-write" || mode == "try-read" {
		if err != nil {
			fmt.Println("BUSY")
		} else {
			fmt.Println("OK")
		}
		return
	}
	if err != nil {
		t.Fatalf("child: %s lock: %v", mode, err)
	}
	fmt.Println("LOCKED")
	_, _ = io.Copy(io.Discard, os.Stdin) // hold until the parent closes stdin
}

// ptChild runs TestHelperPBS in mode on path and returns its output's
// first line once it is there, and a func that ends it.
func ptChild(t *testing.T, mode, path string) (line string, pid int, stop func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPBS$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PBSQ_PBS_HELPER="+mode, "PBSQ_PBS_PATH="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			stdin.Close()
			_ = cmd.Wait()
		})
	}
	t.Cleanup(stop)
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if l := sc.Text(); l == "LOCKED" || l == "OK" || l == "BUSY" {
			go func() { _, _ = io.Copy(io.Discard, out) }()
			if l != "LOCKED" {
				// A try: its lock, if it got one, goes with the process.
				stop()
			}
			return l, cmd.Process.Pid, stop
		}
	}
	stop()
	t.Fatalf("PBS helper %s on %s ended without answering", mode, path)
	return "", 0, nil
}

func ptWantProcessBusy(t *testing.T, what string, err error, pid int) {
	t.Helper()
	var pe *ProcessLockBusyError
	if !errors.Is(err, lock.ErrBusy) || !errors.As(err, &pe) {
		t.Fatalf("%s: %v; want a busy chunk store lock", what, err)
	}
	if pe.PID != pid || !strings.Contains(err.Error(), ".lock") || !strings.Contains(err.Error(), fmt.Sprint(pid)) {
		t.Errorf("%s: %v; want it to name .lock and pid %d", what, err, pid)
	}
}

// TestPBSWriterRefusesPbsqGC: while a "PBS backup" holds the shared record
// lock on .lock, pbsq's GC waits its window, then gives up with a busy
// error naming the lock and the holder, having written nothing; once the
// writer is gone it runs.
func TestPBSWriterRefusesPbsqGC(t *testing.T) {
	env := NewTestEnv(t, TestFlock(300*time.Millisecond), TestPBSLocks())
	s, dir := env.Store, env.Dir
	TestBackup(t, s, "", "vm/100", gtT0, TestFile(t, "a.img", 100<<10, 0))
	before := TestDirTree(t, dir)
	_, pid, stop := ptChild(t, "hold-read", filepath.Join(dir, ".lock"))
	_, err := s.GC(context.Background(), GCRequest{Now: gtLater}, nil)
	ptWantProcessBusy(t, "GC beside a PBS writer", err, pid)
	TestSameTree(t, "the refused GC", before, TestDirTree(t, dir))
	stop()
	if _, err := s.GC(context.Background(), GCRequest{Now: gtLater}, nil); err != nil {
		t.Fatalf("GC after the PBS writer ended: %v", err)
	}
}

// TestPBSGCRefusesPbsqWriters: while a "PBS GC" holds the exclusive record
// lock, pbsq's backup, sync into the store and move are refused (busy,
// naming the lock and PBS's pid) and write nothing.
func TestPBSGCRefusesPbsqWriters(t *testing.T) {
	ctx := context.Background()
	env := NewTestEnv(t, TestFlock(200*time.Millisecond), TestPBSLocks())
	s, dir := env.Store, env.Dir
	TestBackup(t, s, "", "vm/100", gtT0, TestFile(t, "a.img", 100<<10, 0))
	if err := s.CreateNamespace(ctx, name.MustNamespace("other")); err != nil {
		t.Fatal(err)
	}
	src := TestStore(t, TestName("src"), TestFlock(-1))
	TestBackup(t, src, "", "vm/200", gtT0, TestFile(t, "b.img", 100<<10, 0))
	before := TestDirTree(t, dir)
	_, pid, stop := ptChild(t, "hold-write", filepath.Join(dir, ".lock"))

	g, _ := name.NewGroup(name.Root, "vm", "100")
	_, err := s.Backup(ctx, BackupRequest{Group: g, Time: gtT0.Add(time.Hour), Owner: "root@pam",
		Sources: []BackupSource{{Path: TestFile(t, "c.img", 1000, 0)}}}, nil)
	ptWantProcessBusy(t, "backup", err, pid)
	_, err = Sync(ctx, src, s, SyncRequest{MaxDepth: -1}, nil)
	ptWantProcessBusy(t, "sync", err, pid)
	_, err = s.MoveGroup(ctx, MoveGroupRequest{Group: g, TargetNS: name.MustNamespace("other")}, nil)
	ptWantProcessBusy(t, "move-group", err, pid)
	_, err = s.MoveNamespace(ctx, MoveNamespaceRequest{NS: name.MustNamespace("other"), TargetNS: name.MustNamespace("moved"), MaxDepth: -1}, nil)
	ptWantProcessBusy(t, "move-namespace", err, pid)
	TestSameTree(t, "a refused writer", before, TestDirTree(t, dir))
	// PBS's GC also keeps a pbsq GC out.
	_, err = s.GC(ctx, GCRequest{Now: gtLater}, nil)
	ptWantProcessBusy(t, "GC beside a PBS GC", err, pid)

	stop()
	if _, err := Sync(ctx, src, s, SyncRequest{MaxDepth: -1}, nil); err != nil {
		t.Fatalf("sync after PBS's GC ended: %v", err)
	}
}

// TestPbsqWriterRefusesPBSGC: a "PBS GC" cannot start while a pbsq backup,
// sync into the store, move-group or move-namespace runs, nor while a pbsq
// GC runs; it can once they are done. Nor can a "PBS backup" while a pbsq
// GC runs. pbsq's own
// backup and GC still run side by side (the writer registry covers them).
func TestPbsqWriterRefusesPBSGC(t *testing.T) {
	ctx := context.Background()
	env := NewTestEnv(t, TestFlock(-1), TestPBSLocks())
	s, dir := env.Store, env.Dir
	lockPath := filepath.Join(dir, ".lock")
	TestBackup(t, s, "", "vm/100", gtT0, TestFile(t, "a.img", 100<<10, 0))
	g, _ := name.NewGroup(name.Root, "vm", "100")

	var during, duringGC, gcInBackup string
	var once, onceGC sync.Once
	_, err := s.Backup(ctx, BackupRequest{Group: g, Time: gtT0.Add(time.Hour), Owner: "root@pam",
		Sources: []BackupSource{{Path: TestFile(t, "b.img", 3*FixedChunkSize, 0)}}}, func(Progress) {
		once.Do(func() {
			during, _, _ = ptChild(t, "try-write", lockPath)
			if _, err := s.GC(ctx, GCRequest{}, func(Progress) {
				onceGC.Do(func() { gcInBackup, _, _ = ptChild(t, "try-write", lockPath) })
			}); err != nil {
				gcInBackup = "pbsq GC failed beside a pbsq backup: " + err.Error()
			}
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if during != "BUSY" {
		t.Errorf("PBS GC during a pbsq backup: %s, want BUSY", during)
	}
	if gcInBackup != "BUSY" {
		t.Errorf("PBS GC during a pbsq GC (beside a pbsq backup): %s, want BUSY", gcInBackup)
	}
	var onceAlone sync.Once
	var writerDuringGC string
	if _, err := s.GC(ctx, GCRequest{}, func(Progress) {
		onceAlone.Do(func() {
			duringGC, _, _ = ptChild(t, "try-write", lockPath)
			writerDuringGC, _, _ = ptChild(t, "try-read", lockPath)
		})
	}); err != nil {
		t.Fatal(err)
	}
	if duringGC != "BUSY" {
		t.Errorf("PBS GC during a pbsq GC: %s, want BUSY", duringGC)
	}
	if writerDuringGC != "BUSY" {
		t.Errorf("PBS backup during a pbsq GC: %s, want BUSY", writerDuringGC)
	}
	if after, _, _ := ptChild(t, "try-write", lockPath); after != "OK" {
		t.Errorf("PBS GC after pbsq finished: %s, want OK", after)
	}
	if after, _, _ := ptChild(t, "try-read", lockPath); after != "OK" {
		t.Errorf("PBS backup after pbsq finished: %s, want OK", after)
	}

	// The other writers: sync into the store, move-group, move-namespace.
	src := TestStore(t, TestName("src"), TestFlock(-1))
	TestBackup(t, src, "", "vm/200", gtT0, TestFile(t, "c.img", 100<<10, 0))
	for _, ns := range []string{"x", "y"} {
		if err := s.CreateNamespace(ctx, name.MustNamespace(ns)); err != nil {
			t.Fatal(err)
		}
	}
	for _, w := range []struct {
		what string
		run  func(ProgressFunc) error
	}{
		{"sync", func(p ProgressFunc) error { _, err := Sync(ctx, src, s, SyncRequest{MaxDepth: -1}, p); return err }},
		{"move-group", func(p ProgressFunc) error {
			_, err := s.MoveGroup(ctx, MoveGroupRequest{Group: g, TargetNS: name.MustNamespace("x")}, p)
			return err
		}},
		{"move-namespace", func(p ProgressFunc) error {
			_, err := s.MoveNamespace(ctx, MoveNamespaceRequest{NS: name.MustNamespace("x"), TargetNS: name.MustNamespace("y/z"), MaxDepth: -1}, p)
			return err
		}},
	} {
		got := "no progress reported"
		var once sync.Once
		// A mover reports its "check" phase once before it locks anything;
		// "move" is reported under every lock.
		if err := w.run(func(p Progress) {
			if w.what == "sync" || p.Phase == "move" {
				once.Do(func() { got, _, _ = ptChild(t, "try-write", lockPath) })
			}
		}); err != nil {
			t.Fatalf("%s: %v", w.what, err)
		}
		if got != "BUSY" {
			t.Errorf("PBS GC during a pbsq %s: %s, want BUSY", w.what, got)
		}
	}
	if after, _, _ := ptChild(t, "try-write", lockPath); after != "OK" {
		t.Errorf("PBS GC after the pbsq writers finished: %s, want OK", after)
	}
}

// ptBase is a gtBackend that still tells its directory, so the store
// treats it as the filesystem store it is.
type ptBase struct {
	*gtBackend
	base string
}

func (b ptBase) Base() string { return b.base }

// TestPBSJournalKeepsChunks: a PBS move carries a snapshot from a namespace
// GC has not walked yet into one it has passed, recording it only in PBS's
// journal, in PBS's format. pbsq's GC marks it from there, keeps its
// chunks, and truncates the journal; without the journal line the chunks
// are lost (the control).
func TestPBSJournalKeepsChunks(t *testing.T) {
	for _, journal := range []bool{true, false} {
		t.Run(fmt.Sprint("journal=", journal), func(t *testing.T) {
			ctx := context.Background()
			env := NewTestEnv(t, TestFlock(-1), TestPBSLocks())
			s0, dir, lockDir := env.Store, env.Dir, env.LockDir
			mv, dst, moved := gtMoveScenario(t, s0)
			jpath := filepath.Join(lockDir, "test", "move-journal")
			gb := &gtBackend{Backend: s0.Backend()}
			s, err := Open("test", ptBase{gb, dir}, Options{Locker: s0.Locker(), LocksDir: lockDir})
			if err != nil {
				t.Fatal(err)
			}
			var once sync.Once
			gb.list = func(d string) {
				if d != "ns/b/vm/200" {
					return
				}
				once.Do(func() {
					info, err := s0.SnapshotInfo(ctx, mv)
					if err != nil {
						t.Error(err)
						return
					}
					if journal { // as PBS's append_moved_indices: flock, O_APPEND, post-rename paths
						f, err := os.OpenFile(jpath, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o660)
						if err != nil {
							t.Error(err)
							return
						}
						if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
							t.Error(err)
						}
						var buf bytes.Buffer
						for _, fn := range info.Files {
							if isIndexFile(fn) {
								buf.WriteString(filepath.Join(dir, filepath.FromSlash(dst.File(fn))) + "\n")
							}
						}
						if _, err := f.Write(buf.Bytes()); err != nil {
							t.Error(err)
						}
						f.Close()
					}
					if err := s0.SetGroupOwner(ctx, dst.Group, "root@pam"); err != nil {
						t.Error(err)
					}
					if err := os.Rename(filepath.Join(dir, mv.Path()), filepath.Join(dir, dst.Path())); err != nil {
						t.Error(err)
					}
				})
			}
			res, err := s.GC(ctx, GCRequest{Now: gtLater}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !gtExists(t, dir, dst.File(ManifestName)) {
				t.Fatal("the hook did not move the snapshot")
			}
			lost := 0
			for _, d := range moved {
				if !gtExists(t, dir, ChunkPath(d)) {
					lost++
				}
			}
			if !journal {
				if lost == 0 {
					t.Error("no chunk lost without PBS's journal line; the test proves nothing")
				}
				return
			}
			if lost > 0 {
				t.Errorf("%d chunk(s) of the snapshot PBS moved were swept", lost)
			}
			if res.PBSJournalIndexFiles != 2 {
				t.Errorf("%d index files marked from PBS's journal, want 2", res.PBSJournalIndexFiles)
			}
			if fi, err := os.Stat(jpath); err != nil || fi.Size() != 0 {
				t.Errorf("PBS's journal not truncated after the drain: %v %v", fi, err)
			}
			TestVerifyAll(t, s0, 2, 0)
		})
	}
}

// TestPbsqMoveWritesPBSJournal: a pbsq move appends, before it renames,
// the absolute post-move path of every index file to PBS's journal, one per
// line, as PBS's own move does; pbsq's GC drains it.
func TestPbsqMoveWritesPBSJournal(t *testing.T) {
	ctx := context.Background()
	env := NewTestEnv(t, TestFlock(-1), TestPBSLocks())
	s, dir, lockDir := env.Store, env.Dir, env.LockDir
	res := TestBackup(t, s, "", "vm/100", gtT0, TestFile(t, "a.img", 100<<10, 0), TestFile(t, "b.pxar", 10<<10, 0))
	if err := s.CreateNamespace(ctx, name.MustNamespace("x")); err != nil {
		t.Fatal(err)
	}
	g, _ := name.NewGroup(name.Root, "vm", "100")
	if _, err := s.MoveGroup(ctx, MoveGroupRequest{Group: g, TargetNS: name.MustNamespace("x")}, nil); err != nil {
		t.Fatal(err)
	}
	dst := res.SnapshotName().InNS(name.MustNamespace("x"))
	raw, err := os.ReadFile(filepath.Join(lockDir, "test", "move-journal"))
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, dst.File("a.img.fidx")) + "\n" + filepath.Join(dir, dst.File("b.pxar.didx")) + "\n"
	if string(raw) != want {
		t.Errorf("PBS journal:\n%s\nwant:\n%s", raw, want)
	}
	gres, err := s.GC(ctx, GCRequest{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if gres.PBSJournalIndexFiles != 2 {
		t.Errorf("GC marked %d index files from PBS's journal, want 2", gres.PBSJournalIndexFiles)
	}
	if raw, _ := os.ReadFile(filepath.Join(lockDir, "test", "move-journal")); len(raw) != 0 {
		t.Errorf("journal not drained: %q", raw)
	}
}

// TestJournalCandidates: PBS's absolute paths map to store paths below the
// store's directory, or by their datastore-layout tails elsewhere.
func TestJournalCandidates(t *testing.T) {
	bases := []string{"/srv/store"}
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"/srv/store/ns/a/vm/100/2024-01-01T00:00:00Z/x.fidx", []string{"ns/a/vm/100/2024-01-01T00:00:00Z/x.fidx"}},
		{"/srv/store/vm/100/2024-01-01T00:00:00Z/x.didx", []string{"vm/100/2024-01-01T00:00:00Z/x.didx"}},
		{"/mnt/pbs/vm/100/2024-01-01T00:00:00Z/x.didx", []string{"vm/100/2024-01-01T00:00:00Z/x.didx"}},
		{"/mnt/ns/ns/a/vm/1/2024-01-01T00:00:00Z/x.fidx", []string{"ns/a/vm/1/2024-01-01T00:00:00Z/x.fidx", "vm/1/2024-01-01T00:00:00Z/x.fidx"}},
		{"relative/vm/1/2024-01-01T00:00:00Z/x.fidx", nil},
		{"/srv/store/../etc/passwd", nil},
		{"/srv/store/vm/100/2024-01-01T00:00:00Z/index.json.blob", nil},
	} {
		got := journalCandidates(bases, c.in)
		if strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("%s: %q, want %q", c.in, got, c.want)
		}
	}
}

// FuzzJournalCandidates: PBS's journal is a file anyone with write access
// to the locks dir can fill; whatever a line holds, it maps only to
// relative index paths of the store's layout, never outside it.
func FuzzJournalCandidates(f *testing.F) {
	f.Add("/srv/store/ns/a/vm/100/2024-01-01T00:00:00Z/x.fidx")
	f.Add("/mnt/ns/ns/a/vm/1/2024-01-01T00:00:00Z/x.fidx")
	f.Add("/srv/store/../etc/vm/1/2024-01-01T00:00:00Z/x.didx")
	f.Add("relative/vm/1/2024-01-01T00:00:00Z/x.fidx")
	f.Fuzz(func(t *testing.T, line string) {
		for _, rel := range journalCandidates([]string{"/srv/store", "/real/store"}, line) {
			if !inLayout(rel) || strings.HasPrefix(rel, "/") || strings.Contains("/"+rel+"/", "/../") || strings.Contains("/"+rel+"/", "/./") {
				t.Fatalf("%q maps to %q, outside the store's layout", line, rel)
			}
		}
	})
}

// ptFlockHolder holds path's flock with util-linux flock(1), as PBS holds
// a manifest lock, until the returned func is called.
func ptFlockHolder(t *testing.T, path string) func() {
	t.Helper()
	if _, err := exec.LookPath("flock"); err != nil {
		t.Skip("util-linux flock not installed")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("flock", "--exclusive", path, "sh", "-c", "echo LOCKED; exec cat")
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() { once.Do(func() { stdin.Close(); _ = cmd.Wait() }) }
	t.Cleanup(stop)
	if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || l != "LOCKED\n" {
		t.Fatalf("flock(1): %q %v", l, err)
	}
	return stop
}

// TestManifestLockSkips: with PBS holding a snapshot's manifest lock
// (flock(1) on PBS's path), verify, prune and sync skip the snapshot and
// report it (exit 4), and its manifest stays byte for byte as it was; sync
// writes no manifest for a new snapshot whose lock is held either.
func TestManifestLockSkips(t *testing.T) {
	old := manifestLockWait
	manifestLockWait = 200 * time.Millisecond
	t.Cleanup(func() { manifestLockWait = old })
	ctx := context.Background()

	env := NewTestEnv(t, TestFlock(-1), TestPBSLocks())

	s, dir, lockDir := env.Store, env.Dir, env.LockDir
	src := TestStore(t, TestName("src"), TestFlock(-1))
	for h := 0; h < 2; h++ {
		TestBackup(t, src, "", "vm/100", gtT0.Add(time.Duration(h)*time.Hour), TestFile(t, "a.img", 50<<10, 0))
	}
	if _, err := Sync(ctx, src, s, SyncRequest{MaxDepth: -1}, nil); err != nil {
		t.Fatal(err)
	}
	// The source's manifests change (verify state), so a sync rewrites
	// the target's.
	if _, err := src.Verify(ctx, VerifyRequest{Scope: Scope{MaxDepth: -1}}, nil); err != nil {
		t.Fatal(err)
	}
	snaps := allSnapshots(t, s)
	if len(snaps) != 2 {
		t.Fatalf("%d snapshots synced, want 2", len(snaps))
	}
	before := map[string][]byte{}
	var stops []func()
	for _, sn := range snaps {
		manifest := filepath.Join(dir, sn.Snapshot.File(ManifestName))
		raw, err := os.ReadFile(manifest)
		if err != nil {
			t.Fatal(err)
		}
		before[manifest] = raw
		stops = append(stops, ptFlockHolder(t, filepath.Join(lockDir, flock.ManifestRelPath("test", sn.Snapshot))))
	}

	// A snapshot new to the target whose manifest lock PBS holds: sync
	// writes nothing of it either.
	fresh := TestBackup(t, src, "", "vm/101", gtT0, TestFile(t, "a.img", 50<<10, 0)).SnapshotName()
	stops = append(stops, ptFlockHolder(t, filepath.Join(lockDir, flock.ManifestRelPath("test", fresh))))

	var logMu sync.Mutex
	var logged []string
	obs := &Observer{Log: func(l string) { logMu.Lock(); logged = append(logged, l); logMu.Unlock() }}
	vres, err := s.WithObserver(obs).Verify(ctx, VerifyRequest{Scope: Scope{MaxDepth: -1}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(vres.Outcome(), ErrSkipped) || len(vres.Skipped) != 2 || !strings.Contains(vres.Skipped[0].Reason, "manifest lock") {
		t.Errorf("verify: outcome %v, skipped %+v; want both snapshots skipped", vres.Outcome(), vres.Skipped)
	}
	// The task log says so for each, naming the lock.
	for _, sn := range snaps {
		want := "skipped recording the verify state of " + sn.Snapshot.String() + " (ns root): busy: manifest lock"
		found := false
		for _, l := range logged {
			found = found || strings.HasPrefix(l, want)
		}
		if !found {
			t.Errorf("no log line %q in:\n%s", want, strings.Join(logged, "\n"))
		}
	}
	// Sync re-syncs the newest synced snapshot, whose source manifest
	// changed, and the fresh one (another group, so that it is tried).
	yres, err := Sync(ctx, src, s, SyncRequest{MaxDepth: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(yres.Outcome(), ErrSkipped) || len(yres.Skipped) != 2 || yres.Snapshots != 0 {
		t.Errorf("sync: outcome %v, %d synced, skipped %+v; want both locked snapshots skipped", yres.Outcome(), yres.Snapshots, yres.Skipped)
	}
	if gtExists(t, dir, fresh.File(ManifestName)) {
		t.Errorf("sync wrote the manifest of %s under PBS's manifest lock", fresh)
	}
	pres, err := s.Prune(ctx, PruneRequest{Scope: Scope{MaxDepth: -1}, Keep: prune.Options{KeepLast: 1}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(pres.Outcome(), ErrSkipped) || pres.Removed != 0 || len(pres.Skipped) != 1 {
		t.Errorf("prune: outcome %v, removed %d, skipped %+v; want the locked snapshot skipped", pres.Outcome(), pres.Removed, pres.Skipped)
	}
	for p, raw := range before {
		if after, err := os.ReadFile(p); err != nil || !bytes.Equal(raw, after) {
			t.Errorf("locked manifest %s changed (%v)", p, err)
		}
	}

	for _, stop := range stops {
		stop()
	}
	pres, err = s.Prune(ctx, PruneRequest{Scope: Scope{MaxDepth: -1}, Keep: prune.Options{KeepLast: 1}}, nil)
	if err != nil || pres.Removed != 1 || pres.Outcome() != nil {
		t.Errorf("prune after the lock was released: %v, %+v", err, pres)
	}
}

// pbsUPID is PBS's PROXMOX_UPID_REGEX (proxmox-schema upid.rs).
var pbsUPID = regexp.MustCompile(`^UPID:(?P<node>[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):(?P<pid>[0-9A-Fa-f]{8}):` +
	`(?P<pstart>[0-9A-Fa-f]{8,9}):(?P<task_id>[0-9A-Fa-f]{8,16}):(?P<starttime>[0-9A-Fa-f]{8}):` +
	`(?P<wtype>[^:\s]+):(?P<wid>[^:\s]*):(?P<authid>[^:\s]+):$`)

func TestUPIDNode(t *testing.T) {
	for host, want := range map[string]string{
		"pbs1.example.com": "pbs1", "pbs1": "pbs1", "-odd_host-.x": "odd-host", "": "localhost",
		".leading": "localhost", "a": "a", "Ünï": "n",
	} {
		if got := upidNode(host); got != want {
			t.Errorf("upidNode(%q) = %q, want %q", host, got, want)
		}
	}
	at := time.Unix(1700000000, 0)
	for _, task := range []string{"t-1", "x:y/z", "", "ünicode task"} {
		u := UPID("verify", "main", task, at)
		if !pbsUPID.MatchString(u) {
			t.Errorf("UPID %q does not match PBS's UPID regex", u)
		}
	}
}

// TestUPIDDottedHostname: in a UTS namespace whose host name is
// pbs1.example.com, the UPID pbsq records has node pbs1 and matches PBS's
// regex (the child prints it).
func TestUPIDDottedHostname(t *testing.T) {
	if os.Getenv("PBSQ_UTS_HELPER") == "1" {
		if err := unix.Sethostname([]byte("pbs1.example.com")); err != nil {
			t.Fatal(err)
		}
		fmt.Println("UPID=" + UPID("verify", "main", "task-1", time.Unix(1700000000, 0)))
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestUPIDDottedHostname$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PBSQ_UTS_HELPER=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUTS}
	out, err := cmd.CombinedOutput()
	if err != nil && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL)) {
		t.Skipf("no UTS namespace: %v", err)
	}
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`UPID=(\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("child printed no UPID:\n%s", out)
	}
	u := string(m[1])
	if !pbsUPID.MatchString(u) || !strings.HasPrefix(u, "UPID:pbs1:") {
		t.Errorf("UPID under host name pbs1.example.com: %q; want node pbs1, matching PBS's regex", u)
	}
}

// TestProcessLockFileRefused: .lock that is a symlink or a FIFO is refused
// (never followed, never blocked on), with nothing written.
func TestProcessLockFileRefused(t *testing.T) {
	for _, kind := range []string{"symlink", "fifo", "dir"} {
		t.Run(kind, func(t *testing.T) {
			env := NewTestEnv(t, TestFlock(-1), TestPBSLocks())
			s, dir := env.Store, env.Dir
			p := filepath.Join(dir, ".lock")
			target := filepath.Join(t.TempDir(), "elsewhere")
			if err := os.WriteFile(target, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			var err error
			switch kind {
			case "symlink":
				err = os.Symlink(target, p)
			case "fifo":
				err = unix.Mkfifo(p, 0o644)
			case "dir":
				err = os.Mkdir(p, 0o755)
			}
			if err != nil {
				t.Fatal(err)
			}
			before := TestDirTree(t, dir)
			g, _ := name.NewGroup(name.Root, "vm", "100")
			_, err = s.Backup(context.Background(), BackupRequest{Group: g, Time: gtT0, Owner: "root@pam",
				Sources: []BackupSource{{Path: TestFile(t, "a.img", 1000, 0)}}}, nil)
			if err == nil || !strings.Contains(err.Error(), ".lock") || errors.Is(err, lock.ErrBusy) {
				t.Fatalf("backup with a %s .lock: %v; want a refusal naming .lock", kind, err)
			}
			TestSameTree(t, "the refused backup", before, TestDirTree(t, dir))
		})
	}
}
