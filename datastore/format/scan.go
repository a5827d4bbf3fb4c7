package format

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// IndexInfo is what ScanIndex learns of an index besides its entries.
type IndexInfo struct {
	Fixed    bool
	Count    int
	DataSize uint64
	// Checksum is index_csum, checked against the entries.
	Checksum [32]byte
}

// scanPiece is how much of an index ScanIndex holds at once: a multiple
// of both entry sizes.
const scanPiece = 32 * 40 * 512 // 640 KiB

// ScanIndex reads an index file from r in pieces of at most 640 KiB,
// checking it as ParseIndex does, and calls fn for each chunk with its
// digest and the byte range [start, end) it covers. Its memory does not
// grow with the index, so a huge (or sparse) index costs time, not RAM.
// fileSize, when known (>= 0), lets a fixed index whose length disagrees
// with its header fail before anything is read.
//
// The checksum is only checked at the end: fn has seen entries of an
// index that turns out corrupt when ScanIndex returns an error, and the
// caller must not trust them then.
func ScanIndex(filename string, r io.Reader, fileSize int64, fn func(i int, digest [32]byte, start, end uint64) error) (IndexInfo, error) {
	var hdr [IndexHeaderSize]byte
	if n, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return IndexInfo{}, fmt.Errorf("index %q of %d bytes: %w", filename, n, ErrTruncated)
		}
		return IndexInfo{}, err
	}
	magic := [8]byte(hdr[:8])
	var fixed bool
	switch {
	case strings.HasSuffix(filename, ".fidx"):
		fixed = true
	case strings.HasSuffix(filename, ".didx"):
	default:
		fixed = magic == fixedIndexMagic
	}
	what, want := "dynamic index", dynamicIndexMagic
	if fixed {
		what, want = "fixed index", fixedIndexMagic
	}
	if magic != want {
		return IndexInfo{}, fmt.Errorf("index %q: not a %s: %w", filename, what, ErrBadMagic)
	}
	info := IndexInfo{Fixed: fixed, Checksum: [32]byte(hdr[offCsum:])}
	entry := dynamicEntrySize
	var want64 uint64 // fixed: the digest count the header implies
	if fixed {
		entry = 32
		info.DataSize = binary.LittleEndian.Uint64(hdr[offFixedSize:])
		chunkSize := binary.LittleEndian.Uint64(hdr[offFixedChunkSize:])
		if chunkSize == 0 {
			return info, fmt.Errorf("fixed index: chunk size 0: %w", ErrCorrupt)
		}
		want64 = FixedChunkCount(info.DataSize, chunkSize)
		if fileSize >= 0 && (uint64(fileSize) < IndexHeaderSize || (uint64(fileSize)-IndexHeaderSize)%32 != 0 || want64 != (uint64(fileSize)-IndexHeaderSize)/32) {
			return info, fmt.Errorf("fixed index: %d bytes, but size %d / chunk size %d needs %d digests: %w",
				fileSize, info.DataSize, chunkSize, want64, ErrCorrupt)
		}
		fn = fixedRanges(info.DataSize, chunkSize, fn)
	}
	h := sha256.New()
	buf := make([]byte, scanPiece)
	var prevEnd uint64
	i := 0
	for {
		n, err := io.ReadFull(r, buf)
		if n%entry != 0 {
			if err == nil {
				panic("scanPiece is not a multiple of the entry size")
			}
			return info, fmt.Errorf("%s: entry area is not a multiple of %d: %w", what, entry, ErrCorrupt)
		}
		h.Write(buf[:n])
		for off := 0; off < n; off += entry {
			if fixed && uint64(i) >= want64 {
				return info, fmt.Errorf("fixed index: more digests than size / chunk size needs (%d): %w", want64, ErrCorrupt)
			}
			e := buf[off : off+entry]
			var d [32]byte
			var start, end uint64
			if fixed {
				d = [32]byte(e)
			} else {
				end = binary.LittleEndian.Uint64(e)
				d = [32]byte(e[8:])
				if i > 0 && end <= prevEnd {
					return info, fmt.Errorf("dynamic index: entry %d ends at %d, not after %d: %w", i, end, prevEnd, ErrCorrupt)
				}
				start = min(prevEnd, end)
				prevEnd = end
			}
			if err := fn(i, d, start, end); err != nil {
				return info, err
			}
			i++
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return info, err
		}
	}
	if fixed && uint64(i) != want64 {
		return info, fmt.Errorf("fixed index: %d digests, but size / chunk size needs %d: %w", i, want64, ErrCorrupt)
	}
	if got := [32]byte(h.Sum(nil)); got != info.Checksum {
		return info, fmt.Errorf("%s: entries hash to %x, header says %x: %w", what, got, info.Checksum, ErrBadChecksum)
	}
	info.Count = i
	if !fixed {
		info.DataSize = prevEnd
	}
	return info, nil
}

// fixedRanges gives a fixed index's callback each chunk's byte range.
func fixedRanges(size, chunkSize uint64, fn func(int, [32]byte, uint64, uint64) error) func(int, [32]byte, uint64, uint64) error {
	return func(i int, d [32]byte, _, _ uint64) error {
		start := uint64(i) * chunkSize
		if start >= size || start/chunkSize != uint64(i) {
			return fn(i, d, size, size)
		}
		return fn(i, d, start, start+min(chunkSize, size-start))
	}
}
