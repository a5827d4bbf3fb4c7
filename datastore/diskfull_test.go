package datastore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore"
	"github.com/pbsq/pbsq/datastore/invariant"
	"github.com/pbsq/pbsq/datastore/name"
)

// Disk full on a filesystem store: a small tmpfs is mounted for the
// store, and backup, sync (fs→fs into the small store) and move-namespace
// run out of space. Each must fail with ENOSPC naming the path, leave no
// corrupt or half-written file under a final name (every file is read and
// checked; only dot-temp files may be partial, and none may be left), and
// succeed when rerun once there is space again.
//
// Mounting needs root (CI runs tests as root) or, failing that, a user and
// mount namespace: the test then re-executes itself under `unshare -rm`.
// If neither works the test fails, saying so.
const envDiskFullInner = "PBSQ_DISKFULL_INNER"

func TestDiskFull(t *testing.T) {
	probe := t.TempDir()
	if os.Getenv(envDiskFullInner) == "" && os.Getenv("PBSQ_DISKFULL_FORCE_UNSHARE") == "" {
		err := mountTmpfs(probe, "1m")
		if err == nil {
			_ = syscall.Unmount(probe, 0)
		} else if errors.Is(err, syscall.EPERM) {
			reexecUnshared(t, err)
			return
		} else {
			t.Fatalf("mount tmpfs on %s: %v", probe, err)
		}
	} else if os.Getenv(envDiskFullInner) == "" {
		reexecUnshared(t, errors.New("PBSQ_DISKFULL_FORCE_UNSHARE set"))
		return
	}
	t.Run("backup", testDiskFullBackup)
	t.Run("backup-second-file", testDiskFullBackupMidway)
	t.Run("sync", testDiskFullSync)
	t.Run("move-namespace", testDiskFullMove)
}

func mountTmpfs(dir, size string) error {
	return syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0755")
}

