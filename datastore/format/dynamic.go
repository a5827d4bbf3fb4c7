package format

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

const dynamicEntrySize = 40 // end_offset u64 LE ‖ digest[32]

// DynamicEntry is one chunk of a dynamic index: its digest and the offset
// at which it ends in the data (cumulative).
type DynamicEntry struct {
	End    uint64
	Digest [32]byte
}

// DynamicIndex is a .didx file: data cut into variable-sized chunks.
type DynamicIndex struct {
	UUID    [16]byte
	CTime   int64 // creation time, Unix seconds
	Entries []DynamicEntry
}

// ParseDynamicIndex parses and checks a .didx file: whole entries only, end
// offsets strictly increasing, and index_csum matching.
func ParseDynamicIndex(b []byte) (*DynamicIndex, error) {
	uuid, ctime, csum, err := parseIndexHeader(b, dynamicIndexMagic, "dynamic index")
	if err != nil {
		return nil, err
	}
	area := b[IndexHeaderSize:]
	if len(area)%dynamicEntrySize != 0 {
		return nil, fmt.Errorf("dynamic index: entry area of %d bytes is not a multiple of %d: %w",
			len(area), dynamicEntrySize, ErrCorrupt)
	}
	if got := sha256.Sum256(area); got != csum {
		return nil, fmt.Errorf("dynamic index: entries hash to %x, header says %x: %w", got, csum, ErrBadChecksum)
	}
	x := &DynamicIndex{UUID: uuid, CTime: ctime, Entries: make([]DynamicEntry, len(area)/dynamicEntrySize)}
	for i := range x.Entries {
		e := area[i*dynamicEntrySize:]
		x.Entries[i] = DynamicEntry{End: binary.LittleEndian.Uint64(e), Digest: [32]byte(e[8:])}
	}
	if err := x.Validate(); err != nil {
		return nil, err
	}
	return x, nil
}

// Validate checks that end offsets strictly increase. (A first chunk
// ending at 0 is tolerated: it is empty but harmless.)
func (x *DynamicIndex) Validate() error {
	for i := 1; i < len(x.Entries); i++ {
		if x.Entries[i].End <= x.Entries[i-1].End {
			return fmt.Errorf("dynamic index: entry %d ends at %d, not after %d: %w",
				i, x.Entries[i].End, x.Entries[i-1].End, ErrCorrupt)
		}
	}
	return nil
}

func (x *DynamicIndex) appendEntries(b []byte) []byte {
	for _, e := range x.Entries {
		b = binary.LittleEndian.AppendUint64(b, e.End)
		b = append(b, e.Digest[:]...)
	}
	return b
}

// Marshal encodes the index file, computing index_csum. It does not
// validate; see Validate.
func (x *DynamicIndex) Marshal() []byte {
	b := make([]byte, IndexHeaderSize, IndexHeaderSize+dynamicEntrySize*len(x.Entries))
	b = x.appendEntries(b)
	putIndexHeader(b, dynamicIndexMagic, x.UUID, x.CTime, sha256.Sum256(b[IndexHeaderSize:]))
	return b
}

// Checksum returns index_csum: SHA-256 over the entries as stored.
func (x *DynamicIndex) Checksum() [32]byte {
	h := sha256.New()
	var e [dynamicEntrySize]byte
	for _, de := range x.Entries {
		binary.LittleEndian.PutUint64(e[:], de.End)
		copy(e[8:], de.Digest[:])
		h.Write(e[:])
	}
	return [32]byte(h.Sum(nil))
}

// ChunkCount returns the number of chunks.
func (x *DynamicIndex) ChunkCount() int { return len(x.Entries) }

// ChunkDigest returns the digest of chunk i.
func (x *DynamicIndex) ChunkDigest(i int) [32]byte { return x.Entries[i].Digest }

// DataSize returns the data length: the last end offset, 0 if empty.
func (x *DynamicIndex) DataSize() uint64 {
	if len(x.Entries) == 0 {
		return 0
	}
	return x.Entries[len(x.Entries)-1].End
}

// ChunkRange returns the byte range [start, end) of chunk i.
func (x *DynamicIndex) ChunkRange(i int) (start, end uint64) {
	end = x.Entries[i].End
	if i > 0 {
		start = x.Entries[i-1].End
	}
	return min(start, end), end // min: stays sane on an unvalidated index
}

// ChunkLen returns the length of chunk i.
func (x *DynamicIndex) ChunkLen(i int) uint64 {
	start, end := x.ChunkRange(i)
	return end - start
}
