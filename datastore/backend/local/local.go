// Package local is the filesystem backend: a PBS datastore directory.
//
// Every access is confined to the datastore (internal/confine): paths are
// resolved beneath an open descriptor of the base directory and no
// symbolic link is followed in any component. A link inside the store is
// reported (backend.ErrSymlink, naming it) and never followed, removed
// through or chowned through; a FIFO, socket or device where a file is
// expected is refused (backend.ErrNotRegular) without blocking. Files and
// directories created here belong to the owner of the base directory.
package local

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/internal/confine"
)

// FS stores files below a base directory.
type FS struct {
	base  string
	root  *confine.Root
	owner confine.Owner
}

// New returns a backend rooted at base, which must exist. It fails
// (wrapping confine.ErrNotOwner) when pbsq runs as a user other than root
// that cannot create files owned by base's owner.
func New(base string) (*FS, error) {
	abs, err := filepath.Abs(base)
	if err != nil {
		return nil, fmt.Errorf("datastore path %q: %w", base, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("datastore path %q: %w", base, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("datastore path %q: not a directory", base)
	}
	root, err := confine.OpenRoot(abs)
	if err != nil {
		return nil, fmt.Errorf("datastore path %q: %w", base, err)
	}
	owner, err := confine.OwnerOf(root)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("datastore path %q: %w", base, err)
	}
	return &FS{base: abs, root: root, owner: owner}, nil
}

// Base is the absolute base directory.
func (f *FS) Base() string { return f.base }

// Owner is who the files this backend creates belong to.
func (f *FS) Owner() confine.Owner { return f.owner }

func (f *FS) String() string { return f.base }

// Features: rename(2) is atomic and directories exist on their own.
func (f *FS) Features() backend.Features {
	return backend.Features{Kind: "fs", InFlight: 16, AtomicRename: true, RoundTrips: false}
}

// check validates name; "." passes ValidPath but would mean the base
// itself, which e.g. RemoveAll would delete.
func check(name string) error {
	if err := backend.ValidPath(name); err != nil {
		return err
	}
	if name == "." {
		return fmt.Errorf("%w %q", backend.ErrInvalidPath, name)
	}
	return nil
}

// checkFile is check for names that must be files: "" is the base
// directory, which file operations must never write, rename or remove.
func checkFile(name string) error {
	if name == "" {
		return fmt.Errorf("%w %q: not a file name", backend.ErrInvalidPath, name)
	}
	return check(name)
}

// notExist reports a path through a regular file ("file/x", ENOTDIR) as
// fs.ErrNotExist, as it is on S3: such a path simply does not exist.
func notExist(err error) error {
	if errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%w: %w", iofs.ErrNotExist, err)
	}
	return err
}

func isNotExist(err error) bool { return errors.Is(notExist(err), iofs.ErrNotExist) }

func split(name string) (dir, base string) {
	dir, base = path.Split(name)
	return strings.TrimSuffix(dir, "/"), base
}

// dirMode: the chunk store's directories are 0750 as PBS's
// ChunkStore::create makes them; others 0755 (both before the umask).
func dirMode(rel string) uint32 {
	if rel == ".chunks" || strings.HasPrefix(rel, ".chunks/") {
		return 0o750
	}
	return 0o755
}

// parent opens name's directory (O_PATH) beneath the base.
func (f *FS) parent(name string) (int, string, error) {
	dir, base := split(name)
	fd, err := f.root.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	return fd, base, err
}

// mkParent opens name's directory, creating it and its parents (owned by
// the store's owner) as needed.
func (f *FS) mkParent(name string) (int, string, error) {
	dir, base := split(name)
	fd, err := f.mkdirAll(dir)
	return fd, base, err
}

func (f *FS) mkdirAll(dir string) (int, error) {
	return f.root.MkdirAll(dir, dirMode, func(fd int, _ string) error { return f.owner.Apply(fd) })
}

