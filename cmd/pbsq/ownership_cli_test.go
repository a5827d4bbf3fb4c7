package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pbsq/pbsq/internal/treetest"
)

const backupUID, backupGID = 34, 34 // Debian's backup:backup

func needRootAndBackup(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat("/etc/passwd"); err != nil {
		t.Skip("no /etc/passwd")
	}
	data, _ := os.ReadFile("/etc/passwd")
	if !strings.Contains(string(data), "\nbackup:x:34:34:") && !strings.HasPrefix(string(data), "backup:x:34:34:") {
		t.Skip("no user backup with uid 34")
	}
}

// TestCreateGivesStoreToBackup: `datastore create` as root makes the store
// backup's, with PBS's 0750 chunk dirs, and what pbsq then writes there as
// root (backup, namespace create, sync into it, move, verify, prune, gc)
// stays backup's.
func TestCreateGivesStoreToBackup(t *testing.T) {
	t.Parallel() // waits on the disk (65536 chunk dirs), beside waiting tests
	needRootAndBackup(t)
	e := newFTEnv(t)
	store := filepath.Join(t.TempDir(), "ds")
	if _, stderr, code := e.run("datastore", "create", "main", "--path", store); code != 0 {
		t.Fatalf("create: %s", stderr)
	}
	for _, d := range []string{".chunks", ".chunks/0000", ".chunks/ffff"} {
		st, err := os.Stat(filepath.Join(store, d))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o750 {
			t.Errorf("%s is %v, want 0750 as PBS makes it", d, st.Mode().Perm())
		}
	}
	file := filepath.Join(t.TempDir(), "f.conf")
	if err := os.WriteFile(file, []byte("x=1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A root-owned source store to sync from, with two snapshots of vm/2.
	src := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(filepath.Join(src, ".chunks"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := e.run("datastore", "add", "src", "--path", src); code != 0 {
		t.Fatalf("add src: %s", stderr)
	}
	for _, tm := range []string{"2024-03-01T10:00:00Z", "2024-03-02T10:00:00Z"} {
		if _, stderr, code := e.run("backup", "--store", "src", "--type", "vm", "--id", "2", "--time", tm, file); code != 0 {
			t.Fatalf("backup into src: %s", stderr)
		}
	}
	var verified string
	for _, args := range [][]string{
		{"backup", "--store", "main", "--type", "vm", "--id", "1", file},
		{"ns", "create", "--store", "main", "--ns", "a/b"},
		{"run", "sync", "--store", "main", "--source-store", "src"},
		{"run", "move-group", "--store", "main", "--backup-type", "vm", "--backup-id", "1", "--target-ns", "a/b"},
		{"run", "verify", "--store", "main"},
		{"run", "prune", "--store", "main", "--backup-type", "vm", "--backup-id", "2", "--keep-last", "1"},
		{"run", "gc", "--store", "main"},
	} {
		out, stderr, code := e.run(args...)
		if code != 0 {
			t.Fatalf("%v: %s", args, stderr)
		}
		if args[1] == "verify" {
			verified = out
		}
	}
	treetest.OwnedBy(t, store, backupUID, backupGID)
	// The operations did what they say, so the ownership check saw their files.
	for _, p := range []string{"ns/a/ns/b/vm/1", "vm/2/2024-03-02T10:00:00Z/index.json.blob"} {
		if _, err := os.Stat(filepath.Join(store, p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	for _, p := range []string{"vm/1", "vm/2/2024-03-01T10:00:00Z"} {
		if _, err := os.Stat(filepath.Join(store, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after move/prune: %v", p, err)
		}
	}
	// Verify recorded its state in all three manifests.
	var vres struct{ OK int }
	if err := json.Unmarshal([]byte(verified), &vres); err != nil || vres.OK != 3 {
		t.Errorf("verify: %v, %s; want 3 snapshots verified", err, verified)
	}
}

// TestNonOwnerRefusedAtStart: pbsq running as a user that cannot give
// what it creates to the store's owner refuses before writing anything,
// instead of leaving a half-owned store.
func TestNonOwnerRefusedAtStart(t *testing.T) {
	needRootAndBackup(t)
	// Everything the unprivileged run needs must be reachable by it.
	dir, err := os.MkdirTemp("", "pbsq-nonowner")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "pbsq")
	data, err := os.ReadFile(pbsqBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "store")
	if err := os.MkdirAll(filepath.Join(store, ".chunks"), 0o755); err != nil {
		t.Fatal(err)
	}
	locks := filepath.Join(dir, "locks")
	if err := os.Mkdir(locks, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(locks, backupUID, backupGID); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "pbsq.yaml")
	e := &ftEnv{t: t, config: cfg, locks: locks}
	if _, stderr, code := e.run("datastore", "add", "main", "--path", store); code != 0 {
		t.Fatalf("add: %s", stderr)
	}
	if err := os.Chmod(cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "f.conf")
	if err := os.WriteFile(file, []byte("x=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := treetest.Snapshot(t, store)
	cmd := exec.Command(bin, "backup", "--store", "main", "--type", "vm", "--id", "1", file)
	cmd.Env = append(os.Environ(), "PBSQ_CONFIG="+cfg, "PBSQ_LOCKS_DIR="+locks, "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: backupUID, Gid: backupGID}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("backup as backup into root's store: %v, %s; want a failure", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "owned by the datastore's owner") || !strings.Contains(stderr.String(), store) {
		t.Errorf("stderr %q does not say why, naming the store", stderr.String())
	}
	treetest.Unchanged(t, store, before)

	// Least privilege: on a store of its own, pbsq running as backup works.
	if err := filepath.WalkDir(store, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, backupUID, backupGID)
	}); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(bin, "backup", "--store", "main", "--type", "vm", "--id", "1", file)
	cmd.Env = append(os.Environ(), "PBSQ_CONFIG="+cfg, "PBSQ_LOCKS_DIR="+locks, "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: backupUID, Gid: backupGID}}
	stderr.Reset()
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("backup as backup into backup's store: %v, %s", err, stderr.String())
	}
	treetest.OwnedBy(t, store, backupUID, backupGID)
}
