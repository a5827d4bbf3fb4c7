package format

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"runtime"
	"strings"
	"testing"
)

// Magics straight from the spec, not from the code under test.
const (
	hexPlain     = "42ab3807be8370a1"
	hexZstd      = "31b958426fb6a37f"
	hexEncrypted = "7b6785be222d4cf0"
	hexEncZstd   = "e6591bbf0bbfd80b"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// handBlob assembles magic ‖ crc32 LE ‖ extra ‖ payload by hand; the CRC
// covers only payload (for encrypted blobs extra is iv ‖ tag).
func handBlob(t testing.TB, magicHex string, extra, payload []byte) []byte {
	t.Helper()
	b := unhex(t, magicHex)
	b = binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(payload))
	b = append(b, extra...)
	return append(b, payload...)
}

// fixtureText is what the libzstd fixtures below decompress to.
func fixtureText() []byte {
	var sb strings.Builder
	for i := range 64 {
		fmt.Fprintf(&sb, "line %d: proxmox backup server chunk\n", i%7)
	}
	return []byte(sb.String())
}

// Produced by the zstd 1.5.4 CLI at level 1 from fixtureText: one with the
// content size and no checksum (as ZSTD_compress writes), one streamed
// without content size but with a checksum (as a stream encoder writes).
const (
	libzstdFCS    = "28b52ffd600008b505008246141790376dd095aa19bdb12368f3ffb1aec8de69a8bab30108c5b3ba8b677517cfea2e9ed55d3cabbb785677f1aceee259ddc5b3ba294d71000ca310083a793869a0443108c18016a4b02027a140294d71043f20e03703a2200fc990823c24430af2900c29c84332a4200fc990823c24430ae421195290876448411e92210579488614e421195290876448411e92410af2900c29c84332a4200fc990823c24430af2900c29c84332a4200f92214520af1c329501"
	libzstdStream = "28b52ffd0448b505008246141790376dd095aa19bdb12368f3ffb1aec8de69a8bab30108c5b3ba8b677517cfea2e9ed55d3cabbb785677f1aceee259ddc5b3ba294d71000ca310083a793869a0443108c18016a4b02027a140294d71043f20e03703a2200fc990823c24430af2900c29c84332a4200fc990823c24430ae421195290876448411e92210579488614e421195290876448411e92410af2900c29c84332a4200fc990823c24430af2900c29c84332a4200f92214520af1c329501bd80af54"
)

// Hand-assembled zstd frames (RFC 8878).
var (
	// Single segment, 1-byte FCS 5, one raw last block "hello".
	zstdRawHello = []byte{0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x05, 5<<3 | 0<<1 | 1, 0, 0, 'h', 'e', 'l', 'l', 'o'}
	// No FCS, 1 KiB window, one RLE last block of ten 'a'.
	zstdRLE = []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x00, 10<<3 | 1<<1 | 1, 0, 0, 'a'}
)

// zstdFrameHugeFCS declares 2^40 bytes of content, then holds 5.
func zstdFrameHugeFCS() []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0xe0} // FCS field 8 bytes, single segment
	b = binary.LittleEndian.AppendUint64(b, 1<<40)
	return append(b, 5<<3|1, 0, 0, 'h', 'e', 'l', 'l', 'o')
}

// zstdRLEBomb is one frame without FCS whose RLE blocks of 128 KiB expand
// to n bytes (n a multiple of 128 KiB) from 4 bytes each.
func zstdRLEBomb(n int) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38} // window 2^(10+7) = 128 KiB
	for i := n / (128 << 10); i > 0; i-- {
		h := uint32(128<<10)<<3 | 1<<1
		if i == 1 {
			h |= 1
		}
		b = append(b, byte(h), byte(h>>8), byte(h>>16), 0)
	}
	return b
}

func TestDecodeHandBuiltPlain(t *testing.T) {
	// CRC-32/IEEE of "123456789" is the well-known check value cbf43926.
	raw := unhex(t, hexPlain+"2639f4cb"+hex.EncodeToString([]byte("123456789")))
	got, err := DecodeBlob(raw)
	if err != nil || string(got) != "123456789" {
		t.Fatalf("DecodeBlob = %q, %v", got, err)
	}
	enc, err := EncodeBlobUncompressed([]byte("123456789"))
	if err != nil || !bytes.Equal(enc, raw) {
		t.Fatalf("EncodeBlobUncompressed = %x, %v; want %x", enc, err, raw)
	}
	// Too small to compress: EncodeBlob must store it plainly, identically.
	if enc, err := EncodeBlob([]byte("123456789")); err != nil || !bytes.Equal(enc, raw) {
		t.Fatalf("EncodeBlob = %x, %v; want %x", enc, err, raw)
	}
	if k, err := InspectBlob(raw); k != Uncompressed || err != nil {
		t.Fatalf("InspectBlob = %v, %v", k, err)
	}
}