// readAll reads the regular file open as fd, of stat size, into buf
// (grown as needed); max > 0 refuses files larger than max.
func readAll(fd int, size int64, buf []byte, max int64, p string) ([]byte, error) {
	if max > 0 && size > max {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d allowed: %w", p, size, max, backend.ErrTooLarge)
	}
	if cap(buf) < int(size) {
		buf = make([]byte, 0, size)
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			// As large as stat said (or the buffer): EOF is the usual
			// answer; anything else means the file grew meanwhile.
			var probe [1]byte
			m, err := readRetry(fd, probe[:])
			if err != nil {
				return nil, &os.PathError{Op: "read", Path: p, Err: err}
			}
			if m == 0 {
				return buf, nil
			}
			buf = append(buf, probe[0])
		}
		if max > 0 && int64(len(buf)) > max {
			return nil, fmt.Errorf("%s: more than the %d bytes allowed: %w", p, max, backend.ErrTooLarge)
		}
		m, err := readRetry(fd, buf[len(buf):cap(buf)])
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: p, Err: err}
		}
		if m == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+m]
	}
}

func readRetry(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Read(fd, b)
		if err != unix.EINTR {
			return n, err
		}
	}
}

func (f *FS) read(name string, buf []byte, max int64) ([]byte, error) {
	if err := checkFile(name); err != nil {
		return nil, err
	}
	fd, st, err := f.root.OpenFile(name)
	if err != nil {
		return nil, notExist(err)
	}
	defer unix.Close(fd)
	return readAll(fd, st.Size, buf, max, f.root.Join(name))
}

// ReadFile implements backend.Backend.
func (f *FS) ReadFile(ctx context.Context, name string) ([]byte, error) {
	return f.read(name, nil, 0)
}

// ReadFileMax implements backend.MaxReader.
func (f *FS) ReadFileMax(ctx context.Context, name string, max int64) ([]byte, error) {
	if max <= 0 {
		return nil, fmt.Errorf("%w: read limit %d", backend.ErrInvalidPath, max)
	}
	return f.read(name, nil, max)
}

// ReadFileInto implements backend.BufferedReader.
func (f *FS) ReadFileInto(ctx context.Context, name string, buf []byte) ([]byte, error) {
	return f.read(name, buf, 0)
}

// Open implements backend.Opener.
func (f *FS) Open(ctx context.Context, name string) (io.ReadCloser, error) {
	if err := checkFile(name); err != nil {
		return nil, err
	}
	fd, _, err := f.root.OpenFile(name)
	if err != nil {
		return nil, notExist(err)
	}
	// Regular files ignore O_NONBLOCK; clearing it spares the runtime a
	// failed poller registration.
	_ = unix.SetNonblock(fd, false)
	return os.NewFile(uintptr(fd), f.root.Join(name)), nil
}

// tempName is hidden and unique so that a crash leaves only a dot-file that no
// listing of snapshots or chunks mistakes for data.
func tempName(base string) string {
	var r [6]byte
	_, _ = rand.Read(r[:])
	return "." + base + ".tmp-" + hex.EncodeToString(r[:])
}

// writeTemp writes what src holds to a fresh temp file in dfd (created
// exclusively, never through a link, given to the store's owner), fsyncing
// it when sync is set, and returns its name. An error (src's too) removes
// the temp file.
func (f *FS) writeTemp(dfd int, dir, base string, src io.Reader, sync bool) (string, error) {
	tmp := tempName(base)
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return "", &os.PathError{Op: "create", Path: f.root.Join(backend.Join(dir, tmp)), Err: err}
	}
	fh := os.NewFile(uintptr(fd), f.root.Join(backend.Join(dir, tmp)))
	err = f.owner.Apply(fd)
	if err == nil {
		_, err = io.Copy(fh, src)
	}
	if err == nil && sync {
		err = fh.Sync()
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return "", err
	}
	return tmp, nil
}

// WriteFile is temp file + fsync + rename: never a partial file under name.
// A link at name is replaced, never written through.
func (f *FS) WriteFile(ctx context.Context, name string, data []byte) error {
	return f.WriteFrom(ctx, name, bytes.NewReader(data))
}

// WriteFrom implements backend.StreamWriter as WriteFile does: src is
// copied into the temp file, which is renamed over name only once src
// has ended without error.
func (f *FS) WriteFrom(ctx context.Context, name string, src io.Reader) error {
	if err := checkFile(name); err != nil {
		return err
	}
	dfd, base, err := f.mkParent(name)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	dir, _ := split(name)
	tmp, err := f.writeTemp(dfd, dir, base, src, true)
	if err != nil {
		return err
	}
	if err := unix.Renameat(dfd, tmp, dfd, base); err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return &os.LinkError{Op: "rename", Old: f.root.Join(backend.Join(dir, tmp)), New: f.root.Join(name), Err: err}
	}
	return nil
}

