package format

import (
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// MaxManifestSize bounds a manifest's JSON. PBS's manifests list a few
// archives and a verify state (a few KiB); PBS takes blob uploads of at
// most 16 MiB encoded but would decode a manifest up to MaxBlobSize,
// which lets a 22 KB zstd bomb cost a reader gigabytes. Half of PBS's
// upload bound leaves room for long notes.
const MaxManifestSize = 8 << 20

// DecodeBlobLimit is DecodeBlob for blobs whose data may not exceed limit
// bytes (manifests): zstd is decoded no further than that, so memory is
// bounded by limit, not by what the frame expands to.
func DecodeBlobLimit(raw []byte, limit int) ([]byte, error) {
	k, err := InspectBlob(raw)
	if err != nil {
		return nil, err
	}
	payload := raw[k.HeaderSize():]
	switch k {
	case Uncompressed:
		if len(payload) > limit {
			return nil, fmt.Errorf("blob data of %d bytes, over %d: %w", len(payload), limit, ErrTooLarge)
		}
		return append([]byte{}, payload...), nil
	case Compressed:
		bound, err := zstdBound(payload)
		if err != nil {
			return nil, err
		}
		// The shared decoder stops at the capacity it is given.
		buf := make([]byte, 0, min(bound, uint64(limit))+1)
		out, err := zstdDecoder().DecodeAll(payload, buf)
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) || err == nil && len(out) > limit {
			return nil, fmt.Errorf("zstd data over %d bytes: %w", limit, ErrTooLarge)
		}
		if err != nil {
			return nil, fmt.Errorf("zstd: %w: %w", ErrCorrupt, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%v blob: %w", k, ErrEncrypted)
}