func TestDecodeHandBuiltEmpty(t *testing.T) {
	raw := unhex(t, hexPlain+"00000000") // CRC of nothing is 0
	got, err := DecodeBlob(raw)
	if err != nil || got == nil || len(got) != 0 {
		t.Fatalf("DecodeBlob = %#v, %v", got, err)
	}
	if enc, err := EncodeBlob(nil); err != nil || !bytes.Equal(enc, raw) {
		t.Fatalf("EncodeBlob(nil) = %x, %v", enc, err)
	}
}

func TestDecodeHandBuiltZstd(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		want  []byte
	}{
		{"raw-block", zstdRawHello, []byte("hello")},
		{"rle-block", zstdRLE, []byte("aaaaaaaaaa")},
		{"two-frames", append(append([]byte(nil), zstdRawHello...), zstdRLE...), []byte("helloaaaaaaaaaa")},
		{"skippable-then-frame", append([]byte{0x5a, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 'x', 'y'}, zstdRawHello...), []byte("hello")},
		{"libzstd-fcs", unhex(t, libzstdFCS), fixtureText()},
		{"libzstd-stream-checksum", unhex(t, libzstdStream), fixtureText()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := handBlob(t, hexZstd, nil, tc.frame)
			got, err := DecodeBlob(raw)
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("DecodeBlob = %q, %v; want %q", got, err, tc.want)
			}
			if k, err := InspectBlob(raw); k != Compressed || err != nil {
				t.Fatalf("InspectBlob = %v, %v", k, err)
			}
		})
	}
}

func TestEncryptedBlob(t *testing.T) {
	iv := bytes.Repeat([]byte{0x11}, 16)
	tag := bytes.Repeat([]byte{0x22}, 16)
	ct := []byte("opaque ciphertext bytes")
	for _, tc := range []struct {
		magic string
		kind  BlobKind
	}{{hexEncrypted, Encrypted}, {hexEncZstd, EncryptedCompressed}} {
		raw := handBlob(t, tc.magic, append(append([]byte(nil), iv...), tag...), ct)
		if k, err := InspectBlob(raw); k != tc.kind || err != nil {
			t.Fatalf("InspectBlob = %v, %v; want %v", k, err, tc.kind)
		}
		if _, err := DecodeBlob(raw); !errors.Is(err, ErrEncrypted) {
			t.Fatalf("DecodeBlob = %v; want ErrEncrypted", err)
		}
		if _, k, err := DecodeBlobAppend(nil, raw); k != tc.kind || !errors.Is(err, ErrEncrypted) {
			t.Fatalf("DecodeBlobAppend = %v, %v", k, err)
		}
		// The CRC covers only what follows iv ‖ tag ...
		mod := bytes.Clone(raw)
		mod[12] ^= 1
		mod[43] ^= 1
		if _, err := InspectBlob(mod); err != nil {
			t.Fatalf("iv/tag change: %v; the CRC must not cover them", err)
		}
		// ... and a bad one wins over ErrEncrypted.
		mod = bytes.Clone(raw)
		mod[len(mod)-1] ^= 0x80
		if _, err := DecodeBlob(mod); !errors.Is(err, ErrBadCRC) || errors.Is(err, ErrEncrypted) {
			t.Fatalf("corrupt encrypted blob: %v; want ErrBadCRC", err)
		}
		// 44 bytes is the smallest encrypted blob.
		for n := 8; n < 44; n++ {
			if _, err := DecodeBlob(raw[:n]); !errors.Is(err, ErrTruncated) {
				t.Fatalf("len %d: %v; want ErrTruncated", n, err)
			}
		}
	}
}

