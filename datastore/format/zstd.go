package format

import (
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Both coders are shared: EncodeAll/DecodeAll are safe for concurrent use
// and keep per-goroutine state in internal pools sized to GOMAXPROCS.
var (
	zstdEncoder = sync.OnceValue(func() *zstd.Encoder {
		e, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedFastest), // ≈ zstd level 1, like PBS
			zstd.WithEncoderConcurrency(0),
		)
		if err != nil {
			panic(err) // only on invalid options
		}
		return e
	})
	zstdDecoder = sync.OnceValue(func() *zstd.Decoder {
		d, err := zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0),
			zstd.WithDecoderMaxMemory(MaxBlobSize),
			zstd.WithDecoderMaxWindow(MaxBlobSize),
			// Never grow dst past the capacity zstdDecode sized it to.
			zstd.WithDecodeAllCapLimit(true),
		)
		if err != nil {
			panic(err)
		}
		return d
	})
)

const (
	// zstdMaxBlockSize is the most one zstd block may decode to.
	zstdMaxBlockSize = 128 << 10
	// zstdOverAlloc is the slack klauspost's own DecodeAll allocates.
	zstdOverAlloc = 16
	// zstdMaxCap is the most output room zstdDecode gives the decoder: one
	// block of slack lets its MaxBlobSize check stop a frame before the
	// frame grows the buffer.
	zstdMaxCap = MaxBlobSize + zstdMaxBlockSize + zstdOverAlloc
)

// zstdDecode appends the decompression of the zstd frames in src to dst.
// It bounds the output from the frame and block headers first, so that it
// allocates at most once and at most zstdMaxCap bytes, and the decoder
// (capped to the capacity it is given) never has to grow the buffer.
func zstdDecode(dst, src []byte) ([]byte, error) {
	bound, err := zstdBound(src)
	if err != nil {
		return dst, err
	}
	need := int(min(bound+zstdOverAlloc, zstdMaxCap))
	buf := dst
	if cap(dst)-len(dst) < need {
		buf = make([]byte, len(dst), len(dst)+need)
		copy(buf, dst)
	}
	// Decoding into an empty slice lets klauspost write straight into buf
	// instead of through a block buffer.
	room := buf[len(buf):]
	out, err := zstdDecoder().DecodeAll(src, room)
	if err != nil {
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) {
			return dst, fmt.Errorf("zstd data exceeds %d bytes: %w", MaxBlobSize, ErrTooLarge)
		}
		return dst, fmt.Errorf("zstd: %w: %w", ErrCorrupt, err)
	}
	if len(out) > MaxBlobSize {
		return dst, fmt.Errorf("zstd data of %d bytes: %w", len(out), ErrTooLarge)
	}
	if len(out) > 0 && &out[0] != &room[:1][0] {
		// Not expected with the capacity limit, but stay correct.
		return append(buf, out...), nil
	}
	return buf[:len(buf)+len(out)], nil
}

// zstdBound returns an upper bound of the decompressed size of src by
// walking its frame and block headers, as ZSTD_decompressBound does: the
// frame content size where declared, else each block's maximum output.
// Sizes declared beyond MaxBlobSize are ErrTooLarge at once.
//
// Several frames are only accepted while their bound fits zstdMaxCap:
// klauspost checks MaxBlobSize per frame, so a later frame could otherwise
// overrun the buffer and make the decoder grow it. PBS writes one frame.
func zstdBound(src []byte) (uint64, error) {
	if len(src) == 0 {
		return 0, fmt.Errorf("zstd: empty payload: %w", ErrCorrupt)
	}
	var declared, bound uint64
	frames := 0
	for len(src) > 0 {
		var h zstd.Header
		rest, err := h.DecodeAndStrip(src)
		if err != nil {
			return 0, fmt.Errorf("zstd frame header: %w: %w", ErrCorrupt, err)
		}
		if h.Skippable {
			if uint64(len(rest)) < uint64(h.SkippableSize) {
				return 0, fmt.Errorf("zstd: skippable frame truncated: %w", ErrCorrupt)
			}
			src = rest[h.SkippableSize:]
			continue
		}
		if h.DictionaryID != 0 {
			return 0, fmt.Errorf("zstd: frame needs dictionary %d: %w", h.DictionaryID, ErrCorrupt)
		}
		frames++
		var frame uint64
		for {
			if len(rest) < 3 {
				return 0, fmt.Errorf("zstd: block header truncated: %w", ErrCorrupt)
			}
			bh := uint32(rest[0]) | uint32(rest[1])<<8 | uint32(rest[2])<<16
			rest = rest[3:]
			size := uint64(bh >> 3)
			in := size
			switch (bh >> 1) & 3 {
			case 0: // raw
				frame += size
			case 1: // RLE: one byte repeated size times
				in, frame = 1, frame+size
			case 2: // compressed
				frame += zstdMaxBlockSize
			default:
				return 0, fmt.Errorf("zstd: reserved block type: %w", ErrCorrupt)
			}
			if uint64(len(rest)) < in {
				return 0, fmt.Errorf("zstd: block truncated: %w", ErrCorrupt)
			}
			rest = rest[in:]
			// At most len(src)/3 blocks of < 2^21 bytes: no overflow.
			if bh&1 != 0 {
				break
			}
		}
		if h.HasCheckSum {
			if len(rest) < 4 {
				return 0, fmt.Errorf("zstd: checksum truncated: %w", ErrCorrupt)
			}
			rest = rest[4:]
		}
		if h.HasFCS {
			// The decoder insists on the declared size, so it is exact.
			frame = h.FrameContentSize
			if frame > MaxBlobSize || declared+frame > MaxBlobSize {
				return 0, fmt.Errorf("zstd frames declare over %d bytes: %w", MaxBlobSize, ErrTooLarge)
			}
			declared += frame
		}
		bound = min(bound+min(frame, zstdMaxCap), zstdMaxCap)
		src = rest
	}
	if frames > 1 && bound+zstdOverAlloc > zstdMaxCap {
		return 0, fmt.Errorf("zstd: %d frames may decode to over %d bytes: %w", frames, MaxBlobSize, ErrTooLarge)
	}
	return bound, nil
}
