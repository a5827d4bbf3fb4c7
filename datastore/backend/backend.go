// Package backend defines the storage a datastore lives on: a tree of files
// addressed by slash-separated paths relative to the datastore base, with the
// few atomic primitives the datastore needs. The fs and s3 sub-packages
// implement it; backendtest is the conformance suite both pass.
//
// Paths are always relative ("ns/a/vm/100/owner", ".chunks/abcd/abcd…"),
// never start or end with '/', and contain no "." or ".." components; callers
// validate names before they build paths (see datastore/name).
package backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"

	"github.com/pbsq/pbsq/internal/confine"
)

// Sentinels. Missing files are reported with fs.ErrNotExist so callers can use
// errors.Is(err, fs.ErrNotExist) whatever the backend.
var (
	ErrNotEmpty     = errors.New("directory not empty")
	ErrNotSupported = errors.New("not supported by this backend")
	ErrInvalidPath  = errors.New("invalid path")
	// ErrTooLarge: a file is larger than its reader allows (ReadFileMax).
	ErrTooLarge = errors.New("file too large")
	// ErrSymlink: a symbolic link inside a filesystem store; it is never
	// followed, removed through or chowned through.
	ErrSymlink = confine.ErrSymlink
	// ErrNotRegular: a FIFO, socket, device or directory where a file is
	// expected; it is refused before it is read, so it cannot block.
	ErrNotRegular = confine.ErrNotRegular
)

// FileInfo describes one entry of a listing.
type FileInfo struct {
	// Name is the entry's path relative to the backend root for Walk, and
	// the base name for List and Stat.
	Name    string
	Dir     bool
	Size    int64
	ModTime time.Time
	// AccessTime is what garbage collection compares against its cutoff:
	// the atime on a filesystem, the last-modified time on S3.
	AccessTime time.Time
}

// Features tells the datastore how to use a backend: operations take
// their tuning from here rather than from the backend's type.
type Features struct {
	// Kind names the backend in metrics and results: "fs" or "s3".
	Kind string
	// InFlight is how many requests keep the backend busy. A filesystem
	// is CPU- and disk-bound soon; object storage answers each request
	// after a round trip, so it needs many in flight to fill the link.
	InFlight int
	// AtomicRename: Rename moves a whole directory atomically (rename(2)).
	AtomicRename bool
	// ImplicitDirs: directories exist only while something is inside, so an
	// empty namespace needs a marker object.
	ImplicitDirs bool
	// RoundTrips: every request pays a network round trip, so operations
	// overlap many (more groups at once, batched deletes, waves) and save
	// requests where they can (listings over per-file checks). A local
	// filesystem answers from the page cache: none of that pays there.
	RoundTrips bool
}

// Backend is the storage of one datastore.
type Backend interface {
	// String names the location for messages; never contains secrets.
	String() string
	Features() Features

	// ReadFile returns the whole file; fs.ErrNotExist when missing.
	ReadFile(ctx context.Context, name string) ([]byte, error)
	// WriteFile atomically creates or replaces name: readers see the old or
	// the new content, never a part. Parent directories are created.
	WriteFile(ctx context.Context, name string, data []byte) error
	// CreateFile writes name only if it does not exist yet (atomically, as
	// WriteFile) and reports whether it wrote it.
	CreateFile(ctx context.Context, name string, data []byte) (created bool, err error)
	// Stat describes name (a file or directory); fs.ErrNotExist when missing.
	Stat(ctx context.Context, name string) (FileInfo, error)
	// List returns the direct children of dir, sorted by name;
	// fs.ErrNotExist when dir does not exist. "" is the root.
	List(ctx context.Context, dir string) ([]FileInfo, error)
	// Walk calls fn for every file (not directory) below dir, with Name
	// relative to the backend root. The order is unspecified.
	Walk(ctx context.Context, dir string, fn func(FileInfo) error) error
	// Remove deletes a file; a missing file is not an error.
	Remove(ctx context.Context, name string) error
	// RemoveAll deletes dir and everything below it; missing is no error.
	RemoveAll(ctx context.Context, dir string) error
	// Mkdir creates dir and missing parents (a no-op with ImplicitDirs).
	Mkdir(ctx context.Context, dir string) error
	// RemoveDir removes an empty directory; ErrNotEmpty otherwise.
	RemoveDir(ctx context.Context, dir string) error
	// Rename moves a file or directory; the target must not exist (for a
	// directory) — ErrNotSupported for directories without AtomicRename.
	Rename(ctx context.Context, from, to string) error
	// Copy copies one file (server-side where the backend can).
	Copy(ctx context.Context, from, to string) error
	// Touch updates name's AccessTime to now, so GC sees it as in use.
	Touch(ctx context.Context, name string) error
	// Close releases resources.
	Close() error
}

