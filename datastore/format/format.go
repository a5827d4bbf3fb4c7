// Package format holds pure codecs for the files of a Proxmox Backup Server
// datastore: data blobs (chunks and *.blob files), fixed and dynamic chunk
// indexes and the backup manifest. Everything is byte-compatible with PBS and
// works on byte slices only, so callers decide how data is read and written.
package format

import "errors"

// Sentinel errors; every error returned by this package wraps one of them.
var (
	// ErrTruncated: the input ends before its header does.
	ErrTruncated = errors.New("truncated")
	// ErrBadMagic: the leading magic number is not the expected one.
	ErrBadMagic = errors.New("bad magic")
	// ErrBadCRC: a blob's CRC-32 does not match its payload.
	ErrBadCRC = errors.New("bad crc")
	// ErrTooLarge: an encoded or decoded size exceeds MaxBlobSize.
	ErrTooLarge = errors.New("too large")
	// ErrEncrypted: the blob is encrypted and pbsq holds no keys.
	ErrEncrypted = errors.New("encrypted blob")
	// ErrCorrupt: the structure is inconsistent (bad zstd data, index
	// length that disagrees with its header, non-monotonic offsets, ...).
	ErrCorrupt = errors.New("corrupt")
	// ErrBadChecksum: an index's stored SHA-256 does not match its entries.
	ErrBadChecksum = errors.New("bad index checksum")
	// ErrInvalidManifest: the manifest JSON is malformed or has invalid fields.
	ErrInvalidManifest = errors.New("invalid manifest")
)
