package confine

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestDecideOwner(t *testing.T) {
	groups := func() ([]int, error) { return []int{100, 34}, nil }
	for _, tc := range []struct {
		name              string
		euid, egid        int
		uid, gid          uint32
		wantChown, wantOK bool
	}{
		{"root in root's store", 0, 0, 0, 0, false, true},
		{"root in backup's store", 0, 0, 34, 34, true, true},
		{"owner", 34, 34, 34, 34, false, true},
		{"owner, other primary group, member", 34, 100, 34, 34, true, true},
		{"owner, not a member of the group", 34, 100, 34, 200, false, false},
		{"another user", 1000, 1000, 34, 34, false, false},
		{"another user in the group", 1000, 34, 34, 34, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := decideOwner(tc.euid, tc.egid, groups, "/store", tc.uid, tc.gid)
			if tc.wantOK != (err == nil) {
				t.Fatalf("decideOwner = %+v, %v; want ok=%v", o, err, tc.wantOK)
			}
			if err != nil {
				if !errors.Is(err, ErrNotOwner) {
					t.Errorf("error %v does not wrap ErrNotOwner", err)
				}
				return
			}
			if o.Chown != tc.wantChown || o.UID != int(tc.uid) || o.GID != int(tc.gid) {
				t.Errorf("decideOwner = %+v, want chown=%v to %d:%d", o, tc.wantChown, tc.uid, tc.gid)
			}
		})
	}
}

// TestWalkFallback checks the resolution used where openat2 is missing
// against the same links openat2 refuses.
func TestWalkFallback(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "a/b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "a/b/f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	for l, target := range map[string]string{"a/dirlink": outside, "a/b/filelink": filepath.Join(outside, "secret")} {
		if err := os.Symlink(target, filepath.Join(dir, l)); err != nil {
			t.Fatal(err)
		}
	}
	r, err := OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, useOpenat2 := range []bool{true, false} {
		open := r.Open
		if !useOpenat2 {
			open = func(rel string, flags int, mode uint32) (int, error) {
				fd, err := r.walkOpen(rel, flags|unix.O_CLOEXEC, mode)
				if err != nil {
					return -1, r.wrap("open", rel, err)
				}
				return fd, nil
			}
		}
		for _, tc := range []struct {
			rel   string
			flags int
			link  bool
		}{
			{"a/b/f", unix.O_RDONLY, false},
			{"a/b", unix.O_PATH | unix.O_DIRECTORY, false},
			{"a/dirlink/secret", unix.O_RDONLY, true},
			{"a/dirlink", unix.O_PATH | unix.O_DIRECTORY, true},
			{"a/dirlink", unix.O_RDONLY | unix.O_DIRECTORY, true},
			{"a/dirlink", unix.O_PATH, true},
			{"a/b/filelink", unix.O_RDONLY, true},
			{"a/b/filelink", unix.O_PATH, true},
			{"a/dirlink/new", unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL, true},
		} {
			fd, err := open(tc.rel, tc.flags, 0o644)
			if err == nil {
				unix.Close(fd)
			}
			if tc.link != errors.Is(err, ErrSymlink) || (!tc.link && err != nil) {
				t.Errorf("openat2=%v: Open(%s, %#x) = %v, want link=%v", useOpenat2, tc.rel, tc.flags, err, tc.link)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a file was created outside: %v", err)
	}
}
