// Package flock is the single-host lock backend: one flock(2)ed file per
// lock under a locks dir, laid out as Proxmox Backup Server does, so that
// pbsq and a PBS on the same host (Dir = PBSDir) exclude each other.
//
// flock locks belong to open file descriptions, so two opens of one file in
// the same process conflict just as two processes do; each attempt opens its
// own descriptors and goroutines behave like separate processes.
//
// Lock files are never written (PBS keeps them empty) and never removed here.
// Holders learns who holds what from /proc/locks, plus this Backend's own
// registry of leases for task IDs and start times.
package flock

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/internal/confine"
)

const (
	// DefaultDir is pbsq's own locks dir.
	DefaultDir = "/run/pbsq/locks"
	// PBSDir is the locks dir of Proxmox Backup Server; use it to
	// interoperate with a PBS on the same host.
	PBSDir = "/run/proxmox-backup/locks"
)

// Options configure a Backend.
type Options struct {
	Dir    string       // locks dir; default DefaultDir
	Logger *slog.Logger // nil: discard
}

// Backend implements lock.Backend with flock(2).
type Backend struct {
	dir string
	// root confines every lock file to the locks dir: no symbolic link is
	// followed below it, so a link planted by the dir's owner cannot make
	// pbsq create or chown files elsewhere.
	root *confine.Root
	host string
	log  *slog.Logger
	// Running as root, files and dirs it creates are given the locks dir's
	// owner, as PBS gives its lock files to "backup", so that a PBS (or
	// pbsq) running unprivileged can still open them. Existing files are
	// never chowned.
	chown    bool
	uid, gid int

	mu     sync.Mutex
	closed bool
	leases map[*lease]struct{} // live leases, for Holders and Close
}

var _ lock.Backend = (*Backend)(nil)

// New creates the locks dir if needed and checks that it is writable.
func New(opts Options) (*Backend, error) {
	dir := filepath.Clean(cmp.Or(opts.Dir, DefaultDir))
	if err := CheckOldLocking(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("flock: locks dir %s: %w", dir, err)
	}
	if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
		return nil, fmt.Errorf("flock: locks dir %s not writable: %w", dir, err)
	}
	root, err := confine.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("flock: locks dir %s: %w", dir, err)
	}
	st, err := root.Stat("")
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("flock: locks dir %s: %w", dir, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	host, _ := os.Hostname()
	return &Backend{
		dir: dir, root: root, host: host, log: log, leases: make(map[*lease]struct{}),
		chown: os.Geteuid() == 0 && (st.Uid != 0 || st.Gid != 0), uid: int(st.Uid), gid: int(st.Gid),
	}, nil
}

// Dir is the locks dir.
func (b *Backend) Dir() string { return b.dir }

// Path is the lock file of req (see RelPath).
func (b *Backend) Path(req lock.Request) string { return filepath.Join(b.dir, RelPath(req)) }

// errWouldBlock is a lock file held by someone else.
type errWouldBlock struct{ id fileID }

func (errWouldBlock) Error() string { return "would block" }

// TryLock opens and flocks, non-blocking, the chain's files shallowest first;
// on a refusal it closes what it took.
func (b *Backend) TryLock(ctx context.Context, req lock.Request, h lock.Holder) (lock.Lease, error) {
	req = req.Normalize()
	if err := req.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("flock: %s: %w", req, lock.ErrClosed)
	}
	// Checked on every lock, not once: a PBS upgrade may create the marker
	// while a worker runs.
	if err := CheckOldLocking(b.dir); err != nil {
		return nil, err
	}
	chain := req.Chain()
	l := &lease{b: b, req: req, holder: h, since: time.Now(), units: chain,
		paths: make([]string, 0, len(chain)), fds: make([]int, 0, len(chain))}
	for _, unit := range chain {
		p := b.Path(unit)
		fd, err := b.lockFile(RelPath(unit), unit.Mode)
		if err != nil {
			l.closeFDs()
			var wb errWouldBlock
			if errors.As(err, &wb) {
				return nil, &lock.BusyError{Request: req, Conflict: unit, Holder: b.holderOf(p, wb.id, unit.Mode)}
			}
			return nil, fmt.Errorf("flock: %s in locks dir %s: %w", unit, b.dir, err)
		}
		l.paths, l.fds = append(l.paths, p), append(l.fds, fd)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed { // closed meanwhile: don't leave an unreleasable lease
		l.closeFDs()
		return nil, fmt.Errorf("flock: %s: %w", req, lock.ErrClosed)
	}
	b.leases[l] = struct{}{}
	return l, nil
}

