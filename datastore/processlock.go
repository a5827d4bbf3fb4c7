package datastore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore/lock"
)

// The chunk-store process lock is PBS's <store>/.lock (proxmox-sys
// ProcessLocker): every PBS backup writer holds a POSIX record read lock on
// the whole file, PBS's GC the write lock for its whole run, taken with a
// non-blocking F_SETLK. pbsq takes open-file-description locks
// (F_OFD_SETLK), which conflict with PBS's classic record locks but belong
// to one open of the file, so several tasks in one worker hold and release
// theirs independently (a classic lock is dropped when the process closes
// any descriptor of the file).
//
// pbsq's own writers and GC do not need this lock against each other: the
// writer registry (writers.go) lowers GC's cutoff for them, on every
// backend and across hosts. So pbsq locks two disjoint bytes rather than
// the whole file: writers read-lock byte 0, GC write-locks byte 1. Both
// overlap PBS's whole-file locks, so
//
//	PBS GC (write, whole file)   excludes pbsq writers (read, byte 0)
//	                             and pbsq GC (write, byte 1)
//	PBS writer (read, whole)     excludes pbsq GC (write, byte 1)
//	pbsq GC (write, byte 1)      excludes another pbsq GC
//	pbsq writer, pbsq GC         coexist, as they do on object storage
//
// and each side's GC cutoff sees every writer it could miss.
//
// Object storage has no such lock (PBS's S3 stores keep it in their local
// cache); there the .in-use marker keeps pbsq away from PBS (pbsinuse.go).
const (
	processLockName = ".lock"
	// Byte ranges (start, length 1) of the two pbsq lock kinds.
	processLockWriterByte = 0
	processLockGCByte     = 1
)

// processLockKind is what a process lock is taken for.
type processLockKind int

const (
	processLockWriter processLockKind = iota // shared: backup, sync, move
	processLockGC                            // exclusive: garbage collection
)

// baser is a backend that is a local directory (the filesystem backend).
type baser interface{ Base() string }

// ProcessLockBusyError is the chunk-store lock held by someone else past
// the retry window.
type ProcessLockBusyError struct {
	Path string
	GC   bool // we wanted it for GC
	// PID of a classic record lock's holder (a PBS process); 0 when the
	// conflicting lock is an open-file-description lock (another pbsq).
	PID int
	// Exclusive: the conflicting lock is a write lock (a GC).
	Exclusive bool
}

func (e *ProcessLockBusyError) Error() string {
	who := "another pbsq task (its garbage collection)"
	switch {
	case e.PID > 0 && e.Exclusive:
		who = fmt.Sprintf("pid %d, exclusively (a PBS garbage collection?)", e.PID)
	case e.PID > 0:
		who = fmt.Sprintf("pid %d, shared (a PBS backup, sync or other writer?)", e.PID)
	case !e.Exclusive:
		who = "another pbsq writer"
	}
	want := "writing into the chunk store"
	if e.GC {
		want = "garbage collection"
	}
	return fmt.Sprintf("chunk store lock %s is held by %s; nothing done (%s needs it): %s", e.Path, who, want, lock.ErrBusy)
}

// Unwrap makes errors.Is(err, lock.ErrBusy) hold.
func (e *ProcessLockBusyError) Unwrap() error { return lock.ErrBusy }

// processLock takes the chunk-store lock of a filesystem store for kind,
// retrying within the Locker's window (a single try without a Locker). On
// other backends it does nothing. release drops the lock.
func (s *Store) processLock(ctx context.Context, kind processLockKind) (release func(), err error) {
	bs, ok := s.b.(baser)
	if !ok || s.b.Features().ImplicitDirs {
		return func() {}, nil
	}
	p := filepath.Join(bs.Base(), processLockName)
	fd, err := s.openProcessLock(ctx, p)
	if err != nil {
		return nil, err
	}
	fl := unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: processLockWriterByte, Len: 1}
	if kind == processLockGC {
		fl = unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: processLockGCByte, Len: 1}
	}
	var wait time.Duration
	if s.locks != nil {
		wait = s.locks.Wait()
	}
	deadline := time.Now().Add(wait)
	backoff := 50 * time.Millisecond
	for {
		try := fl
		err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &try)
		if err == nil {
			return func() { unix.Close(fd) }, nil
		}
		if err == unix.EINTR {
			continue
		}
		if err != unix.EAGAIN && err != unix.EACCES {
			unix.Close(fd)
			return nil, fmt.Errorf("chunk store lock %s: %w", p, err)
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			busy := &ProcessLockBusyError{Path: p, GC: kind == processLockGC}
			probe := fl
			if unix.FcntlFlock(uintptr(fd), unix.F_OFD_GETLK, &probe) == nil && probe.Type != unix.F_UNLCK {
				busy.Exclusive = probe.Type == unix.F_WRLCK
				if probe.Pid > 0 {
					busy.PID = int(probe.Pid)
				}
			}
			unix.Close(fd)
			s.log.Warn("chunk store lock busy", "lock", p, "err", busy)
			return nil, busy
		}
		sleep := min(backoff/2+rand.N(backoff/2+1), remaining)
		backoff = min(2*backoff, time.Second)
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
			unix.Close(fd)
			return nil, fmt.Errorf("chunk store lock %s: %w", p, context.Cause(ctx))
		case <-t.C:
		}
	}
}

// openProcessLock opens <store>/.lock read-write (a write lock needs it),
// never following a symlink nor blocking on a FIFO, and refuses anything
// but a regular file. A store made before pbsq wrote .lock gets one.
func (s *Store) openProcessLock(ctx context.Context, p string) (int, error) {
	const flags = unix.O_RDWR | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOCTTY
	fd, err := unix.Open(p, flags, 0)
	if err == unix.ENOENT {
		// Created through the backend so that it gets the store's owner.
		if _, cerr := s.b.CreateFile(ctx, processLockName, nil); cerr != nil {
			return -1, fmt.Errorf("chunk store lock %s: %w", p, cerr)
		}
		fd, err = unix.Open(p, flags, 0)
	}
	if err != nil {
		if err == unix.ELOOP {
			return -1, fmt.Errorf("chunk store lock %s is a symlink; refusing it: %w", p, err)
		}
		return -1, &os.PathError{Op: "open chunk store lock", Path: p, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, &os.PathError{Op: "fstat chunk store lock", Path: p, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return -1, fmt.Errorf("chunk store lock %s is not a regular file (mode %o); refusing it", p, st.Mode)
	}
	return fd, nil
}
