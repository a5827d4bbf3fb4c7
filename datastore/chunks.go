package datastore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"

	"github.com/pbsq/pbsq/datastore/backend"
)

// Digest is the SHA-256 of a chunk's plain data, and the chunk's name.
type Digest [32]byte

// String is the lower-case hex form used in file names.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// ParseDigest parses 64 hex digits.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	if len(s) != 64 {
		return d, invalidf("chunk digest %q: must be 64 hex digits", s)
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil || strings.ToLower(s) != s {
		return d, invalidf("chunk digest %q: must be 64 lower-case hex digits", s)
	}
	return d, nil
}

// ChunkPath is the chunk's path: .chunks/<first 4 hex>/<64 hex>.
func ChunkPath(d Digest) string {
	h := d.String()
	return ".chunks/" + h[:4] + "/" + h
}

// InsertChunk stores an encoded chunk blob unless the chunk exists. An
// existing chunk is touched instead, as PBS does, so that a garbage
// collection running now does not sweep a chunk a new index is about to use.
func (s *Store) InsertChunk(ctx context.Context, d Digest, blob []byte) (inserted bool, err error) {
	p := ChunkPath(d)
	// A sweep may remove the chunk between our existence check and the
	// touch; then the touch finds nothing and we create it after all.
	for attempt := 0; ; attempt++ {
		created, err := s.b.CreateFile(ctx, p, blob)
		if err != nil {
			return false, fmt.Errorf("insert chunk %s: %w", d, err)
		}
		if created {
			return true, nil
		}
		err = s.b.Touch(ctx, p)
		if err == nil {
			return false, nil
		}
		if !errors.Is(err, fs.ErrNotExist) || attempt >= 3 {
			return false, fmt.Errorf("touch chunk %s: %w", d, err)
		}
	}
}

// ReadChunk returns the encoded blob of a chunk.
func (s *Store) ReadChunk(ctx context.Context, d Digest) ([]byte, error) {
	data, err := s.b.ReadFile(ctx, ChunkPath(d))
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", d, err)
	}
	return data, nil
}

// ChunkExists reports whether the chunk is present.
func (s *Store) ChunkExists(ctx context.Context, d Digest) (bool, error) {
	_, err := backend.StatFile(ctx, s.b, ChunkPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("chunk %s: %w", d, err)
	}
	return true, nil
}

// maxBadCopies is how many .bad copies of one chunk are kept, as PBS does.
const maxBadCopies = 10

// RenameCorruptChunk moves a corrupt chunk aside to <digest>.<n>.bad with the
// first free n in 0..9 (9 is reused), so that a later backup can upload a
// good copy under the chunk's name. It returns the new path.
func (s *Store) RenameCorruptChunk(ctx context.Context, d Digest) (string, error) {
	p := ChunkPath(d)
	target := ""
	for n := 0; n < maxBadCopies; n++ {
		cand := p + "." + strconv.Itoa(n) + ".bad"
		if _, err := backend.StatFile(ctx, s.b, cand); errors.Is(err, fs.ErrNotExist) {
			target = cand
			break
		} else if err != nil {
			return "", fmt.Errorf("rename corrupt chunk %s: %w", d, err)
		}
	}
	if target == "" {
		target = p + "." + strconv.Itoa(maxBadCopies-1) + ".bad"
		if err := s.b.Remove(ctx, target); err != nil {
			return "", fmt.Errorf("rename corrupt chunk %s: %w", d, err)
		}
	}
	if err := s.b.Rename(ctx, p, target); err != nil {
		return "", fmt.Errorf("rename corrupt chunk %s to %s: %w", d, target, err)
	}
	return target, nil
}

// ChunkFile is one entry of the chunk store as GC sees it.
type ChunkFile struct {
	backend.FileInfo
	Digest Digest
	// Bad is set for a renamed corrupt copy (<digest>.<n>.bad).
	Bad bool
}

// WalkChunks calls fn for every chunk file, including .bad copies; temp
// files and anything else are ignored.
func (s *Store) WalkChunks(ctx context.Context, fn func(ChunkFile) error) error {
	return s.b.Walk(ctx, ".chunks", func(fi backend.FileInfo) error {
		base := fi.Name[strings.LastIndexByte(fi.Name, '/')+1:]
		hexPart, rest, _ := strings.Cut(base, ".")
		d, err := ParseDigest(hexPart)
		if err != nil {
			return nil
		}
		cf := ChunkFile{FileInfo: fi, Digest: d}
		if rest != "" {
			n, ok := strings.CutSuffix(rest, ".bad")
			if !ok || len(n) != 1 || n[0] < '0' || n[0] > '9' {
				return nil
			}
			cf.Bad = true
		}
		return fn(cf)
	})
}