// reexecUnshared runs this test again in a new user and mount namespace,
// where mounting a tmpfs is allowed without privileges.
func reexecUnshared(t *testing.T, why error) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("cannot mount a tmpfs (%v) and no unshare(1) to try a user namespace: run the tests as root or install util-linux", why)
	}
	args := []string{"-rm", os.Args[0], "-test.run=^TestDiskFull$", "-test.count=1"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.Command(unshare, args...)
	cmd.Env = append(os.Environ(), envDiskFullInner+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("mount as %d failed (%v); ran under unshare -rm:\n%s", os.Geteuid(), why, out)
	if err != nil {
		if bytes.Contains(out, []byte("unshare failed")) || bytes.Contains(out, []byte("unshare:")) {
			t.Fatalf("cannot mount a tmpfs (%v) and user namespaces are not available (%v): run the tests as root", why, err)
		}
		t.Fatalf("TestDiskFull under unshare -rm: %v", err)
	}
}

// smallStore is a store on a tmpfs of the given size; grow remounts it
// bigger.
type smallStore struct {
	s   *datastore.Store
	dir string
}

func newSmallStore(t *testing.T, storeName, size string) *smallStore {
	t.Helper()
	dir := t.TempDir()
	if err := mountTmpfs(dir, size); err != nil {
		t.Fatalf("mount tmpfs size=%s on %s: %v", size, dir, err)
	}
	// Registered after TempDir's own cleanup, so it runs before it.
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return &smallStore{s: datastore.TestStore(t, datastore.TestName(storeName), datastore.TestAt(dir)), dir: dir}
}

func (ss *smallStore) grow(t *testing.T, size string) {
	t.Helper()
	if err := syscall.Mount("tmpfs", ss.dir, "tmpfs", syscall.MS_REMOUNT, "size="+size); err != nil {
		t.Fatalf("remount %s with size=%s: %v", ss.dir, size, err)
	}
}

// fill takes all free space but about keep bytes with a filler file.
func (ss *smallStore) fill(t *testing.T, keep int64) string {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(ss.dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail)*st.Bsize - keep
	p := filepath.Join(ss.dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for free > 0 {
		n, err := f.Write(buf[:min(int64(len(buf)), free)])
		free -= int64(n)
		if err != nil {
			break // full already
		}
	}
	return p
}

// checkAfterENOSPC asserts the error is ENOSPC naming a path in the store,
// and that every file under a final name is whole and no temp file is left.
func checkAfterENOSPC(t *testing.T, ss *smallStore, what string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s on a full disk succeeded", what)
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("%s on a full disk: %v; want an error wrapping ENOSPC", what, err)
	}
	if !strings.Contains(err.Error(), ss.dir) {
		t.Errorf("%s: ENOSPC error does not name the path in the store %s: %v", what, ss.dir, err)
	}
	t.Logf("%s: %v", what, err)
	checkWhole(t, ss, what)
}

func checkWhole(t *testing.T, ss *smallStore, what string) {
	t.Helper()
	rep, err := invariant.CheckFiles(context.Background(), ss.s.Backend())
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Errorf("%s: %v", what, err)
	}
	if len(rep.Temps) > 0 {
		t.Errorf("%s: temp files left behind: %v", what, rep.Temps)
	}
	// Whatever looks finished must be complete.
	exp := invariant.NewExpect()
	exp.AllowUnfinished = true
	inv, err := invariant.Check(context.Background(), ss.s, exp, invariant.Options{Deep: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.Err(); err != nil {
		t.Errorf("%s: %v", what, err)
	}
	t.Logf("%s: %d files checked whole, %d finished and %d unfinished snapshot(s)", what, rep.Files, inv.Finished, len(inv.Unfinished))
}

func testDiskFullBackup(t *testing.T) {
	ctx := context.Background()
	ss := newSmallStore(t, "small", "8m")
	src := newRandomSources(t, 3) // 12 MiB of incompressible data
	g, _ := name.NewGroup(name.Root, "vm", "100")
	at := time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC)
	req := datastore.BackupRequest{Group: g, Time: at, Owner: "root@pam", Sources: src}
	_, err := ss.s.Backup(ctx, req, nil)
	checkAfterENOSPC(t, ss, "backup", err)

	// With space, the same backup (same time) goes through.
	rerunBackupWithSpace(t, ss, req)
}

// testDiskFullBackupMidway: the disk fills up after the first archive's
// index was written, so the failed backup has a snapshot directory. A
// rerun of the same backup must still go through, as in PBS (which
// removes a failed backup's directory and compares new backups with the
// last finished snapshot only).
func testDiskFullBackupMidway(t *testing.T) {
	ctx := context.Background()
	ss := newSmallStore(t, "small", "8m")
	first, second := newRandomSources(t, 1), newRandomSources(t, 3)
	first[0].Archive, second[0].Archive = "boot.img", "data.img"
	g, _ := name.NewGroup(name.Root, "vm", "100")
	req := datastore.BackupRequest{Group: g, Time: time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC), Owner: "root@pam", Sources: append(first, second...)}
	_, err := ss.s.Backup(ctx, req, nil)
	checkAfterENOSPC(t, ss, "backup, disk full at the second archive", err)
	rerunBackupWithSpace(t, ss, req)
}

