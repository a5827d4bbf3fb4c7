package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore"
)

// pbsRecordLock holds a classic POSIX record lock over the whole file, as
// PBS's ProcessLocker does (F_SETLK, l_start 0, l_len 0), in a child
// process (this test binary, see recordLockHelper) until the returned func
// is called; it returns the holder's pid.
func pbsRecordLock(t *testing.T, path string, exclusive bool) (int, func()) {
	t.Helper()
	mode := "shared"
	if exclusive {
		mode = "exclusive"
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), recordLockHelperEnv+"="+mode, "PBSQ_RECORD_LOCK_PATH="+path)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() { once.Do(func() { stdin.Close(); _ = cmd.Wait() }) }
	t.Cleanup(stop)
	if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || l != "LOCKED\n" {
		t.Fatalf("record lock holder: %q %v", l, err)
	}
	return cmd.Process.Pid, stop
}

// recordLockHelperEnv makes the test binary (TestMain) play a PBS process
// holding .lock: recordLockHelper runs instead of the tests.
const recordLockHelperEnv = "PBSQ_RECORD_LOCK_HELPER"

// recordLockHelper takes the record lock ("shared" or "exclusive") on
// $PBSQ_RECORD_LOCK_PATH without waiting, prints LOCKED and holds it until
// stdin closes. It returns the exit code.
func recordLockHelper(mode string) int {
	f, err := os.OpenFile(os.Getenv("PBSQ_RECORD_LOCK_PATH"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	lk := unix.Flock_t{Type: unix.F_RDLCK, Whence: io.SeekStart, Start: 0, Len: 0}
	if mode == "exclusive" {
		lk.Type = unix.F_WRLCK
	}
	if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk); err != nil {
		fmt.Fprintf(os.Stderr, "%s record lock: %v\n", mode, err)
		return 1
	}
	fmt.Println("LOCKED")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
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
