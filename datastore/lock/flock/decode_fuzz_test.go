package flock

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/pbsq/pbsq/datastore/lock"
)

// FuzzDecodeLockPath feeds arbitrary paths below a locks dir (names of
// files anyone on the host may create there) to decode, which `pbsq locks
// ls` uses: it never panics, and a plain (not hashed) path it accepts is
// exactly the path of the lock it decodes to.
func FuzzDecodeLockPath(f *testing.F) {
	for _, s := range []string{
		"main/.ns-lock", "main/a:b/.ns-lock", "main/vm-100", "main/a/vm-100",
		`main/a:b/vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z`, "main/hashed/" + strings.Repeat("x", 80) + "..." + strings.Repeat("y", 80) + "-" + strings.Repeat("0", 64),
		"main/a/hashed/" + strings.Repeat(`\x3a`, 40) + "..." + strings.Repeat(`\x3a`, 40) + "-" + strings.Repeat("a", 64),
		"../x", "main/../../etc/passwd", "main/a:../vm-1", "x/y/z/w", "main/\\x", "main/ct-a\\x2fb",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		parts := strings.Split(p, "/")
		req, ok := decode(parts)
		if !ok {
			return
		}
		if req.Store != parts[0] {
			t.Fatalf("decode(%q): store %q", p, req.Store)
		}
		if strings.Contains(p, "/"+hashedDir+"/") {
			return // hashed names are not reversible
		}
		req.Mode = lock.Shared
		if req.Kind == lock.Group {
			req.Mode = lock.Exclusive
		}
		// PBS may hold a root namespace lock file; pbsq never takes one.
		if err := req.Validate(); err != nil && !(req.Kind == lock.Namespace && req.NS.IsRoot()) {
			t.Fatalf("decode(%q) = %s, which is invalid: %v", p, req, err)
		}
		if back := RelPath(req); back != filepath.Clean(p) {
			t.Fatalf("decode(%q) = %s, whose lock file is %q", p, req, back)
		}
	})
}

// FuzzParseProcLocks: any /proc/locks content parses without panicking.
func FuzzParseProcLocks(f *testing.F) {
	f.Add([]byte("1: FLOCK  ADVISORY  WRITE 1234 08:02:1311 0 EOF\n2: POSIX  ADVISORY  READ  5678 00:2a:99 0 EOF\n3: FLOCK ADVISORY WRITE -1 fd:01:5 0 EOF\n"))
	f.Add([]byte("1: -> FLOCK  ADVISORY  WRITE 1234 08:02:1311 0 EOF\n"))
	f.Add([]byte("garbage\n\n1:\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = parseProcLocks(data)
	})
}
