package format

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"runtime"
	"testing"
)

// rleBombFrame is a zstd frame of RLE blocks decoding to blocks×128 KiB
// of 'x', with a 1 MiB window and no declared content size: 4 bytes of
// input per 128 KiB of output, nothing telling the size up front.
func rleBombFrame(blocks int) []byte {
	f := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 10 << 3}
	for i := 0; i < blocks; i++ {
		h := uint32(128<<10)<<3 | 1<<1 // RLE
		if i == blocks-1 {
			h |= 1
		}
		f = append(f, byte(h), byte(h>>8), byte(h>>16), 'x')
	}
	return f
}

func compressedBlob(payload []byte) []byte {
	b := make([]byte, 12, 12+len(payload))
	copy(b, blobMagics[Compressed][:])
	b = append(b, payload...)
	binary.LittleEndian.PutUint32(b[8:], crc32.ChecksumIEEE(payload))
	return b
}

// TestManifestBombRefused: a ~3 KB manifest blob that decodes to 100 MiB
// (or declares so) is refused as too large without decoding it all.
func TestManifestBombRefused(t *testing.T) {
	bomb := compressedBlob(rleBombFrame(800)) // 100 MiB
	if len(bomb) > 4<<10 {
		t.Fatalf("bomb of %d bytes", len(bomb))
	}
	if _, err := ParseManifest(bomb); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("ParseManifest of a 100 MiB bomb: %v, want ErrTooLarge", err)
	}
	// The same with the size declared: refused before decoding.
	declared, err := EncodeBlob(bytes.Repeat([]byte{'{'}, MaxManifestSize+1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseManifest(declared); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("ParseManifest of an oversized frame: %v", err)
	}
	ms0 := memStats()
	_, _ = DecodeBlobLimit(bomb, MaxManifestSize)
	if grown := memStats() - ms0; grown > 4*MaxManifestSize { // unbounded: over 100 MiB
		t.Errorf("DecodeBlobLimit allocated %d bytes for a bomb", grown)
	}
}

// TestDecodeBlobLimitMatchesDecodeBlob: within the limit both agree.
func TestDecodeBlobLimitMatchesDecodeBlob(t *testing.T) {
	for _, data := range [][]byte{nil, []byte("{}"), bytes.Repeat([]byte("manifest "), 50000)} {
		for _, enc := range []func([]byte) ([]byte, error){EncodeBlob, EncodeBlobUncompressed} {
			raw, err := enc(data)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeBlobLimit(raw, len(data))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%d bytes: %v", len(data), err)
			}
			if len(data) > 0 {
				if _, err := DecodeBlobLimit(raw, len(data)-1); !errors.Is(err, ErrTooLarge) {
					t.Fatalf("%d bytes at limit %d: %v", len(data), len(data)-1, err)
				}
			}
		}
	}
}

func FuzzDecodeBlobLimit(f *testing.F) {
	f.Add(compressedBlob(rleBombFrame(3)), uint16(1000))
	raw, _ := EncodeBlob([]byte("pbsq manifest"))
	f.Add(raw, uint16(20))
	f.Fuzz(func(t *testing.T, raw []byte, limit uint16) {
		raw = withFixedCRC(raw)
		got, err := DecodeBlobLimit(raw, int(limit))
		want, werr := DecodeBlob(raw)
		switch {
		case err == nil && (werr != nil || !bytes.Equal(got, want)):
			t.Fatalf("DecodeBlobLimit %q, DecodeBlob %q %v", got, want, werr)
		case err == nil && len(got) > int(limit):
			t.Fatalf("%d bytes over limit %d", len(got), limit)
		case err != nil && werr == nil && len(want) <= int(limit):
			t.Fatalf("DecodeBlobLimit: %v, but DecodeBlob gives %d bytes within %d", err, len(want), limit)
		}
	})
}

func memStats() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}
