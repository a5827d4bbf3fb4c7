package datastore

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pbsq/pbsq/datastore/backend/s3/s3test"
)

// recorder is a TestingT that keeps what the fixtures report.
type recorder struct {
	*testing.T
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recorder) Fatalf(format string, args ...any) { r.Errorf(format, args...) }

// TestFixtureTreeShowsEveryChange: TestSameTree names an added empty
// directory, a changed and a removed file; TestDirTree neither follows a
// link nor opens a FIFO.
func TestFixtureTreeShowsEveryChange(t *testing.T) {
	dir := t.TempDir()
	for p, c := range map[string]string{"a": "1", "d/b": "2"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	before := TestDirTree(t, dir)
	if v := before["link"]; strings.Contains(v, "root") || !strings.Contains(v, "/etc/passwd") {
		t.Errorf("link described as %q: want its target, not the target's content", v)
	}
	if r := (&recorder{T: t}); !TestSameTree(r, "nothing", before, TestDirTree(t, dir)) || len(r.errs) > 0 {
		t.Errorf("an unchanged tree differs: %v", r.errs)
	}
	if err := os.Mkdir(filepath.Join(dir, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "a"), []byte("3"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "d/b")); err != nil {
		t.Fatal(err)
	}
	r := &recorder{T: t}
	if TestSameTree(r, "the change", before, TestDirTree(t, dir)) || len(r.errs) != 1 {
		t.Fatalf("changes not reported once: %v", r.errs)
	}
	for _, w := range []string{"the change changed the store", "added empty/", "changed a", "removed d/b"} {
		if !strings.Contains(r.errs[0], w) {
			t.Errorf("report %q does not say %q", r.errs[0], w)
		}
	}
}

// TestFixtureStores: NewTestEnv builds the store its options describe, and
// TestVerifyAll passes a sound store and fails on a corrupt chunk, a wrong
// count and an unexpected unfinished snapshot.
func TestFixtureStores(t *testing.T) {
	env := NewTestEnv(t, TestName("fixture"), TestFlock(-1), TestPBSLocks())
	if env.Kind != "fs" || env.Store.Name() != "fixture" || env.Store.Locker() == nil || env.LockDir == "" || env.Store.pbs == nil {
		t.Fatalf("env %+v", env)
	}
	if _, err := os.Stat(filepath.Join(env.Dir, ".chunks")); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Join(env.Dir, ".chunks")); len(ents) != 0 {
		t.Errorf("%d chunk dirs: want them made on demand", len(ents))
	}
	srv := s3test.StartFake(t)
	s3env := NewTestEnv(t, TestOn("gofakes3", srv.New(t, srv.UniquePrefix("fx"))))
	if s3env.Kind != "gofakes3" || s3env.Dir != "" || s3env.Store.Locker() != nil {
		t.Fatalf("s3 env %+v", s3env)
	}
	if tree := TestTree(t, s3env.Store); len(tree) != 1 || tree[markerFile] != "test\n" {
		t.Errorf("new S3 store holds %v, want the marker only", tree)
	}

	s := env.Store
	res := TestBackup(t, s, "", "vm/1", time.Unix(1700000000, 0), TestFile(t, "a.img", 5000, 0))
	TestVerifyAll(t, s, 1, 0)
	for _, c := range []struct{ snapshots, unfinished int }{{2, 0}, {1, 1}} {
		r := &recorder{T: t}
		TestVerifyAll(r, s, c.snapshots, c.unfinished)
		if len(r.errs) != 1 {
			t.Errorf("want %d snapshots, %d unfinished: reported %v", c.snapshots, c.unfinished, r.errs)
		}
	}
	chunks, err := filepath.Glob(filepath.Join(env.Dir, ".chunks", "*", "*"))
	if err != nil || len(chunks) == 0 {
		t.Fatalf("no chunk of %s: %v", res.SnapshotName(), err)
	}
	if err := os.WriteFile(chunks[0], []byte("corrupt"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := &recorder{T: t}
	TestVerifyAll(r, s, 1, 0)
	if len(r.errs) != 1 || !strings.Contains(r.errs[0], "failed") {
		t.Errorf("corrupt chunk: reported %v", r.errs)
	}
}
