package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pbsq/pbsq/datastore"
)

// pbsRecordLock holds a classic POSIX record lock over the whole file, as
// PBS's ProcessLocker does (Python's fcntl.lockf is F_SETLK, l_len 0), until
// the returned func is called; it returns the holder's pid.
func pbsRecordLock(t *testing.T, path string, exclusive bool) (int, func()) {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed")
	}
	how := "fcntl.LOCK_SH"
	if exclusive {
		how = "fcntl.LOCK_EX"
	}
	cmd := exec.Command("python3", "-c", `import fcntl, sys
f = open(sys.argv[1], "r+")
fcntl.lockf(f, `+how+` | fcntl.LOCK_NB)
print("LOCKED", flush=True)
sys.stdin.read()`, path)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := func() { stdin.Close(); _ = cmd.Wait() }
	t.Cleanup(stop)
	if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || l != "LOCKED\n" {
		t.Fatalf("record lock holder: %q %v", l, err)
	}
	return cmd.Process.Pid, stop
}

// TestCLIBesidePBSGC: with a "PBS GC" holding .lock exclusively, `pbsq
// backup` and `pbsq run gc` exit 3 naming the lock and PBS's pid, and the
// store is unchanged; with a "PBS backup" holding it shared, `pbsq run gc`
// exits 3 and a backup runs.
func TestCLIBesidePBSGC(t *testing.T) {
	e := newFTEnv(t)
	if err := os.WriteFile(e.config, []byte("locks:\n  wait: 200ms\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(t.TempDir(), "ds")
	if err := os.MkdirAll(filepath.Join(store, ".chunks"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := e.run("datastore", "add", "main", "--path", store); code != 0 {
		t.Fatalf("add: %s", stderr)
	}
	file := filepath.Join(t.TempDir(), "f.conf")
	_ = os.WriteFile(file, []byte("x=1\n"), 0o644)
	if _, stderr, code := e.run("backup", "--store", "main", "--type", "vm", "--id", "1", file); code != 0 {
		t.Fatalf("backup: %s", stderr)
	}
	lockFile := filepath.Join(store, ".lock")
	before := datastore.TestDirTree(t, store)

	pid, stop := pbsRecordLock(t, lockFile, true)
	for _, args := range [][]string{
		{"backup", "--store", "main", "--type", "vm", "--id", "2", file},
		{"run", "gc", "--store", "main"},
	} {
		_, stderr, code := e.run(args...)
		if code != 3 || !strings.Contains(stderr, lockFile) || !strings.Contains(stderr, "pid "+strconv.Itoa(pid)) {
			t.Errorf("%v beside a PBS GC: exit %d, %s; want 3 naming %s and pid %d", args, code, stderr, lockFile, pid)
		}
	}
	datastore.TestSameTree(t, "refused commands", before, datastore.TestDirTree(t, store))
	stop()

	pid, _ = pbsRecordLock(t, lockFile, false)
	if _, stderr, code := e.run("run", "gc", "--store", "main"); code != 3 || !strings.Contains(stderr, "pid "+strconv.Itoa(pid)) {
		t.Errorf("gc beside a PBS backup: exit %d, %s; want 3 naming pid %d", code, stderr, pid)
	}
	if _, stderr, code := e.run("backup", "--store", "main", "--type", "vm", "--id", "2", file); code != 0 {
		t.Errorf("backup beside a PBS backup: exit %d, %s", code, stderr)
	}
}