func TestDecodeBlobTruncated(t *testing.T) {
	blobs := map[string][]byte{
		"plain": handBlob(t, hexPlain, nil, []byte("some data")),
		"zstd":  handBlob(t, hexZstd, nil, zstdRawHello),
	}
	for name, raw := range blobs {
		for n := range len(raw) {
			_, err := DecodeBlob(raw[:n])
			switch {
			case n < 12 && !errors.Is(err, ErrTruncated):
				t.Errorf("%s len %d: %v; want ErrTruncated", name, n, err)
			case n >= 12 && !errors.Is(err, ErrBadCRC):
				t.Errorf("%s len %d: %v; want ErrBadCRC", name, n, err)
			}
		}
	}
	// Every truncation of a zstd payload carrying a valid CRC is corrupt.
	for _, frame := range [][]byte{zstdRawHello, zstdRLE, unhex(t, libzstdFCS), unhex(t, libzstdStream)} {
		for n := range len(frame) {
			raw := handBlob(t, hexZstd, nil, frame[:n])
			if _, err := DecodeBlob(raw); !errors.Is(err, ErrCorrupt) {
				t.Errorf("zstd frame cut at %d of %d: %v; want ErrCorrupt", n, len(frame), err)
			}
		}
	}
}

func TestDecodeBlobBadMagic(t *testing.T) {
	raw := handBlob(t, hexPlain, nil, []byte("data"))
	for i := range 8 {
		mod := bytes.Clone(raw)
		mod[i] ^= 0x01
		if _, err := DecodeBlob(mod); !errors.Is(err, ErrBadMagic) {
			t.Errorf("magic byte %d flipped: %v; want ErrBadMagic", i, err)
		}
	}
	// An index is not a blob.
	if _, err := DecodeBlob(unhex(t, "2f7f41ed91fd0fcd00000000")); !errors.Is(err, ErrBadMagic) {
		t.Errorf("fidx magic: %v", err)
	}
}

func TestDecodeBlobBadCRC(t *testing.T) {
	for _, raw := range [][]byte{
		handBlob(t, hexPlain, nil, []byte("data")),
		handBlob(t, hexZstd, nil, zstdRawHello),
	} {
		for bit := range 8 * (len(raw) - 8) {
			mod := bytes.Clone(raw)
			mod[8+bit/8] ^= 1 << (bit % 8)
			if _, err := DecodeBlob(mod); !errors.Is(err, ErrBadCRC) {
				t.Fatalf("bit %d after the magic flipped: %v; want ErrBadCRC", bit, err)
			}
		}
	}
}

func TestDecodeBlobCorruptZstd(t *testing.T) {
	for name, payload := range map[string][]byte{
		"empty":         nil,
		"not-zstd":      []byte("definitely not a zstd frame"),
		"trailing-junk": append(bytes.Clone(zstdRawHello), 1, 2, 3, 4, 5),
		"reserved-block": {0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x05, 5<<3 | 3<<1 | 1, 0, 0,
			'h', 'e', 'l', 'l', 'o'},
		"fcs-mismatch": {0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x06, 5<<3 | 1, 0, 0, 'h', 'e', 'l', 'l', 'o'},
		"dictionary":   {0x28, 0xb5, 0x2f, 0xfd, 0x21, 0x07, 0x05, 5<<3 | 1, 0, 0, 'h', 'e', 'l', 'l', 'o'},
		"bad-checksum": func() []byte {
			b := unhex(t, libzstdStream)
			b[len(b)-1] ^= 1
			return b
		}(),
	} {
		raw := handBlob(t, hexZstd, nil, payload)
		if got, err := DecodeBlob(raw); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: DecodeBlob = %q, %v; want ErrCorrupt", name, got, err)
		}
	}
}

// allocated runs f and returns the bytes it allocated.
// allocated measures what f allocates. TotalAlloc is process-wide, so
// parallel tests and the runtime add noise; the least of three runs is f's.
func allocated(f func()) uint64 {
	least := uint64(math.MaxUint64)
	for i := 0; i < 3; i++ {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		least = min(least, after.TotalAlloc-before.TotalAlloc)
	}
	return least
}

