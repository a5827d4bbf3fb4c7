package format

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// MaxBlobSize bounds both the decoded data of a blob and its payload, as
// PBS's MAX_BLOB_SIZE does.
const MaxBlobSize = 128 << 20

const (
	blobHeaderSize          = 12      // magic[8] ‖ crc32 LE[4]
	encryptedBlobHeaderSize = 12 + 32 // + iv[16] ‖ tag[16]
	// maxEncodedBlobSize admits a full-size payload behind the largest header.
	maxEncodedBlobSize = MaxBlobSize + encryptedBlobHeaderSize
)

// BlobKind is the kind of a data blob, as told by its magic number.
type BlobKind uint8

// Blob kinds. The zero value is not a valid kind.
const (
	Uncompressed BlobKind = iota + 1
	Compressed
	Encrypted
	EncryptedCompressed
)

var blobMagics = [...][8]byte{
	Uncompressed:        {0x42, 0xab, 0x38, 0x07, 0xbe, 0x83, 0x70, 0xa1},
	Compressed:          {0x31, 0xb9, 0x58, 0x42, 0x6f, 0xb6, 0xa3, 0x7f},
	Encrypted:           {0x7b, 0x67, 0x85, 0xbe, 0x22, 0x2d, 0x4c, 0xf0},
	EncryptedCompressed: {0xe6, 0x59, 0x1b, 0xbf, 0x0b, 0xbf, 0xd8, 0x0b},
}

func (k BlobKind) valid() bool { return k >= Uncompressed && k <= EncryptedCompressed }

// String returns a short lower-case name of the kind.
func (k BlobKind) String() string {
	switch k {
	case Uncompressed:
		return "uncompressed"
	case Compressed:
		return "compressed"
	case Encrypted:
		return "encrypted"
	case EncryptedCompressed:
		return "encrypted+compressed"
	}
	return fmt.Sprintf("BlobKind(%d)", uint8(k))
}

// Magic returns the 8-byte magic that starts blobs of this kind (zero for
// an invalid kind).
func (k BlobKind) Magic() [8]byte {
	if !k.valid() {
		return [8]byte{}
	}
	return blobMagics[k]
}

// HeaderSize is the length of the header preceding the CRC-covered payload.
func (k BlobKind) HeaderSize() int {
	if k.IsEncrypted() {
		return encryptedBlobHeaderSize
	}
	return blobHeaderSize
}

// IsEncrypted reports whether the kind is one of the encrypted ones.
func (k BlobKind) IsEncrypted() bool { return k == Encrypted || k == EncryptedCompressed }

// IsCompressed reports whether the payload is zstd-compressed.
func (k BlobKind) IsCompressed() bool { return k == Compressed || k == EncryptedCompressed }

func blobKind(raw []byte) BlobKind {
	for k := Uncompressed; k <= EncryptedCompressed; k++ {
		if [8]byte(raw[:8]) == blobMagics[k] {
			return k
		}
	}
	return 0
}

// errBlobMagic names what was expected, never the bytes found: they are
// a file's content, which may not be pbsq's to show.
func errBlobMagic() error {
	return fmt.Errorf("not a blob (the magic number is not that of any blob kind): %w", ErrBadMagic)
}

// InspectBlob checks a blob's size, magic and CRC without decoding it, and
// returns its kind. It works for encrypted blobs too: like PBS, the CRC
// covers everything after the (kind-dependent) header.
func InspectBlob(raw []byte) (BlobKind, error) {
	if len(raw) > maxEncodedBlobSize {
		return 0, fmt.Errorf("blob of %d bytes: %w", len(raw), ErrTooLarge)
	}
	if len(raw) < 8 {
		return 0, fmt.Errorf("blob of %d bytes: %w", len(raw), ErrTruncated)
	}
	k := blobKind(raw)
	if k == 0 {
		return 0, errBlobMagic()
	}
	hs := k.HeaderSize()
	if len(raw) < hs {
		return k, fmt.Errorf("%v blob of %d bytes: %w", k, len(raw), ErrTruncated)
	}
	want := binary.LittleEndian.Uint32(raw[8:12])
	if got := crc32.ChecksumIEEE(raw[hs:]); got != want {
		return k, fmt.Errorf("%v blob: crc %08x, header says %08x: %w", k, got, want, ErrBadCRC)
	}
	return k, nil
}

// DecodeBlob checks and decodes a blob, returning its data in a new slice.
// Encrypted blobs yield an error wrapping ErrEncrypted once their CRC has
// been checked.
func DecodeBlob(raw []byte) ([]byte, error) {
	out, _, err := DecodeBlobAppend(nil, raw)
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = []byte{}
	}
	return out, nil
}

// DecodeBlobAppend is DecodeBlob appending the data to dst, for hot paths
// that reuse one buffer: when cap(dst) suffices nothing is allocated. On
// error it returns dst unchanged, plus the kind if the magic was known.
// Decoding never allocates more than about MaxBlobSize, whatever a zstd
// frame claims or expands to.
func DecodeBlobAppend(dst, raw []byte) ([]byte, BlobKind, error) {
	k, err := InspectBlob(raw)
	if err != nil {
		return dst, k, err
	}
	payload := raw[k.HeaderSize():]
	switch k {
	case Uncompressed:
		if len(payload) > MaxBlobSize {
			return dst, k, fmt.Errorf("blob data of %d bytes: %w", len(payload), ErrTooLarge)
		}
		return append(dst, payload...), k, nil
	case Compressed:
		out, err := zstdDecode(dst, payload)
		return out, k, err
	}
	return dst, k, fmt.Errorf("%v blob: %w", k, ErrEncrypted)
}

// EncodeBlob encodes data as a blob, zstd-compressed (level 1, as PBS does)
// when that is smaller than storing it plainly.
func EncodeBlob(data []byte) ([]byte, error) {
	if len(data) > MaxBlobSize {
		return nil, fmt.Errorf("blob data of %d bytes: %w", len(data), ErrTooLarge)
	}
	// One buffer, with room for zstd's worst-case expansion, serves both
	// outcomes so incompressible data costs no second allocation.
	plainLen := blobHeaderSize + len(data)
	buf := make([]byte, blobHeaderSize, plainLen+len(data)>>7+64)
	out := zstdEncoder().EncodeAll(data, buf)
	if len(out) < plainLen && len(out) > blobHeaderSize {
		return sealBlob(out, Compressed), nil
	}
	return sealBlob(append(buf, data...), Uncompressed), nil
}

// EncodeBlobUncompressed encodes data as an uncompressed blob.
func EncodeBlobUncompressed(data []byte) ([]byte, error) {
	if len(data) > MaxBlobSize {
		return nil, fmt.Errorf("blob data of %d bytes: %w", len(data), ErrTooLarge)
	}
	buf := make([]byte, blobHeaderSize, blobHeaderSize+len(data))
	return sealBlob(append(buf, data...), Uncompressed), nil
}

// sealBlob fills in the magic and CRC of an unencrypted blob.
func sealBlob(b []byte, k BlobKind) []byte {
	copy(b, blobMagics[k][:])
	binary.LittleEndian.PutUint32(b[8:12], crc32.ChecksumIEEE(b[blobHeaderSize:]))
	return b
}
