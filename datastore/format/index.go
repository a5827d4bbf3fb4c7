package format

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// IndexHeaderSize is the size of the header of both index formats.
const IndexHeaderSize = 4096

// Header field offsets shared by both index formats.
const (
	offUUID  = 8
	offCTime = 24
	offCsum  = 32
)

var (
	fixedIndexMagic   = [8]byte{0x2f, 0x7f, 0x41, 0xed, 0x91, 0xfd, 0x0f, 0xcd}
	dynamicIndexMagic = [8]byte{0x1c, 0x91, 0x4e, 0xa5, 0x19, 0xba, 0xb3, 0xcd}
)

// Index is what verify, sync and gc need from either index format.
type Index interface {
	// ChunkCount is the number of chunks referenced.
	ChunkCount() int
	// ChunkDigest is the SHA-256 digest of chunk i.
	ChunkDigest(i int) [32]byte
	// ChunkRange is the byte range [start, end) chunk i covers in the data.
	ChunkRange(i int) (start, end uint64)
	// ChunkLen is the decoded length of chunk i.
	ChunkLen(i int) uint64
	// DataSize is the length of the indexed data.
	DataSize() uint64
	// Checksum is index_csum computed from the entries; for a parsed index
	// it equals the header's, which parsing checked.
	Checksum() [32]byte
	// Marshal encodes the index file.
	Marshal() []byte
}

var (
	_ Index = (*FixedIndex)(nil)
	_ Index = (*DynamicIndex)(nil)
)

// ParseIndex parses an index file, choosing the format by the file name's
// extension (.fidx or .didx) or, failing that, by its magic.
func ParseIndex(filename string, b []byte) (Index, error) {
	switch {
	case strings.HasSuffix(filename, ".fidx"):
		return ParseFixedIndex(b)
	case strings.HasSuffix(filename, ".didx"):
		return ParseDynamicIndex(b)
	case len(b) >= 8 && [8]byte(b[:8]) == fixedIndexMagic:
		return ParseFixedIndex(b)
	case len(b) >= 8 && [8]byte(b[:8]) == dynamicIndexMagic:
		return ParseDynamicIndex(b)
	case len(b) < 8:
		return nil, fmt.Errorf("index %q of %d bytes: %w", filename, len(b), ErrTruncated)
	}
	return nil, fmt.Errorf("index %q: magic number is neither a fixed index's (%x) nor a dynamic index's (%x): %w",
		filename, fixedIndexMagic, dynamicIndexMagic, ErrBadMagic)
}

// parseIndexHeader checks the length and magic shared by both formats.
func parseIndexHeader(b []byte, magic [8]byte, what string) (uuid [16]byte, ctime int64, csum [32]byte, err error) {
	if len(b) < IndexHeaderSize {
		return uuid, 0, csum, fmt.Errorf("%s of %d bytes: %w", what, len(b), ErrTruncated)
	}
	if [8]byte(b[:8]) != magic {
		return uuid, 0, csum, fmt.Errorf("%s: magic number is not %x: %w", what, magic, ErrBadMagic)
	}
	uuid = [16]byte(b[offUUID:])
	ctime = int64(binary.LittleEndian.Uint64(b[offCTime:]))
	csum = [32]byte(b[offCsum:])
	return uuid, ctime, csum, nil
}

// putIndexHeader writes the fields shared by both formats into a zeroed header.
func putIndexHeader(b []byte, magic [8]byte, uuid [16]byte, ctime int64, csum [32]byte) {
	copy(b, magic[:])
	copy(b[offUUID:], uuid[:])
	binary.LittleEndian.PutUint64(b[offCTime:], uint64(ctime))
	copy(b[offCsum:], csum[:])
}