func TestDecodeBlobHugeZstd(t *testing.T) {
	zstdDecoder() // warm up outside the measurements
	t.Run("declared", func(t *testing.T) {
		raw := handBlob(t, hexZstd, nil, zstdFrameHugeFCS())
		var err error
		if n := allocated(func() { _, err = DecodeBlob(raw) }); n > 64<<10 {
			t.Errorf("allocated %d bytes", n)
		}
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("DecodeBlob: %v; want ErrTooLarge", err)
		}
	})
	t.Run("declared-over-several-frames", func(t *testing.T) {
		fcs := func(n uint32) []byte { // single segment, 4-byte FCS, empty raw block
			b := binary.LittleEndian.AppendUint32([]byte{0x28, 0xb5, 0x2f, 0xfd, 0xa0}, n)
			return append(b, 1, 0, 0)
		}
		raw := handBlob(t, hexZstd, nil, append(fcs(MaxBlobSize/2+1), fcs(MaxBlobSize/2)...))
		if _, err := DecodeBlob(raw); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("DecodeBlob: %v; want ErrTooLarge", err)
		}
	})
	t.Run("bomb-several-frames", func(t *testing.T) {
		half := zstdRLEBomb(80 << 20)
		raw := handBlob(t, hexZstd, nil, append(bytes.Clone(half), half...))
		var err error
		if n := allocated(func() { _, err = DecodeBlob(raw) }); n > 64<<10 {
			t.Errorf("allocated %d bytes", n)
		}
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("DecodeBlob: %v; want ErrTooLarge", err)
		}
	})
	if testing.Short() {
		t.Skip("decodes 128 MiB")
	}
	t.Run("bomb", func(t *testing.T) {
		raw := handBlob(t, hexZstd, nil, zstdRLEBomb(MaxBlobSize+4<<20))
		var err error
		if n := allocated(func() { _, err = DecodeBlob(raw) }); n > MaxBlobSize+1<<20 {
			t.Errorf("allocated %d bytes, over MaxBlobSize + 1 MiB", n)
		}
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("DecodeBlob: %v; want ErrTooLarge", err)
		}
	})
	t.Run("max-size-undeclared", func(t *testing.T) {
		raw := handBlob(t, hexZstd, nil, zstdRLEBomb(MaxBlobSize))
		var got []byte
		var err error
		if n := allocated(func() { got, err = DecodeBlob(raw) }); n > MaxBlobSize+1<<20 {
			t.Errorf("allocated %d bytes, over MaxBlobSize + 1 MiB", n)
		}
		if err != nil || len(got) != MaxBlobSize {
			t.Fatalf("DecodeBlob: %d bytes, %v", len(got), err)
		}
	})
}

func TestBlobTooLarge(t *testing.T) {
	big := make([]byte, MaxBlobSize+1)
	if _, err := EncodeBlob(big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("EncodeBlob: %v", err)
	}
	if _, err := EncodeBlobUncompressed(big); !errors.Is(err, ErrTooLarge) {
		t.Errorf("EncodeBlobUncompressed: %v", err)
	}
	// A plain blob with one byte too many (valid CRC) is refused.
	raw := handBlob(t, hexPlain, nil, big)
	if _, err := DecodeBlob(raw); !errors.Is(err, ErrTooLarge) {
		t.Errorf("DecodeBlob of %d data bytes: %v", len(big), err)
	}
	raw = append(raw, make([]byte, 64)...)
	if _, err := InspectBlob(raw); !errors.Is(err, ErrTooLarge) {
		t.Errorf("InspectBlob of %d bytes: %v", len(raw), err)
	}
}

func compressible(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "chunk %d of a fairly repetitive backup stream\n", i%1000)
	}
	return b.Bytes()[:n]
}

func random(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBlobRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		kind BlobKind
	}{
		{"empty", nil, Uncompressed},
		{"byte", []byte{7}, Uncompressed},
		{"small-text", []byte("hello hello hello hello hello hello hello hello"), Compressed},
		{"compressible-4MiB", compressible(4 << 20), Compressed},
		{"zeros-1MiB", make([]byte, 1<<20), Compressed},
		{"random-4KiB", random(t, 4<<10), Uncompressed},
		{"random-4MiB", random(t, 4<<20), Uncompressed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := EncodeBlob(tc.data)
			if err != nil {
				t.Fatal(err)
			}
			wantMagic := map[BlobKind]string{Uncompressed: hexPlain, Compressed: hexZstd}[tc.kind]
			if got := hex.EncodeToString(raw[:8]); got != wantMagic {
				t.Fatalf("magic %s, want %s (%v)", got, wantMagic, tc.kind)
			}
			if got := binary.LittleEndian.Uint32(raw[8:]); got != crc32.ChecksumIEEE(raw[12:]) {
				t.Fatalf("crc %08x does not cover the payload", got)
			}
			if tc.kind == Compressed && len(raw)-12 >= len(tc.data) {
				t.Fatalf("compressed payload %d not smaller than data %d", len(raw)-12, len(tc.data))
			}
			if tc.kind == Uncompressed && !bytes.Equal(raw[12:], tc.data) {
				t.Fatal("plain payload differs from data")
			}
			got, err := DecodeBlob(raw)
			if err != nil || !bytes.Equal(got, tc.data) {
				t.Fatalf("DecodeBlob: %d bytes, %v", len(got), err)
			}
			plain, err := EncodeBlobUncompressed(tc.data)
			if err != nil || hex.EncodeToString(plain[:8]) != hexPlain || !bytes.Equal(plain[12:], tc.data) {
				t.Fatalf("EncodeBlobUncompressed: %v", err)
			}
			// Appending keeps the prefix.
			out, k, err := DecodeBlobAppend([]byte("prefix"), raw)
			if err != nil || k != tc.kind || string(out[:6]) != "prefix" || !bytes.Equal(out[6:], tc.data) {
				t.Fatalf("DecodeBlobAppend: %v, %v", k, err)
			}
		})
	}
}

func TestBlobMaxSizeRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("128 MiB")
	}
	data := bytes.Repeat(compressible(1<<20), MaxBlobSize>>20)
	raw, err := EncodeBlob(data)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeBlob(raw)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("DecodeBlob: %d bytes, %v", len(got), err)
	}
}

func TestDecodeBlobAppendNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	data := compressible(1 << 20)
	zraw, _ := EncodeBlob(data)
	praw, _ := EncodeBlobUncompressed(data)
	buf := make([]byte, 0, 2<<20)
	for name, raw := range map[string][]byte{"zstd": zraw, "plain": praw} {
		allocs := testing.AllocsPerRun(20, func() {
			out, _, err := DecodeBlobAppend(buf[:0], raw)
			if err != nil || !bytes.Equal(out, data) {
				t.Fatalf("DecodeBlobAppend: %v", err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per decode into a big enough buffer", name, allocs)
		}
	}
	// On error dst comes back unchanged.
	bad := bytes.Clone(zraw)
	bad[len(bad)-1] ^= 1
	out, k, err := DecodeBlobAppend([]byte("keep"), bad)
	if string(out) != "keep" || k != Compressed || !errors.Is(err, ErrBadCRC) {
		t.Fatalf("DecodeBlobAppend(bad) = %q, %v, %v", out, k, err)
	}
}

func TestConcurrentCodecs(t *testing.T) {
	data := compressible(256 << 10)
	done := make(chan error)
	for g := range 16 {
		go func() {
			var err error
			for i := range 8 {
				d := append(bytes.Clone(data), byte(g), byte(i))
				var raw, got []byte
				if raw, err = EncodeBlob(d); err != nil {
					break
				}
				if got, err = DecodeBlob(raw); err == nil && !bytes.Equal(got, d) {
					err = errors.New("mismatch")
				}
				if err != nil {
					break
				}
			}
			done <- err
		}()
	}
	for range 16 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func TestBlobKind(t *testing.T) {
	for k, want := range map[BlobKind]string{
		Uncompressed: hexPlain, Compressed: hexZstd, Encrypted: hexEncrypted, EncryptedCompressed: hexEncZstd,
	} {
		m := k.Magic()
		if hex.EncodeToString(m[:]) != want {
			t.Errorf("%v magic %x, want %s", k, m, want)
		}
		if k.String() == "" || strings.HasPrefix(k.String(), "BlobKind(") {
			t.Errorf("%d has no name", k)
		}
		if wantHS := map[bool]int{false: 12, true: 44}[k.IsEncrypted()]; k.HeaderSize() != wantHS {
			t.Errorf("%v header size %d", k, k.HeaderSize())
		}
	}
	if BlobKind(0).String() != "BlobKind(0)" || BlobKind(0).Magic() != [8]byte{} {
		t.Error("zero kind")
	}
	if !Compressed.IsCompressed() || !EncryptedCompressed.IsCompressed() || Encrypted.IsCompressed() {
		t.Error("IsCompressed")
	}
}

func benchData(b *testing.B) map[string][]byte {
	return map[string][]byte{
		"zstd":  compressible(4 << 20),
		"plain": random(b, 4<<20),
	}
}

func BenchmarkDecodeBlob(b *testing.B) {
	for _, name := range []string{"zstd", "plain"} {
		data := benchData(b)[name]
		raw, err := EncodeBlob(data)
		if err != nil {
			b.Fatal(err)
		}
		if want := map[string]BlobKind{"zstd": Compressed, "plain": Uncompressed}[name]; blobKind(raw) != want {
			b.Fatalf("%s encoded as %v", name, blobKind(raw))
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			buf := make([]byte, 0, len(data)+64)
			for b.Loop() {
				if _, _, err := DecodeBlobAppend(buf[:0], raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkEncodeBlob(b *testing.B) {
	for _, name := range []string{"zstd", "plain"} {
		data := benchData(b)[name]
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := EncodeBlob(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
