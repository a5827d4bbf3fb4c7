// Package fs is the filesystem backend: a PBS datastore directory.
package fs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pbsq/pbsq/datastore/backend"
)

// FS stores files below a base directory.
type FS struct {
	base string
}

// New returns a backend rooted at base, which must exist.
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
	return &FS{base: abs}, nil
}

// Base is the absolute base directory.
func (f *FS) Base() string { return f.base }

func (f *FS) String() string { return f.base }

// Features: rename(2) is atomic and directories exist on their own.
func (f *FS) Features() backend.Features {
	return backend.Features{AtomicRename: true}
}

func (f *FS) path(name string) (string, error) {
	if err := backend.ValidPath(name); err != nil {
		return "", err
	}
	// "." passes ValidPath but would mean the base itself, which e.g.
	// RemoveAll would delete.
	if name == "." {
		return "", fmt.Errorf("%w %q", backend.ErrInvalidPath, name)
	}
	return filepath.Join(f.base, filepath.FromSlash(name)), nil
}

// filePath is path for names that must be files: "" is the base directory,
// which file operations must never write, rename or remove.
func (f *FS) filePath(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%w %q: not a file name", backend.ErrInvalidPath, name)
	}
	return f.path(name)
}

// notExist reports a path through a regular file ("file/x", ENOTDIR) as
// fs.ErrNotExist, as it is on S3: such a path simply does not exist.
func notExist(err error) error {
	if errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%w: %w", iofs.ErrNotExist, err)
	}
	return err
}

// ReadFile implements backend.Backend.
func (f *FS) ReadFile(ctx context.Context, name string) ([]byte, error) {
	p, err := f.filePath(name)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(p)
	return data, notExist(err)
}

// Open implements backend.Opener.
func (f *FS) Open(ctx context.Context, name string) (io.ReadCloser, error) {
	p, err := f.filePath(name)
	if err != nil {
		return nil, err
	}
	fh, err := os.Open(p)
	if err != nil {
		return nil, notExist(err)
	}
	return fh, nil
}

// ReadFileInto implements backend.BufferedReader.
func (f *FS) ReadFileInto(ctx context.Context, name string, buf []byte) ([]byte, error) {
	p, err := f.path(name)
	if err != nil {
		return nil, err
	}
	fh, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return nil, err
	}
	n := int(st.Size())
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(fh, buf); err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return buf, nil
}

// tempName is hidden and unique so that a crash leaves only a dot-file that no
// listing of snapshots or chunks mistakes for data.
func tempName(p string) string {
	var r [6]byte
	_, _ = rand.Read(r[:])
	return filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".tmp-"+hex.EncodeToString(r[:]))
}

