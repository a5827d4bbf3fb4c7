// Package confine resolves paths beneath an open directory without
// following any symbolic link, in any component. Datastores and the locks
// dir can be written by another user (PBS's "backup"); a link planted there
// must never make pbsq read, write, remove or chown anything outside.
//
// Resolution uses openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), or, where
// the kernel lacks it, a walk of openat(O_NOFOLLOW) one component at a time.
// os.Root is not enough: it follows links that stay inside the root.
package confine

import (
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Sentinels, re-exported by the backend package.
var (
	// ErrSymlink: a path component is a symbolic link; it is never followed.
	ErrSymlink = errors.New("is a symbolic link, which pbsq never follows inside a datastore or locks dir")
	// ErrNotRegular: a FIFO, socket, device or directory where a file is
	// expected; it is never read (a FIFO would block).
	ErrNotRegular = errors.New("not a regular file")
	// ErrClosed: the Root was closed.
	ErrClosed = errors.New("closed")
)

// Root is an open directory that every resolution starts from. Holding the
// descriptor means a later rename or link of the directory's own path
// cannot redirect pbsq either.
type Root struct {
	path string

	mu sync.RWMutex
	fd int // -1 once closed
}

// OpenRoot opens dir, which the administrator named (links in its own
// path are followed: that path is configuration, not datastore content).
func OpenRoot(dir string) (*Root, error) {
	fd, err := openRetry(unix.AT_FDCWD, dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return &Root{path: dir, fd: fd}, nil
}

// Path is the directory's path, for messages.
func (r *Root) Path() string { return r.path }

// Close releases the descriptor; later calls fail with ErrClosed.
func (r *Root) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// Join is rel's full path, for messages.
func (r *Root) Join(rel string) string {
	if rel == "" {
		return r.path
	}
	return path.Join(r.path, rel)
}

const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

var (
	haveOpenat2     bool
	haveOpenat2Once sync.Once
)

// openat2Works probes once: ENOSYS on old kernels, EPERM or ENOSYS under
// some seccomp profiles.
func openat2Works() bool {
	haveOpenat2Once.Do(func() {
		fd, err := unix.Openat2(unix.AT_FDCWD, "/", &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC})
		if err == nil {
			unix.Close(fd)
			haveOpenat2 = true
		}
	})
	return haveOpenat2
}

// Open opens rel (a clean relative slash-separated path without ".."
// components; "" is the root itself) beneath r with flags and mode. A
// symbolic link in any component, the last included, fails with an error
// that wraps ErrSymlink and names the link. Other errors are
// *os.PathError with the full path, so errors.Is(err, fs.ErrNotExist)
// works. O_CLOEXEC is always added.
func (r *Root) Open(rel string, flags int, mode uint32) (int, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.fd < 0 {
		return -1, fmt.Errorf("%s: %w", r.path, ErrClosed)
	}
	if rel == "" {
		rel = "."
	}
	flags |= unix.O_CLOEXEC
	var fd int
	var err error
	if openat2Works() {
		how := unix.OpenHow{Flags: uint64(flags), Resolve: resolveFlags}
		if flags&unix.O_CREAT != 0 {
			how.Mode = uint64(mode)
		}
		for {
			fd, err = unix.Openat2(r.fd, rel, &how)
			// EAGAIN: a concurrent rename somewhere in the tree; retry.
			if err != unix.EINTR && err != unix.EAGAIN {
				break
			}
		}
	} else {
		fd, err = r.walkOpen(rel, flags, mode)
	}
	if err != nil {
		return -1, r.wrap("open", rel, err)
	}
	return fd, nil
}

// walkOpen is Open without openat2: one openat(O_NOFOLLOW) per component.
func (r *Root) walkOpen(rel string, flags int, mode uint32) (int, error) {
	if rel == "." {
		return openRetry(r.fd, ".", flags, mode)
	}
	comps := strings.Split(rel, "/")
	cur := r.fd
	for _, c := range comps[:len(comps)-1] {
		next, err := openDirNoFollow(cur, c)
		if cur != r.fd {
			unix.Close(cur)
		}
		if err != nil {
			return -1, err
		}
		cur = next
	}
	// O_PATH|O_NOFOLLOW would open a link itself; drop O_PATH's exemption
	// by checking the result.
	last := comps[len(comps)-1]
	fd, err := openRetry(cur, last, flags|unix.O_NOFOLLOW, mode)
	if err == unix.ENOTDIR { // O_DIRECTORY|O_NOFOLLOW on a link
		var st unix.Stat_t
		if unix.Fstatat(cur, last, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			err = unix.ELOOP
		}
	}
	if cur != r.fd {
		unix.Close(cur)
	}
	if err == nil && flags&unix.O_PATH != 0 {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			unix.Close(fd)
			return -1, unix.ELOOP
		}
	}
	return fd, err
}