// rerunBackupWithSpace grows the disk and reruns the failed backup req: it
// must go through, leaving exactly its snapshot, whole and PBS-valid.
func rerunBackupWithSpace(t *testing.T, ss *smallStore, req datastore.BackupRequest) {
	t.Helper()
	ctx := context.Background()
	ss.grow(t, "64m")
	res, err := ss.s.Backup(ctx, req, nil)
	if err != nil {
		t.Fatalf("backup rerun with space: %v", err)
	}
	exp := invariant.NewExpect()
	exp.Strict = true
	exp.Want(res.SnapshotName())
	rep, err := invariant.Check(ctx, ss.s, exp, invariant.Options{Deep: true, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Error(err)
	}
	checkWhole(t, ss, "backup rerun")
	if out, err := invariant.PBSFmtCheck(ctx, ss.dir); err != nil {
		t.Error(err)
	} else {
		t.Log(strings.TrimSpace(out))
	}
}

func testDiskFullSync(t *testing.T) {
	ctx := context.Background()
	srcDir := t.TempDir()
	src := datastore.TestStore(t, datastore.TestName("source"), datastore.TestAt(srcDir))
	var snaps []name.Snapshot
	for i := 0; i < 3; i++ {
		res := datastore.TestBackupRequest(t, src, "", fmt.Sprint("vm/", 200+i%2), datastore.BackupRequest{
			Time: time.Date(2024, 3, 1, 10+i, 0, 0, 0, time.UTC), Sources: newRandomSources(t, 1)})
		snaps = append(snaps, res.SnapshotName())
	}
	ss := newSmallStore(t, "small", "6m")
	req := datastore.SyncRequest{SourceNS: name.Root, NS: name.Root, MaxDepth: -1}
	_, err := datastore.Sync(ctx, src, ss.s, req, nil)
	checkAfterENOSPC(t, ss, "sync fs→fs into a full store", err)

	ss.grow(t, "64m")
	res, err := datastore.Sync(ctx, src, ss.s, req, nil)
	if err != nil {
		t.Fatalf("sync rerun with space: %v", err)
	}
	if err := res.Outcome(); err != nil {
		t.Fatalf("sync rerun with space: %v", err)
	}
	exp := invariant.NewExpect()
	exp.Strict = true
	for _, sn := range snaps {
		exp.Want(sn)
	}
	rep, err := invariant.Check(ctx, ss.s, exp, invariant.Options{Deep: true, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Error(err)
	}
	checkWhole(t, ss, "sync rerun")
	for _, dir := range []string{srcDir, ss.dir} {
		if _, err := invariant.PBSFmtCheck(ctx, dir); err != nil {
			t.Error(err)
		}
	}
}

// testDiskFullMove: a move on one filesystem renames and cannot fill a
// disk, but it writes its journal first; on a full disk it must fail
// before anything moved, and finish when rerun with space.
func testDiskFullMove(t *testing.T) {
	ctx := context.Background()
	ss := newSmallStore(t, "small", "8m")
	var snaps []name.Snapshot
	for i, ns := range []string{"a", "a", "a/b", "a/b"} {
		res := datastore.TestBackupRequest(t, ss.s, ns, fmt.Sprint("ct/", 300+len(ns)), datastore.BackupRequest{
			Time: time.Date(2024, 3, 1, 10+i, 0, 0, 0, time.UTC), Sources: newSmallSources(t)})
		snaps = append(snaps, res.SnapshotName())
	}
	if err := ss.s.CreateNamespace(ctx, name.MustNamespace("target")); err != nil {
		t.Fatal(err)
	}
	filler := ss.fill(t, 0)
	req := datastore.MoveNamespaceRequest{NS: name.MustNamespace("a"), TargetNS: name.MustNamespace("target/a"), MaxDepth: -1, DeleteSource: true, MergeGroups: true}
	res, err := ss.s.MoveNamespace(ctx, req, nil)
	if err == nil {
		// Renames need no space: a move that needs none may succeed.
		t.Logf("move-namespace on a full disk succeeded: %+v", res)
	} else {
		checkAfterENOSPC(t, ss, "move-namespace on a full disk", err)
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		if res, err = ss.s.MoveNamespace(ctx, req, nil); err != nil || !res.Complete {
			t.Fatalf("move-namespace rerun with space: %v %+v", err, res)
		}
	}
	exp := invariant.NewExpect()
	exp.Strict = true
	for _, sn := range snaps {
		to, _ := name.Rebase(sn.NS, req.NS, req.TargetNS)
		exp.Want(sn, to)
	}
	_ = os.Remove(filler)
	rep, err := invariant.Check(ctx, ss.s, exp, invariant.Options{Deep: true, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Error(err)
	}
	checkWhole(t, ss, "move-namespace rerun")
}

// newRandomSources writes a disk image of n incompressible 4 MiB blocks.
func newRandomSources(t *testing.T, n int) []datastore.BackupSource {
	t.Helper()
	src := newSources(t, time.Now().UnixNano())
	p := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		b := make([]byte, blockSize)
		for off := 0; off < len(b); off += 8 {
			v := src.rng.Uint64()
			for k := 0; k < 8; k++ {
				b[off+k] = byte(v >> (8 * k))
			}
		}
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return []datastore.BackupSource{{Path: p, Archive: "disk.img"}}
}

// newSmallSources is a small config and a one-chunk image.
func newSmallSources(t *testing.T) []datastore.BackupSource {
	t.Helper()
	files := newSources(t, time.Now().UnixNano()).next(t)
	return []datastore.BackupSource{{Path: files[0], Archive: "disk.img"}, {Path: files[1], Archive: "guest.conf"}}
}