// CreateFile links the temp file into place, which fails if name exists.
// It does not fsync: chunk inserts would be bound by it. Callers that need
// durability (backup before its manifest) call Sync once, as PBS does with
// syncfs at its default sync level.
func (f *FS) CreateFile(ctx context.Context, name string, data []byte) (bool, error) {
	if err := checkFile(name); err != nil {
		return false, err
	}
	dfd, base, err := f.mkParent(name)
	if err != nil {
		return false, err
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		return false, nil
	}
	dir, _ := split(name)
	tmp, err := f.writeTemp(dfd, dir, base, bytes.NewReader(data), false)
	if err != nil {
		return false, err
	}
	defer unix.Unlinkat(dfd, tmp, 0)
	if err := unix.Linkat(dfd, tmp, dfd, base, 0); err != nil {
		if err == unix.EEXIST {
			return false, nil
		}
		return false, &os.LinkError{Op: "link", Old: tmp, New: f.root.Join(name), Err: err}
	}
	return true, nil
}

func info(name string, st *unix.Stat_t) backend.FileInfo {
	fi := backend.FileInfo{
		Name:       name,
		Dir:        st.Mode&unix.S_IFMT == unix.S_IFDIR,
		Size:       st.Size,
		ModTime:    time.Unix(st.Mtim.Unix()),
		AccessTime: time.Unix(st.Atim.Unix()),
	}
	if fi.Dir {
		fi.Size = 0
	}
	return fi
}

// Stat implements backend.Backend.
func (f *FS) Stat(ctx context.Context, name string) (backend.FileInfo, error) {
	if err := check(name); err != nil {
		return backend.FileInfo{}, err
	}
	st, err := f.root.Stat(name)
	if err != nil {
		return backend.FileInfo{}, notExist(err)
	}
	if name == "" {
		return info(filepath.Base(f.base), &st), nil
	}
	return info(path.Base(name), &st), nil
}

// dirEntries lists the open directory dfd (at rel, for messages) with
// each entry's lstat; entries removed meanwhile are left out, and a link
// fails the listing.
func (f *FS) dirEntries(dfd int, rel string, fn func(name string, st *unix.Stat_t) error) error {
	dh := os.NewFile(uintptr(dfd), f.root.Join(rel))
	defer dh.Close()
	names, err := dh.Readdirnames(-1)
	if err != nil {
		return err
	}
	slices.Sort(names)
	for _, n := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				continue
			}
			return &os.PathError{Op: "lstat", Path: f.root.Join(backend.Join(rel, n)), Err: err}
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return confine.Link(f.root.Join(backend.Join(rel, n)))
		}
		if err := fn(n, &st); err != nil {
			return err
		}
	}
	return nil
}

