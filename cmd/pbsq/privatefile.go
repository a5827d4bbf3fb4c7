package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Files pbsq trusts because it wrote them itself (serve's state, the
// config it edits) are written and read so that no other local user can
// substitute them: temp files are created exclusively, never through a
// symlink, in the target's own directory; private directories and the
// files in them must belong to this user and be writable by nobody else.

// errNotPrivate marks a file or directory another user could have written.
var errNotPrivate = errors.New("not private to this user")

// checkPrivate refuses st unless this user owns it and only it may write it.
func checkPrivate(what, p string, st *unix.Stat_t) error {
	if euid := os.Geteuid(); int(st.Uid) != euid {
		return fmt.Errorf("%s %s is owned by uid %d, not %d: %w", what, p, st.Uid, euid, errNotPrivate)
	}
	if st.Mode&0o022 != 0 {
		return fmt.Errorf("%s %s has mode %04o: group or others may write it: %w", what, p, st.Mode&0o7777, errNotPrivate)
	}
	return nil
}

// openPrivateDir opens dir, following no symlink in its last component,
// and checks that it is this user's and writable by it alone. With create
// a missing dir is made 0700 (missing parents 0755).
func openPrivateDir(dir string, create bool) (*os.File, error) {
	if create {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return nil, err
		}
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, err
		}
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	f := os.NewFile(uintptr(fd), dir)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, &os.PathError{Op: "stat", Path: dir, Err: err}
	}
	if err := checkPrivate("directory", dir, &st); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// readPrivateFile reads name in dir (an openPrivateDir handle): a regular
// file of this user's that nobody else may write, at most limit bytes.
// Symlinks, FIFOs and devices are refused without blocking on them.
func readPrivateFile(dir *os.File, name string, limit int64) ([]byte, error) {
	p := filepath.Join(dir.Name(), name)
	fd, err := unix.Openat(int(dir.Fd()), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ELOOP {
			return nil, fmt.Errorf("%s is a symlink: %w", p, errNotPrivate)
		}
		return nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s is not a regular file: %w", p, errNotPrivate)
	}
	if err := checkPrivate("file", p, &st); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", p, limit)
	}
	return data, nil
}

// tempName is a fresh, unpredictable name for a temp file beside base.
func tempName(base string) string {
	return "." + base + ".tmp-" + rand.Text()[:16]
}

// writeFileAtomic replaces path with data: written to a temp file created
// exclusively (O_EXCL|O_NOFOLLOW, random name) in path's own directory,
// synced, then renamed over path. A symlink planted at the temp name or a
// guessable name cannot redirect the write.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return writeFileAtomicAt(d, base, data, perm)
}

// writeFileAtomicAt is writeFileAtomic relative to an open directory, so
// the directory checked by the caller is the one written to.
func writeFileAtomicAt(dir *os.File, name string, data []byte, perm os.FileMode) error {
	tmp := tempName(name)
	fd, err := unix.Openat(int(dir.Fd()), tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return &os.PathError{Op: "create", Path: filepath.Join(dir.Name(), tmp), Err: err}
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir.Name(), tmp))
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(int(dir.Fd()), tmp, int(dir.Fd()), name)
	}
	if err != nil {
		_ = unix.Unlinkat(int(dir.Fd()), tmp, 0)
		return fmt.Errorf("write %s: %w", filepath.Join(dir.Name(), name), err)
	}
	return nil
}
