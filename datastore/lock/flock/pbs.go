package flock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore/lock"
	"github.com/pbsq/pbsq/datastore/name"
	"github.com/pbsq/pbsq/internal/confine"
)

// The files below are PBS's, beside its group and snapshot locks, that
// pbsq must honour to run next to a PBS on the same datastore (pbs-datastore
// backup_info.rs, move_journal.rs).
const (
	// ManifestLockName is appended to a snapshot's relative path to name
	// the lock PBS takes around every manifest update and removal.
	ManifestLockName = ".index.json.lck"
	// ManifestLockWait is how long PBS waits for a manifest lock.
	ManifestLockWait = 5 * time.Second
	// MoveJournalName is PBS's per-datastore move journal.
	MoveJournalName = "move-journal"
	// MoveJournalWait is how long PBS waits for the journal's flock.
	MoveJournalWait = 10 * time.Second
	// oldLockingName, next to the locks dir, exists while a PBS upgraded
	// from before 3.3.5 has not been rebooted: it then still locks snapshot
	// and group directories, not the files in the locks dir.
	oldLockingName = "old-locking"
)

// ErrOldLocking is wrapped when the old-locking marker forbids locking.
var ErrOldLocking = errors.New("PBS still uses its old directory locking")

// CheckOldLocking refuses to lock in dir while <dir>/../old-locking exists:
// a PBS in that state locks the snapshot and group directories themselves,
// so flocks on the files in dir would exclude nothing it does.
func CheckOldLocking(dir string) error {
	p := filepath.Join(filepath.Dir(filepath.Clean(dir)), oldLockingName)
	_, err := os.Lstat(p)
	switch {
	case err == nil:
		return fmt.Errorf("flock: %s exists: the Proxmox Backup Server on this host was upgraded from a version before 3.3.5 "+
			"and not yet rebooted, so it still locks backup directories instead of the files in %s, and pbsq's locks would not "+
			"exclude it; reboot the host (or, once no task of the old PBS runs any more, remove %s and reload the PBS daemons): %w",
			p, dir, p, ErrOldLocking)
	case errors.Is(err, os.ErrNotExist), errors.Is(err, unix.ENOTDIR):
		return nil // (ENOTDIR: the locks dir cannot exist either; New says so)
	default:
		return fmt.Errorf("flock: cannot tell whether %s exists: %w", p, err)
	}
}

// ManifestRelPath is the manifest lock of snap relative to the locks dir:
// the snapshot lock's layout with ManifestLockName appended to the escaped
// path, e.g. main/a:b/vm-100-2022\x2d05\x2d02T08\x3a11\x3a33Z-.index.json.lck
// (hashed, as PBS does, when the escaped name is 255 bytes or more).
func ManifestRelPath(store string, snap name.Snapshot) string {
	req := lock.SnapshotRequest(store, snap, lock.Exclusive).Normalize()
	return filepath.Join(req.Store, strings.Join(req.NS.Components(), ":"), objectName(snap.RelPath()+"/"+ManifestLockName))
}

// ManifestBusyError is a manifest lock held by someone else past the wait.
type ManifestBusyError struct {
	Path   string
	Holder *lock.Holder
}

func (e *ManifestBusyError) Error() string {
	h := "another process (a PBS task?)"
	if e.Holder != nil {
		h = e.Holder.String()
	}
	return fmt.Sprintf("manifest lock %s held by %s past the wait: %s", e.Path, h, lock.ErrBusy)
}

// Unwrap makes errors.Is(err, lock.ErrBusy) hold.
func (e *ManifestBusyError) Unwrap() error { return lock.ErrBusy }

// LockManifest takes snap's manifest lock exclusively, waiting up to wait
// (PBS: ManifestLockWait) while it is busy. The returned release closes it;
// the file stays, as PBS keeps it until the snapshot goes.
func (b *Backend) LockManifest(ctx context.Context, store string, snap name.Snapshot, wait time.Duration) (release func(), err error) {
	if err := CheckOldLocking(b.dir); err != nil {
		return nil, err
	}
	rel := ManifestRelPath(store, snap)
	p := b.root.Join(rel)
	fd, err := b.retry(ctx, wait, func() (int, error) { return b.lockFile(rel, lock.Exclusive) })
	if err != nil {
		var wb errWouldBlock
		if errors.As(err, &wb) {
			return nil, &ManifestBusyError{Path: p, Holder: b.holderOf(p, wb.id, lock.Exclusive)}
		}
		return nil, fmt.Errorf("flock: manifest lock of %s: %w", snap, err)
	}
	return func() { unix.Close(fd) }, nil
}

