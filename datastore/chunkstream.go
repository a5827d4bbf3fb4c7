package datastore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/name"
)

// Chunk checks shared by verify and sync. A chunk streams through the CRC,
// the zstd decoder and SHA-256 in pieces, decoding no more than the index
// says the chunk holds (plus one byte, to tell a size mismatch), so a
// small zstd bomb costs neither memory nor much time. Only a CRC, decode
// or digest failure condemns the chunk: when its data is good but its
// length differs from what an index says, the index is what is wrong.

// chunkRef is a chunk as an index lists it: its digest and the length
// the index says it decodes to.
type chunkRef struct {
	digest Digest
	size   uint64
}

// maxChunkBlob is the largest file a chunk can be: the largest chunk
// (16 MiB, zstd then needs no larger window either), stored uncompressed
// behind the largest (encrypted) header, with some slack. Sync refuses
// larger chunk files before reading them whole.
const maxChunkBlob = dynMaxChunk + 64

// errChunkTooLarge: a chunk file larger than any chunk can be.
var errChunkTooLarge = errors.New("larger than any chunk")

// knownSize returns how long a file being read is, when the reader knows
// without reading it (an S3 object's Content-Length, a file's stat).
func knownSize(rc io.Reader) (int64, bool) {
	switch r := rc.(type) {
	case interface{ Size() int64 }:
		return r.Size(), r.Size() >= 0
	case interface{ Stat() (fs.FileInfo, error) }:
		if fi, err := r.Stat(); err == nil && fi.Mode().IsRegular() {
			return fi.Size(), true
		}
	}
	return 0, false
}

// readChunkFile reads a chunk file into buf (reused when large enough),
// refusing files larger than maxChunkBlob: by their announced size before
// reading anything, and by reading at most one byte more than that.
func readChunkFile(ctx context.Context, b backend.Backend, p string, buf []byte) ([]byte, error) {
	rc, err := backend.Open(ctx, b, p)
	if err != nil {
		return buf, err
	}
	defer rc.Close()
	if n, ok := knownSize(rc); ok {
		if n > maxChunkBlob {
			return buf, fmt.Errorf("chunk file %s of %d bytes: %w (%d)", p, n, errChunkTooLarge, maxChunkBlob)
		}
		if int64(cap(buf)) < n+1 {
			buf = make([]byte, 0, n+1)
		}
	}
	buf = buf[:0]
	lr := io.LimitReader(rc, maxChunkBlob+1)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := lr.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return buf, err
		}
	}
	if len(buf) > maxChunkBlob {
		return buf, fmt.Errorf("chunk file %s: over %d bytes: %w", p, maxChunkBlob, errChunkTooLarge)
	}
	return buf, nil
}

// streamChunk streams one chunk blob from rd, decoding at most limit
// bytes, and returns its kind and decoded length; the digest is then in
// c. Encrypted chunks only have their CRC checked. Errors are corruption
// unless they wrap errChunkRead.
func streamChunk(ctx context.Context, decoders *decoderPool, c *chunkChecker, rd io.Reader, limit int64, minWindow uint64) (format.BlobKind, int64, error) {
	readErr := func(err error) error {
		if rerr := c.blob.ReadError(); rerr != nil {
			return fmt.Errorf("%w: %w", errChunkRead, rerr)
		}
		return err
	}
	kind, err := c.blob.Open(rd)
	if err != nil {
		return 0, 0, readErr(err)
	}
	c.hash.Reset()
	var n int64
	switch {
	case kind.IsEncrypted():
		// No keys: the CRC is all that can be checked.
		if _, err := c.blob.Copy(io.Discard, format.MaxBlobSize); err != nil {
			return kind, 0, readErr(err)
		}
		return kind, 0, nil
	case kind.IsCompressed():
		window, err := c.blob.FrameWindow()
		if err != nil {
			return kind, 0, readErr(err)
		}
		if window > maxChunkWindow {
			return kind, 0, readErr(fmt.Errorf("zstd frame declares a %d-byte window, more than any chunk needs", window))
		}
		dec, err := decoders.get(ctx, max(window, minWindow))
		if err != nil {
			return kind, 0, fmt.Errorf("%w: %w", errChunkRead, err)
		}
		n, err = c.blob.Decode(dec, c.hash, limit)
		decoders.put(dec)
		if err != nil {
			return kind, n, readErr(err)
		}
	default:
		if n, err = c.blob.Copy(c.hash, limit); err != nil {
			return kind, n, readErr(err)
		}
	}
	return kind, n, nil
}