// openDirNoFollow opens directory name in dirfd for reading; a link
// there is ELOOP (O_DIRECTORY makes the kernel report it as ENOTDIR).
func openDirNoFollow(dirfd int, name string) (int, error) {
	fd, err := openRetry(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == unix.ENOTDIR {
		var st unix.Stat_t
		if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
			err = unix.ELOOP
		}
	}
	return fd, err
}

func openRetry(dirfd int, name string, flags int, mode uint32) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags, mode)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// wrap turns an errno from resolving rel into an error naming the path;
// ELOOP names the first link component.
func (r *Root) wrap(op, rel string, err error) error {
	if rel == "." {
		rel = ""
	}
	switch err {
	case unix.ELOOP:
		return r.symlinkError(rel)
	case unix.EXDEV:
		return fmt.Errorf("%s: resolves outside %s: %w", r.Join(rel), r.path, ErrSymlink)
	}
	return &os.PathError{Op: op, Path: r.Join(rel), Err: err}
}

// symlinkError names the first component of rel that is a link. It runs
// only after a refusal, so its own lookups (which may race) change
// nothing: they only choose the message.
func (r *Root) symlinkError(rel string) error {
	comps := strings.Split(rel, "/")
	for i := range comps {
		prefix := strings.Join(comps[:i+1], "/")
		var st unix.Stat_t
		if err := unix.Fstatat(r.fd, prefix, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			break
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return &LinkError{Path: r.Join(prefix)}
		}
	}
	return &LinkError{Path: r.Join(rel)}
}

// LinkError is a symbolic link met inside a confined tree.
type LinkError struct{ Path string }

func (e *LinkError) Error() string { return e.Path + " " + ErrSymlink.Error() }

// Unwrap makes errors.Is(err, ErrSymlink) hold.
func (e *LinkError) Unwrap() error { return ErrSymlink }

// Link reports the link at full path p (met by a *at call on its parent).
func Link(p string) error { return &LinkError{Path: p} }

// Stat describes rel itself (never a link's target): ErrSymlink if rel or
// any component is a link.
func (r *Root) Stat(rel string) (unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := r.Open(rel, unix.O_PATH, 0)
	if err != nil {
		return st, err
	}
	defer unix.Close(fd)
	if err := unix.Fstat(fd, &st); err != nil {
		return st, &os.PathError{Op: "fstat", Path: r.Join(rel), Err: err}
	}
	return st, nil
}

// MkdirAll opens directory rel beneath r, creating it and its missing
// parents; perm gives each created directory's mode from its relative
// path, and created (when not nil) is called with each new directory open
// (to chown it). The returned descriptor is open for reading; the caller
// closes it.
func (r *Root) MkdirAll(rel string, perm func(rel string) uint32, created func(fd int, rel string) error) (int, error) {
	const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY
	fd, err := r.Open(rel, dirFlags, 0)
	if err == nil || rel == "" || !errors.Is(err, unix.ENOENT) {
		return fd, err
	}
	// Missing: make the parent (usually there already), then rel in it.
	dir, base := "", rel
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		dir, base = rel[:i], rel[i+1:]
	}
	pfd, err := r.MkdirAll(dir, perm, created)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	made := false
	if err = unix.Mkdirat(pfd, base, perm(rel)); err == nil {
		made = true
	} else if err != unix.EEXIST { // EEXIST: created meanwhile
		return -1, r.wrap("mkdir", rel, err)
	}
	fd, err = openDirNoFollow(pfd, base)
	if err != nil {
		return -1, r.wrap("open", rel, err)
	}
	if made && created != nil {
		if err := created(fd, rel); err != nil {
			unix.Close(fd)
			return -1, &os.PathError{Op: "chown", Path: r.Join(rel), Err: err}
		}
	}
	return fd, nil
}

// FileType names st's type for messages.
func FileType(st *unix.Stat_t) string {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symbolic link"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return "special file"
}

// OpenFile opens the regular file rel for reading without ever blocking:
// O_NONBLOCK keeps a FIFO from hanging the open, and anything but a
// regular file is refused with ErrNotRegular before it is read.
func (r *Root) OpenFile(rel string) (int, unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := r.Open(rel, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return -1, st, err
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, st, &os.PathError{Op: "fstat", Path: r.Join(rel), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return -1, st, fmt.Errorf("%s: %s: %w", r.Join(rel), FileType(&st), ErrNotRegular)
	}
	return fd, st, nil
}