// writeTemp writes data to a fresh temp file next to p, fsyncing it when
// sync is set.
func writeTemp(p string, data []byte, sync bool) (string, error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", err
	}
	tmp := tempName(p)
	fh, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	_, err = fh.Write(data)
	if err == nil && sync {
		err = fh.Sync()
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// WriteFile is temp file + fsync + rename: never a partial file under name.
func (f *FS) WriteFile(ctx context.Context, name string, data []byte) error {
	p, err := f.filePath(name)
	if err != nil {
		return err
	}
	tmp, err := writeTemp(p, data, true)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

// CreateFile links the temp file into place, which fails if name exists.
// It does not fsync: chunk inserts would be bound by it. Callers that need
// durability (backup before its manifest) call Sync once, as PBS does with
// syncfs at its default sync level.
func (f *FS) CreateFile(ctx context.Context, name string, data []byte) (bool, error) {
	p, err := f.filePath(name)
	if err != nil {
		return false, err
	}
	if _, err := os.Lstat(p); err == nil {
		return false, nil
	}
	tmp, err := writeTemp(p, data, false)
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, p); err != nil {
		if errors.Is(err, iofs.ErrExist) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

func info(name string, st iofs.FileInfo) backend.FileInfo {
	fi := backend.FileInfo{Name: name, Dir: st.IsDir(), Size: st.Size(), ModTime: st.ModTime()}
	fi.AccessTime = fi.ModTime
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		fi.AccessTime = time.Unix(sys.Atim.Unix())
	}
	if fi.Dir {
		fi.Size = 0
	}
	return fi
}

// Stat implements backend.Backend.
func (f *FS) Stat(ctx context.Context, name string) (backend.FileInfo, error) {
	p, err := f.path(name)
	if err != nil {
		return backend.FileInfo{}, err
	}
	st, err := os.Stat(p)
	if err != nil {
		return backend.FileInfo{}, notExist(err)
	}
	return info(filepath.Base(p), st), nil
}

// List implements backend.Backend.
func (f *FS) List(ctx context.Context, dir string) ([]backend.FileInfo, error) {
	p, err := f.path(dir)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(p)
	if err != nil {
		return nil, notExist(err)
	}
	out := make([]backend.FileInfo, 0, len(ents))
	for _, e := range ents {
		st, err := e.Info()
		if errors.Is(err, iofs.ErrNotExist) {
			continue // removed while listing
		} else if err != nil {
			return nil, err
		}
		out = append(out, info(e.Name(), st))
	}
	return out, nil
}

// Walk implements backend.Backend.
func (f *FS) Walk(ctx context.Context, dir string, fn func(backend.FileInfo) error) error {
	p, err := f.path(dir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(p); errors.Is(notExist(err), iofs.ErrNotExist) {
		return nil
	}
	return filepath.WalkDir(p, func(fp string, d iofs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, iofs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return ctx.Err()
		}
		st, err := d.Info()
		if errors.Is(err, iofs.ErrNotExist) {
			return nil
		} else if err != nil {
			return err
		}
		rel, err := filepath.Rel(f.base, fp)
		if err != nil {
			return err
		}
		return fn(info(filepath.ToSlash(rel), st))
	})
}

// Remove implements backend.Backend.
func (f *FS) Remove(ctx context.Context, name string) error {
	p, err := f.filePath(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(notExist(err), iofs.ErrNotExist) {
		return err
	}
	return nil
}

// RemoveAll implements backend.Backend.
func (f *FS) RemoveAll(ctx context.Context, dir string) error {
	if dir == "" {
		return fmt.Errorf("%w: refusing to remove the datastore base", backend.ErrInvalidPath)
	}
	p, err := f.path(dir)
	if err != nil {
		return err
	}
	return os.RemoveAll(p)
}

// Mkdir implements backend.Backend.
func (f *FS) Mkdir(ctx context.Context, dir string) error {
	p, err := f.path(dir)
	if err != nil {
		return err
	}
	return os.MkdirAll(p, 0o755)
}

// RemoveDir implements backend.Backend.
func (f *FS) RemoveDir(ctx context.Context, dir string) error {
	if dir == "" {
		return fmt.Errorf("%w: refusing to remove the datastore base", backend.ErrInvalidPath)
	}
	p, err := f.path(dir)
	if err != nil {
		return err
	}
	err = os.Remove(p)
	if errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("%s: %w", dir, backend.ErrNotEmpty)
	}
	if errors.Is(notExist(err), iofs.ErrNotExist) {
		return nil
	}
	return err
}

// Rename uses renameat2(RENAME_NOREPLACE) so an existing target is never
// silently replaced; the target's parent is created first.
func (f *FS) Rename(ctx context.Context, from, to string) error {
	pf, err := f.filePath(from)
	if err != nil {
		return err
	}
	pt, err := f.filePath(to)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(pt), 0o755); err != nil {
		return err
	}
	err = unix.Renameat2(unix.AT_FDCWD, pf, unix.AT_FDCWD, pt, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// Filesystem without RENAME_NOREPLACE: check, then rename.
		if _, serr := os.Lstat(pt); serr == nil {
			return &os.LinkError{Op: "rename", Old: pf, New: pt, Err: iofs.ErrExist}
		}
		return os.Rename(pf, pt)
	}
	if err != nil {
		return notExist(&os.LinkError{Op: "rename", Old: pf, New: pt, Err: err})
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

// Touch sets the atime only, as PBS does, so mtimes stay meaningful.
func (f *FS) Touch(ctx context.Context, name string) error {
	p, err := f.filePath(name)
	if err != nil {
		return err
	}
	ts := []unix.Timespec{{Nsec: unix.UTIME_NOW}, {Nsec: unix.UTIME_OMIT}}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, 0); err != nil {
		// A bare errno would neither name the file nor match fs.ErrNotExist
		// via a PathError; keep both.
		return notExist(&iofs.PathError{Op: "touch", Path: p, Err: err})
	}
	return nil
}

// Sync flushes the whole filesystem of the datastore (syncfs(2)).
func (f *FS) Sync(ctx context.Context) error {
	fh, err := os.Open(f.base)
	if err != nil {
		return err
	}
	defer fh.Close()
	if err := unix.Syncfs(int(fh.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", f.base, err)
	}
	return nil
}

// Close implements backend.Backend.
func (f *FS) Close() error { return nil }

// IsTemp reports whether a base name is one of this backend's temp files.
func IsTemp(base string) bool {
	return strings.HasPrefix(base, ".") && strings.Contains(base, ".tmp-")
}

var _ backend.Backend = (*FS)(nil)