// ValidPath reports an error when p is not a clean relative path.
func ValidPath(p string) error {
	if p == "" {
		return nil
	}
	if strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/") || path.Clean(p) != p ||
		strings.Contains(p, "\x00") || p == "." || p == ".." || strings.HasPrefix(p, "../") {
		return fmt.Errorf("%w %q", ErrInvalidPath, p)
	}
	return nil
}

// Join joins path elements with '/', skipping empty ones.
func Join(elem ...string) string {
	var b strings.Builder
	for _, e := range elem {
		if e == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('/')
		}
		b.WriteString(e)
	}
	return b.String()
}

// NotExist wraps fs.ErrNotExist with the path, for backends to return.
func NotExist(name string) error {
	return &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

// BufferedReader is implemented by backends that can read a file into the
// caller's buffer, sparing an allocation per chunk on hot paths (verify).
type BufferedReader interface {
	ReadFileInto(ctx context.Context, name string, buf []byte) ([]byte, error)
}

// ReadFileInto reads name into buf (grown as needed) when b supports it,
// and falls back to ReadFile otherwise.
func ReadFileInto(ctx context.Context, b Backend, name string, buf []byte) ([]byte, error) {
	if br, ok := b.(BufferedReader); ok {
		return br.ReadFileInto(ctx, name, buf)
	}
	return b.ReadFile(ctx, name)
}

// Opener is implemented by backends that can stream a file, so that hot
// paths over large files (verify) hold a read buffer, not the whole file.
type Opener interface {
	// Open returns a reader of name; fs.ErrNotExist when missing. The
	// caller closes it.
	Open(ctx context.Context, name string) (io.ReadCloser, error)
}

// Open streams name when b supports it, and reads it whole otherwise.
func Open(ctx context.Context, b Backend, name string) (io.ReadCloser, error) {
	if o, ok := b.(Opener); ok {
		return o.Open(ctx, name)
	}
	data, err := b.ReadFile(ctx, name)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// StreamWriter is implemented by backends that can write a file from a
// reader without holding it whole, so that copying a large file (sync's
// indexes) costs a buffer, not the file.
type StreamWriter interface {
	// WriteFrom is WriteFile with the content read from r up to EOF. An
	// error from r aborts the write: name keeps its old content (or stays
	// missing) and nothing partial is left.
	WriteFrom(ctx context.Context, name string, r io.Reader) error
}

// WriteFrom streams r into name when b supports it, and reads r whole then
// calls WriteFile otherwise.
func WriteFrom(ctx context.Context, b Backend, name string, r io.Reader) error {
	if sw, ok := b.(StreamWriter); ok {
		return sw.WriteFrom(ctx, name, r)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	return b.WriteFile(ctx, name, data)
}

// Syncer is implemented by backends whose CreateFile does not make data
// durable by itself (filesystem chunks, as PBS's default sync level):
// Sync flushes everything written so far.
type Syncer interface {
	Sync(ctx context.Context) error
}

// Sync flushes b when it needs it; object stores are durable per request.
func Sync(ctx context.Context, b Backend) error {
	if s, ok := b.(Syncer); ok {
		return s.Sync(ctx)
	}
	return nil
}

// FileStater is implemented by backends where a stat that need not
// recognise directories is cheaper (S3: one HEAD instead of HEAD + LIST).
type FileStater interface {
	StatFile(ctx context.Context, name string) (FileInfo, error)
}

// StatFile describes the file name (never a directory) as cheaply as b can;
// fs.ErrNotExist when there is no such file.
func StatFile(ctx context.Context, b Backend, name string) (FileInfo, error) {
	if fst, ok := b.(FileStater); ok {
		return fst.StatFile(ctx, name)
	}
	fi, err := b.Stat(ctx, name)
	if err == nil && fi.Dir {
		return FileInfo{}, NotExist(name)
	}
	return fi, err
}

// MaxReader is implemented by backends that can refuse a file larger than
// a limit before reading it whole, so that a hostile small file (owner,
// notes, manifest, registry entries) cannot cost unbounded memory.
type MaxReader interface {
	// ReadFileMax is ReadFile, failing with ErrTooLarge when name holds
	// more than max bytes (max > 0).
	ReadFileMax(ctx context.Context, name string, max int64) ([]byte, error)
}

// ReadFileMax reads name, refusing more than max bytes (ErrTooLarge): with
// the backend's own bounded read where it has one, otherwise after the
// fact.
func ReadFileMax(ctx context.Context, b Backend, name string, max int64) ([]byte, error) {
	if mr, ok := b.(MaxReader); ok {
		return mr.ReadFileMax(ctx, name, max)
	}
	data, err := b.ReadFile(ctx, name)
	if err == nil && int64(len(data)) > max {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d allowed: %w", name, len(data), max, ErrTooLarge)
	}
	return data, err
}