// checkChunkStream checks chunk r as opened by open: chunkOK with its
// decoded length when its data hashes to its name (whatever length the
// index says: the caller compares), chunkEncrypted, chunkMissing, or an
// error (corruption, or wrapping errChunkRead).
func checkChunkStream(ctx context.Context, decoders *decoderPool, c *chunkChecker, open func() (io.ReadCloser, error), r chunkRef) (chunkState, int64, error) {
	window := uint64(0)
	// One byte more than the index promises tells a size mismatch without
	// decoding whatever a bomb expands to.
	limit := int64(min(r.size, format.MaxBlobSize)) + 1
	for {
		st, n, err := checkChunkOnce(ctx, decoders, c, open, r.digest, limit, window)
		switch {
		case errors.Is(err, format.ErrWindowTooLarge) && window < maxChunkWindow:
			// A later zstd frame wants more history than the first one:
			// once more with a decoder for the largest chunk window.
			window = maxChunkWindow
		case errors.Is(err, format.ErrTooLarge) && !errors.Is(err, errChunkRead) && limit <= maxChunkWindow:
			// More data than the index says: whether the chunk is good on
			// its own decides whether it or the index is to blame. Still
			// bounded by the largest chunk.
			limit = maxChunkWindow + 1
		default:
			return st, n, err
		}
	}
}

// checkChunkOnce streams the chunk once; minWindow forces a decoder at
// least that large.
func checkChunkOnce(ctx context.Context, decoders *decoderPool, c *chunkChecker, open func() (io.ReadCloser, error), d Digest, limit int64, minWindow uint64) (chunkState, int64, error) {
	rc, err := open()
	if errors.Is(err, fs.ErrNotExist) {
		return chunkMissing, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %w", errChunkRead, err)
	}
	defer rc.Close()
	kind, n, err := streamChunk(ctx, decoders, c, rc, limit, minWindow)
	if err != nil {
		return 0, n, err
	}
	if kind.IsEncrypted() {
		return chunkEncrypted, 0, nil
	}
	if c.digest() != d {
		return 0, n, errors.New("SHA-256 differs from the chunk's name")
	}
	return chunkOK, n, nil
}

// digest is the SHA-256 of the data streamChunk decoded last.
func (c *chunkChecker) digest() Digest { return Digest(c.hash.Sum(c.sum[:0])) }

// sizeMismatch is the reason an index that lists a good chunk with
// another length fails: the index is wrong, not the chunk.
func sizeMismatch(r chunkRef, actual int64) string {
	return fmt.Sprintf("the index says chunk %s holds %d bytes, but the chunk (good) holds %d: the index is wrong", r.digest, r.size, actual)
}

// memChunk opens raw as a chunk file.
func memChunk(raw []byte) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil }
}

// scanIndexFile streams index file p through format.ScanIndex: memory
// stays one piece however large the index is. fn sees entries before the
// checksum is checked; on error they are not to be trusted.
func scanIndexFile(ctx context.Context, b backend.Backend, p string, fn func(i int, d [32]byte, start, end uint64) error) (format.IndexInfo, error) {
	rc, err := backend.Open(ctx, b, p)
	if err != nil {
		return format.IndexInfo{}, err
	}
	defer rc.Close()
	size, ok := knownSize(rc)
	if !ok {
		size = -1
	}
	return format.ScanIndex(p, rc, size, fn)
}

// isFormatError reports whether err is a format's verdict on the data
// rather than a failed read.
func isFormatError(err error) bool {
	for _, e := range []error{format.ErrTruncated, format.ErrBadMagic, format.ErrCorrupt, format.ErrBadChecksum, format.ErrTooLarge} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// indexRefs streams index file f of snapshot sn (memory: one piece plus
// its distinct new chunks) and returns its chunks not yet in seen, adding
// them; or why the index fails: unreadable, or its checksum or size
// differs from the manifest's. Errors are only the context's.
func (v *verifier) indexRefs(ctx context.Context, sn name.Snapshot, f format.FileInfo, seen map[Digest]bool) ([]chunkRef, string, error) {
	var refs []chunkRef
	local := map[Digest]bool{}
	info, err := scanIndexFile(ctx, v.s.b, sn.File(f.Filename), func(_ int, d [32]byte, start, end uint64) error {
		if !seen[d] && !local[d] {
			local[d] = true
			refs = append(refs, chunkRef{digest: d, size: end - start})
		}
		return nil
	})
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, "", ctx.Err()
	case err != nil:
		return nil, fmt.Sprintf("%s: %v", f.Filename, err), nil
	case info.Checksum != f.Csum:
		return nil, fmt.Sprintf("%s: index checksum differs from the manifest", f.Filename), nil
	case info.DataSize != f.Size:
		return nil, fmt.Sprintf("%s: size %d differs from the manifest's %d", f.Filename, info.DataSize, f.Size), nil
	}
	for d := range local {
		seen[d] = true
	}
	return refs, "", nil
}