// List implements backend.Backend. A symbolic link in dir fails the
// listing with backend.ErrSymlink naming it.
func (f *FS) List(ctx context.Context, dir string) ([]backend.FileInfo, error) {
	if err := check(dir); err != nil {
		return nil, err
	}
	dfd, err := f.root.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, notExist(err)
	}
	var out []backend.FileInfo
	err = f.dirEntries(dfd, dir, func(n string, st *unix.Stat_t) error {
		out = append(out, info(n, st))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Walk implements backend.Backend. It never descends through a link: one
// fails the walk with backend.ErrSymlink naming it.
func (f *FS) Walk(ctx context.Context, dir string, fn func(backend.FileInfo) error) error {
	if err := check(dir); err != nil {
		return err
	}
	dfd, err := f.root.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if errors.Is(err, syscall.ENOTDIR) {
		// dir is a file: walk yields it alone.
		st, serr := f.root.Stat(dir)
		if serr != nil {
			return nil
		}
		return fn(info(dir, &st))
	}
	if isNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.walk(ctx, dfd, dir, fn)
}

// walk walks the open directory dfd (at rel) and closes it.
func (f *FS) walk(ctx context.Context, dfd int, rel string, fn func(backend.FileInfo) error) error {
	if err := ctx.Err(); err != nil {
		unix.Close(dfd)
		return err
	}
	return f.dirEntries(dfd, rel, func(n string, st *unix.Stat_t) error {
		sub := backend.Join(rel, n)
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return fn(info(sub, st))
		}
		cfd, err := unix.Openat(dfd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		switch {
		case err == unix.ENOENT:
			return nil // removed while walking
		case err == unix.ELOOP || err == unix.ENOTDIR:
			return confine.Link(f.root.Join(sub)) // replaced by a link meanwhile
		case err != nil:
			return &os.PathError{Op: "open", Path: f.root.Join(sub), Err: err}
		}
		return f.walk(ctx, cfd, sub, fn)
	})
}

// Remove implements backend.Backend. A link is removed itself (unlink
// never follows it); its target is untouched.
func (f *FS) Remove(ctx context.Context, name string) error {
	if err := checkFile(name); err != nil {
		return err
	}
	dfd, base, err := f.parent(name)
	if err != nil {
		if isNotExist(err) {
			return nil
		}
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Unlinkat(dfd, base, 0); err != nil && err != unix.ENOENT {
		return notExistOK(&os.PathError{Op: "remove", Path: f.root.Join(name), Err: err})
	}
	return nil
}

func notExistOK(err error) error {
	if isNotExist(err) {
		return nil
	}
	return err
}

// removalParent opens the parent of dir for RemoveAll and RemoveDir: the
// datastore base is refused, and a missing parent is ok=false with no
// error (nothing to remove). The caller closes dfd when ok.
func (f *FS) removalParent(dir string) (dfd int, base string, ok bool, err error) {
	if dir == "" {
		return -1, "", false, fmt.Errorf("%w: refusing to remove the datastore base", backend.ErrInvalidPath)
	}
	if err := check(dir); err != nil {
		return -1, "", false, err
	}
	dfd, base, err = f.parent(dir)
	if err != nil {
		return -1, "", false, notExistOK(err)
	}
	return dfd, base, true, nil
}

// unlinkFile removes a non-directory base of dfd (at rel); gone already
// is fine.
func (f *FS) unlinkFile(dfd int, base, rel string) error {
	if err := unix.Unlinkat(dfd, base, 0); err != nil && err != unix.ENOENT {
		return &os.PathError{Op: "remove", Path: f.root.Join(rel), Err: err}
	}
	return nil
}

// RemoveAll implements backend.Backend. A tree holding a link is refused
// (backend.ErrSymlink naming it) before anything is removed.
func (f *FS) RemoveAll(ctx context.Context, dir string) error {
	dfd, base, ok, err := f.removalParent(dir)
	if !ok {
		return err
	}
	defer unix.Close(dfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return notExistOK(&os.PathError{Op: "lstat", Path: f.root.Join(dir), Err: err})
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return confine.Link(f.root.Join(dir))
	case unix.S_IFDIR:
	default:
		return f.unlinkFile(dfd, base, dir)
	}
	if err := f.removeTree(ctx, dfd, base, dir, true); err != nil {
		return err
	}
	return f.removeTree(ctx, dfd, base, dir, false)
}

// removeTree removes directory base of dfd (at rel) with everything below
// it; with scan it only looks for links and removes nothing.
func (f *FS) removeTree(ctx context.Context, dfd int, base, rel string, scan bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cfd, err := unix.Openat(dfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case err == unix.ENOENT:
		return nil
	case err == unix.ELOOP || err == unix.ENOTDIR:
		return confine.Link(f.root.Join(rel))
	case err != nil:
		return &os.PathError{Op: "open", Path: f.root.Join(rel), Err: err}
	}
	err = f.dirEntries(cfd, rel, func(n string, st *unix.Stat_t) error {
		sub := backend.Join(rel, n)
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return f.removeTree(ctx, cfd, n, sub, scan)
		}
		if scan {
			return nil
		}
		return f.unlinkFile(cfd, n, sub)
	}) // closes cfd
	if err != nil || scan {
		return err
	}
	if err := unix.Unlinkat(dfd, base, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		return &os.PathError{Op: "remove", Path: f.root.Join(rel), Err: err}
	}
	return nil
}

// Mkdir implements backend.Backend.
func (f *FS) Mkdir(ctx context.Context, dir string) error {
	if err := check(dir); err != nil {
		return err
	}
	fd, err := f.mkdirAll(dir)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// RemoveDir implements backend.Backend.
func (f *FS) RemoveDir(ctx context.Context, dir string) error {
	dfd, base, ok, err := f.removalParent(dir)
	if !ok {
		return err
	}
	defer unix.Close(dfd)
	err = unix.Unlinkat(dfd, base, unix.AT_REMOVEDIR)
	switch err {
	case nil, unix.ENOENT:
		return nil
	case unix.ENOTEMPTY, unix.EEXIST:
		return fmt.Errorf("%s: %w", dir, backend.ErrNotEmpty)
	case unix.ENOTDIR:
		var st unix.Stat_t
		if unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return confine.Link(f.root.Join(dir))
		}
		// A file, as os.Remove would.
		return f.unlinkFile(dfd, base, dir)
	}
	return &os.PathError{Op: "rmdir", Path: f.root.Join(dir), Err: err}
}

// Rename uses renameat2(RENAME_NOREPLACE) so an existing target is never
// silently replaced; the target's parent is created first. A link is never
// renamed: it is reported.
func (f *FS) Rename(ctx context.Context, from, to string) error {
	if err := checkFile(from); err != nil {
		return err
	}
	if err := checkFile(to); err != nil {
		return err
	}
	ffd, fbase, err := f.parent(from)
	if err != nil {
		return notExist(err)
	}
	defer unix.Close(ffd)
	var st unix.Stat_t
	if err := unix.Fstatat(ffd, fbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return notExist(&os.LinkError{Op: "rename", Old: f.root.Join(from), New: f.root.Join(to), Err: err})
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return confine.Link(f.root.Join(from))
	}
	tfd, tbase, err := f.mkParent(to)
	if err != nil {
		return err
	}
	defer unix.Close(tfd)
	err = unix.Renameat2(ffd, fbase, tfd, tbase, unix.RENAME_NOREPLACE)
	if err == unix.EINVAL || err == unix.ENOSYS {
		// Filesystem without RENAME_NOREPLACE: check, then rename.
		if unix.Fstatat(tfd, tbase, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
			err = unix.EEXIST
		} else {
			err = unix.Renameat(ffd, fbase, tfd, tbase)
		}
	}
	if err != nil {
		return notExist(&os.LinkError{Op: "rename", Old: f.root.Join(from), New: f.root.Join(to), Err: err})
	}
	return nil
}

// Copy implements backend.Backend.
func (f *FS) Copy(ctx context.Context, from, to string) error {
	data, err := f.ReadFile(ctx, from)
	if err != nil {
		return err
	}
	return f.WriteFile(ctx, to, data)
}

// Touch sets the atime only, as PBS does, so mtimes stay meaningful. A
// link is touched itself, never its target.
func (f *FS) Touch(ctx context.Context, name string) error {
	if err := checkFile(name); err != nil {
		return err
	}
	dfd, base, err := f.parent(name)
	if err != nil {
		return notExist(err)
	}
	defer unix.Close(dfd)
	ts := []unix.Timespec{{Nsec: unix.UTIME_NOW}, {Nsec: unix.UTIME_OMIT}}
	if err := unix.UtimesNanoAt(dfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		// A bare errno would neither name the file nor match fs.ErrNotExist
		// via a PathError; keep both.
		return notExist(&iofs.PathError{Op: "touch", Path: f.root.Join(name), Err: err})
	}
	return nil
}

// Sync flushes the whole filesystem of the datastore (syncfs(2)).
func (f *FS) Sync(ctx context.Context) error {
	fd, err := f.root.Open("", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncfs %s: %w", f.base, err)
	}
	return nil
}

// Close releases the base directory's descriptor.
func (f *FS) Close() error { return f.root.Close() }

// IsTemp reports whether a base name is one of this backend's temp files.
func IsTemp(base string) bool {
	return strings.HasPrefix(base, ".") && strings.Contains(base, ".tmp-")
}

var _ backend.Backend = (*FS)(nil)
var _ backend.MaxReader = (*FS)(nil)
