package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/pbsq/pbsq/datastore"
)

type ftEnv struct {
	t      *testing.T
	config string
	locks  string
}

func newFTEnv(t *testing.T) *ftEnv {
	dir := t.TempDir()
	return &ftEnv{t: t, config: filepath.Join(dir, "pbsq.yaml"), locks: filepath.Join(dir, "locks")}
}

// run executes pbsq and returns stdout, stderr and the exit code.
func (e *ftEnv) run(args ...string) (string, string, int) {
	cmd := exec.Command(pbsqBin, args...)
	cmd.Env = append(os.Environ(), "PBSQ_CONFIG="+e.config, "PBSQ_LOCKS_DIR="+e.locks)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	code := runExit(e.t, cmd.Run())
	return out.String(), errb.String(), code
}

// TestLsIndependentStore: a store written from the spec by another program
// is registered unchanged and listed exactly by `pbsq ls -r --json`.
func TestLsIndependentStore(t *testing.T) {
	t.Parallel() // mostly file system work on its own directories
	e := newFTEnv(t)
	dir := t.TempDir()
	cmd := exec.Command("python3", "../../datastore/testdata/pbsfmt.py", "write", dir)
	want, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	before := datastore.TestDirTree(t, dir)
	if _, stderr, code := e.run("datastore", "add", "pbs1", "--path", dir); code != 0 {
		t.Fatalf("datastore add: %d %s", code, stderr)
	}
	out, stderr, code := e.run("ls", "--store", "pbs1", "-r", "--json")
	if code != 0 {
		t.Fatalf("ls: %d %s", code, stderr)
	}
	var got, exp []map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal(want, &exp)
	key := func(m map[string]any) string {
		return m["ns"].(string) + "|" + m["backup-type"].(string) + "|" + m["backup-id"].(string) + "|" + m["time"].(string)
	}
	sort.Slice(got, func(i, j int) bool { return key(got[i]) < key(got[j]) })
	sort.Slice(exp, func(i, j int) bool { return key(exp[i]) < key(exp[j]) })
	gj, _ := json.Marshal(got)
	ej, _ := json.Marshal(exp)
	if string(gj) != string(ej) {
		t.Fatalf("ls -r --json differs:\n got %s\nwant %s", gj, ej)
	}
	if !datastore.TestSameTree(t, "datastore add or ls", before, datastore.TestDirTree(t, dir)) {
		t.FailNow()
	}
}

// TestBadInputChangesNothing: every invalid name exits 2, names the value,
// and leaves the datastore and the locks dir untouched.
func TestBadInputChangesNothing(t *testing.T) {
	t.Parallel() // waits on the disk (65536 chunk dirs), beside waiting tests
	e := newFTEnv(t)
	root := t.TempDir()
	store := filepath.Join(root, "ds")
	if _, stderr, code := e.run("datastore", "create", "main", "--path", store); code != 0 {
		t.Fatalf("create: %s", stderr)
	}
	file := filepath.Join(root, "f.conf")
	_ = os.WriteFile(file, []byte("x=1\n"), 0o644)
	if _, stderr, code := e.run("backup", "--store", "main", "--type", "vm", "--id", "1", file); code != 0 {
		t.Fatalf("backup: %s", stderr)
	}
	_ = os.RemoveAll(e.locks)
	before := datastore.TestDirTree(t, store)
	cfgBefore, _ := os.ReadFile(e.config)
	cases := []struct {
		args []string
		want string // must appear in stderr
	}{
		{[]string{"ns", "create", "--store", "main", "--ns", "a/../b"}, `"a/../b"`},
		{[]string{"ns", "create", "--store", "main", "--ns", "a//b"}, `"a//b"`},
		{[]string{"ns", "create", "--store", "main", "--ns", "a/b/c/d/e/f/g/h"}, "deeper than 7"},
		{[]string{"ns", "create", "--store", "main", "--ns", strings.Repeat("x", 129)}, "longer"},
		{[]string{"ns", "rm", "--store", "main", "--ns", ".."}, `".."`},
		{[]string{"ls", "--store", "main", "--ns", "a\x01"}, "namespace"},
		{[]string{"ls", "--store", "nope"}, `"nope"`},
		{[]string{"ls", "--store", "../x"}, `"../x"`},
		{[]string{"backup", "--store", "main", "--type", "vms", "--id", "1", file}, `"vms"`},
		{[]string{"backup", "--store", "main", "--type", "vm", "--id", "a/b", file}, `"a/b"`},
		{[]string{"backup", "--store", "main", "--type", "vm", "--id", "2", "--time", "yesterday", file}, `"yesterday"`},
		{[]string{"backup", "--store", "main", "--type", "vm", "--id", "2", "--ns", "no/such", file}, `"no/such"`},
		{[]string{"backup", "--store", "main", "--type", "vm", "--id", "2", "/no/such/file"}, "/no/such/file"},
		{[]string{"datastore", "create", "x/y", "--path", filepath.Join(root, "new")}, `"x/y"`},
		{[]string{"datastore", "create", "main", "--path", filepath.Join(root, "new")}, "already registered"},
		{[]string{"datastore", "add", "other", "--path", root}, "not a datastore"},
		{[]string{"run", "verify", "--store", "main", "--ns", "../x"}, `"../x"`},
		{[]string{"run", "prune", "--store", "main", "--keep-daily", "0"}, "keep-daily 0"},
		{[]string{"run", "move-namespace", "--store", "main", "--ns", "a", "--target-ns", "a/b"}, "inside"},
	}
	for _, c := range cases {
		_, stderr, code := e.run(c.args...)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", c.args, code, stderr)
		}
		if !strings.Contains(stderr, c.want) {
			t.Errorf("%v: stderr %q does not mention %s", c.args, stderr, c.want)
		}
	}
	datastore.TestSameTree(t, "bad input", before, datastore.TestDirTree(t, store))
	if cfgAfter, _ := os.ReadFile(e.config); !bytes.Equal(cfgBefore, cfgAfter) {
		t.Error("bad input changed the config")
	}
	if _, err := os.Stat(e.locks); !errors.Is(err, fs.ErrNotExist) {
		t.Error("bad input created the locks dir")
	}
	if _, err := os.Stat(filepath.Join(root, "new")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("refused datastore create left a directory")
	}
}