// lockFile opens (creating) rel below the locks dir and flocks it without
// blocking. It then checks that rel still names the locked inode ("double
// stat"): a holder may unlink a lock file after use, and a lock on the
// unlinked inode would exclude no one. A file replaced twice in a row
// counts as busy.
func (b *Backend) lockFile(rel string, mode lock.Mode) (int, error) {
	how := unix.LOCK_SH
	if mode == lock.Exclusive {
		how = unix.LOCK_EX
	}
	path := b.root.Join(rel)
	dir, base := filepath.Split(rel)
	dfd, err := b.root.MkdirAll(strings.TrimSuffix(dir, "/"),
		func(string) uint32 { return 0o755 }, func(fd int, _ string) error { return b.giveAway(fd) })
	if err != nil {
		return -1, err
	}
	defer unix.Close(dfd)
	for attempt := 0; ; attempt++ {
		fd, err := b.openLockFile(dfd, base, path)
		if err != nil {
			return -1, err
		}
		var fst unix.Stat_t
		if err := unix.Fstat(fd, &fst); err != nil {
			unix.Close(fd)
			return -1, &os.PathError{Op: "fstat", Path: path, Err: err}
		}
		if fst.Mode&unix.S_IFMT != unix.S_IFREG {
			unix.Close(fd)
			return -1, fmt.Errorf("%s: %s: %w", path, confine.FileType(&fst), confine.ErrNotRegular)
		}
		if err := flockNB(fd, how); err != nil {
			unix.Close(fd)
			if err == unix.EWOULDBLOCK {
				return -1, errWouldBlock{statID(&fst)}
			}
			return -1, &os.PathError{Op: "flock", Path: path, Err: err}
		}
		var pst unix.Stat_t
		err = unix.Fstatat(dfd, base, &pst, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil && pst.Dev == fst.Dev && pst.Ino == fst.Ino {
			return fd, nil
		}
		unix.Close(fd)
		if err != nil && err != unix.ENOENT {
			return -1, &os.PathError{Op: "stat", Path: path, Err: err}
		}
		if attempt == 1 {
			return -1, errWouldBlock{statID(&fst)}
		}
	}
}

// giveAway chowns a file or dir this Backend has just created to the
// locks dir's owner, when running as root.
func (b *Backend) giveAway(fd int) error {
	if !b.chown {
		return nil
	}
	return unix.Fchown(fd, b.uid, b.gid)
}

// openLockFile opens base in dfd read-only (flock needs no write access,
// which lets a member of PBS's backup group lock PBS's 0644 files),
// creating it 0644 when missing — and only a file it created is chowned.
// It never follows a link and never blocks (a FIFO is refused after).
func (b *Backend) openLockFile(dfd int, base, path string) (int, error) {
	const flags = unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NOCTTY | unix.O_NONBLOCK
	for {
		fd, err := unix.Openat(dfd, base, flags, 0)
		switch {
		case err == nil:
			return fd, nil
		case err == unix.EINTR:
			continue
		case err == unix.ELOOP:
			return -1, confine.Link(path)
		case err != unix.ENOENT:
			return -1, &os.PathError{Op: "open", Path: path, Err: err}
		}
		fd, err = unix.Openat(dfd, base, flags|unix.O_CREAT|unix.O_EXCL, 0o644)
		switch {
		case err == unix.EEXIST || err == unix.EINTR:
			continue // created meanwhile: open that one
		case err != nil:
			return -1, &os.PathError{Op: "create", Path: path, Err: err}
		}
		if err := b.giveAway(fd); err != nil {
			unix.Close(fd)
			return -1, &os.PathError{Op: "fchown", Path: path, Err: err}
		}
		return fd, nil
	}
}

func flockNB(fd, how int) error {
	for {
		err := unix.Flock(fd, how|unix.LOCK_NB)
		if err != unix.EINTR {
			return err
		}
	}
}

// holderOf tells who holds path against a request in mode: a lease of this
// Backend if there is one (with its task), else a process from
// /proc/locks, else nil ("another process").
func (b *Backend) holderOf(path string, id fileID, mode lock.Mode) *lock.Holder {
	b.mu.Lock()
	for l := range b.leases {
		for i, p := range l.paths {
			if p == path && (mode == lock.Exclusive || l.units[i].Mode == lock.Exclusive) {
				h := l.holder
				b.mu.Unlock()
				return &h
			}
		}
	}
	b.mu.Unlock()
	locks, err := readProcLocks()
	if err != nil {
		return nil
	}
	for _, pl := range locks[id] {
		if (mode == lock.Exclusive || pl.write) && pl.pid > 0 {
			return &lock.Holder{Host: b.host, PID: pl.pid}
		}
	}
	return nil
}

// Holders lists the held lock files under the locks dir. Modes and PIDs
// come from /proc/locks; where that is unreadable each file is probed with
// a non-blocking exclusive flock (mode then unknown), which may make a
// concurrent TryLock of that file fail spuriously, once.
func (b *Backend) Holders(ctx context.Context) ([]lock.Held, error) {
	procs, procErr := readProcLocks()
	if procErr != nil {
		b.log.DebugContext(ctx, "flock: /proc/locks unreadable, probing lock files", "err", procErr)
	}
	type ownEntry struct {
		req    lock.Request
		holder lock.Holder
		since  time.Time
		used   bool
	}
	own := make(map[string][]*ownEntry)
	b.mu.Lock()
	for l := range b.leases {
		for i, p := range l.paths {
			own[p] = append(own[p], &ownEntry{req: l.units[i], holder: l.holder, since: l.since})
		}
	}
	b.mu.Unlock()

	pid := os.Getpid()
	var out []lock.Held
	err := filepath.WalkDir(b.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(b.dir, path)
		if err != nil {
			return err
		}
		req, ok := decode(strings.Split(rel, string(filepath.Separator)))
		if !ok {
			return nil
		}
		for _, e := range own[path] {
			out = append(out, lock.Held{Request: e.req, Holder: e.holder, Since: e.since, Path: path})
		}
		if procErr != nil {
			if len(own[path]) == 0 && b.probeHeld(rel) {
				out = append(out, lock.Held{Request: req, Holder: lock.Holder{Host: b.host}, Path: path})
			}
			return nil
		}
		st, err := b.root.Stat(rel)
		if err != nil {
			return nil // removed meanwhile, or not a file beneath the dir
		}
	next:
		for _, pl := range procs[statID(&st)] {
			r := req
			r.Mode = lock.Shared
			if pl.write {
				r.Mode = lock.Exclusive
			}
			if pl.pid == pid { // already listed from the registry?
				for _, e := range own[path] {
					if !e.used && e.req.Mode == r.Mode {
						e.used = true
						continue next
					}
				}
			}
			h := lock.Holder{Host: b.host}
			if pl.pid > 0 {
				h.PID = pl.pid
			}
			out = append(out, lock.Held{Request: r, Holder: h, Path: path})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("flock: list holders in %s: %w", b.dir, err)
	}
	slices.SortStableFunc(out, func(a, b lock.Held) int { return cmp.Compare(a.Path, b.Path) })
	return out, nil
}

// probeHeld reports whether someone holds rel, by trying to take it.
func (b *Backend) probeHeld(rel string) bool {
	fd, _, err := b.root.OpenFile(rel)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	return flockNB(fd, unix.LOCK_EX) == unix.EWOULDBLOCK
}

// Close releases every lease still held through this Backend.
func (b *Backend) Close() error {
	b.mu.Lock()
	b.closed = true
	leases := make([]*lease, 0, len(b.leases))
	for l := range b.leases {
		leases = append(leases, l)
	}
	b.mu.Unlock()
	var errs []error
	for _, l := range leases {
		errs = append(errs, l.Release())
	}
	errs = append(errs, b.root.Close())
	return errors.Join(errs...)
}

// lease is a granted chain: one open, flocked descriptor per lock.
type lease struct {
	b      *Backend
	req    lock.Request
	holder lock.Holder
	since  time.Time
	units  []lock.Request
	paths  []string

	mu  sync.Mutex
	fds []int // nil once released
}

// Release closes the descriptors, deepest first, which drops the flocks.
func (l *lease) Release() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fds == nil {
		return nil
	}
	l.b.mu.Lock()
	delete(l.b.leases, l)
	l.b.mu.Unlock()
	return l.closeFDs()
}

func (l *lease) closeFDs() error {
	var errs []error
	for i := len(l.fds) - 1; i >= 0; i-- {
		if err := unix.Close(l.fds[i]); err != nil {
			errs = append(errs, fmt.Errorf("flock: close %s: %w", l.paths[i], err))
		}
	}
	l.fds = nil
	return errors.Join(errs...)
}

// Lost is nil: a flock cannot be lost while the descriptor is open.
func (l *lease) Lost() <-chan struct{} { return nil }
