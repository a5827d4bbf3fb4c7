package format

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

const (
	offFixedSize      = 64
	offFixedChunkSize = 72
)

// FixedIndex is a .fidx file: an image cut into ChunkSize pieces (the last
// one may be short), each named by its digest.
type FixedIndex struct {
	UUID      [16]byte
	CTime     int64 // creation time, Unix seconds
	Size      uint64
	ChunkSize uint64
	Digests   [][32]byte
}

// FixedChunkCount is the number of chunks a fixed index of size bytes cut
// into chunkSize pieces has: ceil(size/chunkSize). chunkSize must be > 0.
func FixedChunkCount(size, chunkSize uint64) uint64 {
	n := size / chunkSize
	if size%chunkSize != 0 {
		n++
	}
	return n
}

// ParseFixedIndex parses and checks a .fidx file: its digest area must hold
// exactly the digests the header's sizes imply, and their SHA-256 must match
// index_csum. Nothing is allocated beyond what the input itself holds.
func ParseFixedIndex(b []byte) (*FixedIndex, error) {
	uuid, ctime, csum, err := parseIndexHeader(b, fixedIndexMagic, "fixed index")
	if err != nil {
		return nil, err
	}
	x := &FixedIndex{
		UUID:      uuid,
		CTime:     ctime,
		Size:      binary.LittleEndian.Uint64(b[offFixedSize:]),
		ChunkSize: binary.LittleEndian.Uint64(b[offFixedChunkSize:]),
	}
	if x.ChunkSize == 0 {
		return nil, fmt.Errorf("fixed index: chunk size 0: %w", ErrCorrupt)
	}
	area := b[IndexHeaderSize:]
	// Compare counts, not byte lengths: count*32 may overflow for absurd sizes.
	n := FixedChunkCount(x.Size, x.ChunkSize)
	if uint64(len(area))%32 != 0 || n != uint64(len(area))/32 {
		return nil, fmt.Errorf("fixed index: %d digest bytes, but size %d / chunk size %d needs %d digests: %w",
			len(area), x.Size, x.ChunkSize, n, ErrCorrupt)
	}
	if got := sha256.Sum256(area); got != csum {
		return nil, fmt.Errorf("fixed index: digests hash to %x, header says %x: %w", got, csum, ErrBadChecksum)
	}
	x.Digests = make([][32]byte, n)
	for i := range x.Digests {
		x.Digests[i] = [32]byte(area[i*32:])
	}
	return x, nil
}

// Validate checks what ParseFixedIndex would: a non-zero chunk size and a
// digest count matching Size.
func (x *FixedIndex) Validate() error {
	if x.ChunkSize == 0 {
		return fmt.Errorf("fixed index: chunk size 0: %w", ErrCorrupt)
	}
	if n := FixedChunkCount(x.Size, x.ChunkSize); uint64(len(x.Digests)) != n {
		return fmt.Errorf("fixed index: %d digests, size %d / chunk size %d needs %d: %w",
			len(x.Digests), x.Size, x.ChunkSize, n, ErrCorrupt)
	}
	return nil
}

// Marshal encodes the index file, computing index_csum. It does not
// validate; see Validate.
func (x *FixedIndex) Marshal() []byte {
	b := make([]byte, IndexHeaderSize+32*len(x.Digests))
	for i, d := range x.Digests {
		copy(b[IndexHeaderSize+32*i:], d[:])
	}
	putIndexHeader(b, fixedIndexMagic, x.UUID, x.CTime, sha256.Sum256(b[IndexHeaderSize:]))
	binary.LittleEndian.PutUint64(b[offFixedSize:], x.Size)
	binary.LittleEndian.PutUint64(b[offFixedChunkSize:], x.ChunkSize)
	return b
}

// Checksum returns index_csum: SHA-256 over the concatenated digests.
func (x *FixedIndex) Checksum() [32]byte {
	h := sha256.New()
	for i := range x.Digests {
		h.Write(x.Digests[i][:])
	}
	return [32]byte(h.Sum(nil))
}

// ChunkCount returns the number of chunks.
func (x *FixedIndex) ChunkCount() int { return len(x.Digests) }

// ChunkDigest returns the digest of chunk i.
func (x *FixedIndex) ChunkDigest(i int) [32]byte { return x.Digests[i] }

// DataSize returns the image size.
func (x *FixedIndex) DataSize() uint64 { return x.Size }

// ChunkRange returns the byte range [start, end) of chunk i in the image;
// only the last chunk may be shorter than ChunkSize. i must be in range.
func (x *FixedIndex) ChunkRange(i int) (start, end uint64) {
	_ = x.Digests[i] // bounds check, like a slice
	start = uint64(i) * x.ChunkSize
	if start >= x.Size {
		return x.Size, x.Size // only for an index that fails Validate
	}
	// size-start, not start+ChunkSize, which may overflow near 2^64.
	return start, start + min(x.ChunkSize, x.Size-start)
}

// ChunkLen returns the length of chunk i.
func (x *FixedIndex) ChunkLen(i int) uint64 {
	start, end := x.ChunkRange(i)
	return end - start
}