// retry calls try until it succeeds, fails otherwise than errWouldBlock, or
// wait has passed (polling every 50 ms, as a blocking flock with a timeout
// would wait).
func (b *Backend) retry(ctx context.Context, wait time.Duration, try func() (int, error)) (int, error) {
	deadline := time.Now().Add(wait)
	for {
		fd, err := try()
		var wb errWouldBlock
		if err == nil || !errors.As(err, &wb) || !time.Now().Before(deadline) {
			return fd, err
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return -1, context.Cause(ctx)
		case <-t.C:
		}
	}
}

// MoveJournalPath is PBS's move journal of store.
func (b *Backend) MoveJournalPath(store string) string {
	return filepath.Join(b.dir, store, MoveJournalName)
}

// OpenMoveJournal opens store's move journal read-write in append mode
// under an exclusive flock, creating it 0660 as PBS does (given the locks
// dir's owner when running as root), waiting up to MoveJournalWait for a
// concurrent append or drain. Closing the file releases the lock.
func (b *Backend) OpenMoveJournal(ctx context.Context, store string) (*os.File, error) {
	if err := CheckOldLocking(b.dir); err != nil {
		return nil, err
	}
	if err := name.ValidateStore(store); err != nil {
		return nil, err
	}
	p := b.MoveJournalPath(store)
	fd, err := b.retry(ctx, MoveJournalWait, func() (int, error) { return b.lockJournal(store) })
	if err != nil {
		var wb errWouldBlock
		if errors.As(err, &wb) {
			h := b.holderOf(p, wb.id, lock.Exclusive)
			who := "another process"
			if h != nil {
				who = h.String()
			}
			return nil, fmt.Errorf("move journal %s held by %s for more than %s: %w", p, who, MoveJournalWait, lock.ErrBusy)
		}
		return nil, fmt.Errorf("move journal %s: %w", p, err)
	}
	return os.NewFile(uintptr(fd), p), nil
}

// lockJournal opens the journal like PBS's open_file_locked (O_RDWR |
// O_APPEND) beneath the locks dir (no link followed, see lockFile) and
// flocks it exclusively without blocking. Only a journal it creates is
// given the locks dir's owner.
func (b *Backend) lockJournal(store string) (int, error) {
	const flags = unix.O_RDWR | unix.O_APPEND | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NOCTTY | unix.O_NONBLOCK
	p := b.root.Join(filepath.Join(store, MoveJournalName))
	dfd, err := b.root.MkdirAll(store,
		func(string) uint32 { return 0o755 }, func(fd int, _ string) error { return b.giveAway(fd) })
	if err != nil {
		return -1, err
	}
	defer unix.Close(dfd)
	var fd int
	for {
		fd, err = unix.Openat(dfd, MoveJournalName, flags, 0)
		if err == unix.ENOENT {
			fd, err = unix.Openat(dfd, MoveJournalName, flags|unix.O_CREAT|unix.O_EXCL, 0o660)
			if err == nil {
				if err := b.giveAway(fd); err != nil {
					unix.Close(fd)
					return -1, &os.PathError{Op: "fchown", Path: p, Err: err}
				}
			}
		}
		if err == unix.EEXIST || err == unix.EINTR {
			continue
		}
		break
	}
	if err == unix.ELOOP {
		return -1, confine.Link(p)
	}
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: p, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		if err == nil {
			return -1, fmt.Errorf("%s: %s: %w", p, confine.FileType(&st), confine.ErrNotRegular)
		}
		return -1, &os.PathError{Op: "fstat", Path: p, Err: err}
	}
	if err := flockNB(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		if err == unix.EWOULDBLOCK {
			return -1, errWouldBlock{statID(&st)}
		}
		return -1, &os.PathError{Op: "flock", Path: p, Err: err}
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return -1, &os.PathError{Op: "fcntl", Path: p, Err: err}
	}
	return fd, nil
}
