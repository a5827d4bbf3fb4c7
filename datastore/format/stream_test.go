package format

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

// streamBlob reads raw through a BlobStreamer as verify does and returns the
// data (nil for an encrypted blob), the kind and the error.
func streamBlob(t testing.TB, s *BlobStreamer, dec *StreamDecoder, r io.Reader, limit int64) ([]byte, BlobKind, error) {
	t.Helper()
	k, err := s.Open(r)
	if err != nil {
		return nil, k, err
	}
	var out bytes.Buffer
	switch {
	case k.IsEncrypted():
		_, err = s.Copy(io.Discard, MaxBlobSize)
		if err == nil {
			err = ErrEncrypted
		}
		return nil, k, err
	case k.IsCompressed():
		w, werr := s.FrameWindow()
		if werr != nil {
			return nil, k, werr
		}
		if w > dec.Window() {
			return nil, k, ErrWindowTooLarge
		}
		_, err = s.Decode(dec, &out, limit)
	default:
		_, err = s.Copy(&out, limit)
	}
	return out.Bytes(), k, err
}

func newTestDecoder(t testing.TB, window uint64) *StreamDecoder {
	t.Helper()
	d, err := NewStreamDecoder(window)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

func TestBlobStreamRoundTrip(t *testing.T) {
	s := NewBlobStreamer(4 << 10) // smaller than the blobs: many refills
	dec := newTestDecoder(t, 16<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, 100, 4 << 10, 1<<20 + 7, 4 << 20} {
		random := make([]byte, size)
		for i := range random {
			random[i] = byte(rng.Uint32())
		}
		for name, data := range map[string][]byte{"random": random, "compressible": compressible(size)} {
			enc, err := EncodeBlob(data)
			if err != nil {
				t.Fatal(err)
			}
			plain, _ := EncodeBlobUncompressed(data)
			for _, raw := range [][]byte{enc, plain} {
				readers := []io.Reader{bytes.NewReader(raw)}
				if size <= 1<<20 {
					// One byte per read: every header and buffer boundary.
					readers = append(readers, iotest.OneByteReader(bytes.NewReader(raw)))
				}
				for _, r := range readers {
					got, k, err := streamBlob(t, s, dec, r, int64(size)+1)
					if err != nil || !bytes.Equal(got, data) {
						t.Fatalf("%s %d bytes as %v: got %d bytes, %v", name, size, k, len(got), err)
					}
				}
			}
		}
	}
}

func TestBlobStreamLibzstd(t *testing.T) {
	s := NewBlobStreamer(64 << 10)
	dec := newTestDecoder(t, 1<<20)
	for _, frame := range []string{libzstdFCS, libzstdStream} {
		raw := handBlob(t, hexZstd, nil, unhex(t, frame))
		got, _, err := streamBlob(t, s, dec, bytes.NewReader(raw), 1<<20)
		if err != nil || !bytes.Equal(got, fixtureText()) {
			t.Fatalf("libzstd frame: %q, %v", got, err)
		}
	}
}

func TestBlobStreamDamage(t *testing.T) {
	s := NewBlobStreamer(64 << 10)
	dec := newTestDecoder(t, 4<<20)
	data := compressible(1 << 20)
	enc, _ := EncodeBlob(data)
	plain, _ := EncodeBlobUncompressed(data)
	flip := func(b []byte, i int) []byte {
		c := bytes.Clone(b)
		c[i] ^= 0x10
		return c
	}
	cases := []struct {
		name string
		raw  []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"short header", enc[:7], ErrTruncated},
		{"bad magic", flip(enc, 0), ErrBadMagic},
		{"flipped crc", flip(enc, 9), ErrBadCRC},
		{"flipped zstd byte", flip(enc, len(enc)/2), ErrBadCRC},
		{"flipped plain byte", flip(plain, len(plain)/2), ErrBadCRC},
		{"truncated zstd", enc[:len(enc)-10], ErrBadCRC},
		{"truncated plain", plain[:len(plain)-10], ErrBadCRC},
		{"trailing junk", append(bytes.Clone(enc), 1, 2, 3), ErrBadCRC},
		{"encrypted header cut", handBlob(t, hexEncrypted, make([]byte, 32), nil)[:20], ErrTruncated},
	}
	for _, tc := range cases {
		got, _, err := streamBlob(t, s, dec, bytes.NewReader(tc.raw), 2<<20)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %d bytes, %v; want %v", tc.name, len(got), err, tc.want)
		}
		if s.ReadError() != nil {
			t.Errorf("%s: ReadError %v for bad data", tc.name, s.ReadError())
		}
	}
	// A frame with a correct CRC but bad zstd data is corrupt, not a CRC error.
	junk := handBlob(t, hexZstd, nil, []byte{0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x05, 0xff, 0xff, 0xff})
	if _, _, err := streamBlob(t, s, dec, bytes.NewReader(junk), 1<<20); !errors.Is(err, ErrCorrupt) {
		t.Errorf("bad zstd with good crc: %v, want ErrCorrupt", err)
	}
	// Encrypted blobs: CRC checked, nothing decoded.
	ct := handBlob(t, hexEncrypted, make([]byte, 32), []byte("ciphertext"))
	if _, _, err := streamBlob(t, s, dec, bytes.NewReader(ct), 1<<20); !errors.Is(err, ErrEncrypted) {
		t.Errorf("encrypted: %v, want ErrEncrypted", err)
	}
	if _, _, err := streamBlob(t, s, dec, bytes.NewReader(flip(ct, len(ct)-1)), 1<<20); !errors.Is(err, ErrBadCRC) {
		t.Errorf("damaged encrypted: %v, want ErrBadCRC", err)
	}
}

func TestBlobStreamLimits(t *testing.T) {
	s := NewBlobStreamer(64 << 10)
	data := compressible(4 << 20)
	enc, _ := EncodeBlob(data)
	plain, _ := EncodeBlobUncompressed(data)
	dec := newTestDecoder(t, 8<<20)
	for _, raw := range [][]byte{enc, plain} {
		if _, _, err := streamBlob(t, s, dec, bytes.NewReader(raw), 1<<20); !errors.Is(err, ErrTooLarge) {
			t.Errorf("4 MiB with a 1 MiB limit: %v, want ErrTooLarge", err)
		}
	}
	// An RLE bomb stops at the limit, whatever it expands to.
	bomb := handBlob(t, hexZstd, nil, zstdRLEBomb(64<<20))
	if _, _, err := streamBlob(t, s, dec, bytes.NewReader(bomb), 1<<20); !errors.Is(err, ErrTooLarge) {
		t.Errorf("RLE bomb: %v, want ErrTooLarge", err)
	}
	// A decoder made for a smaller window refuses the frame rather than
	// growing: the caller sized it from FrameWindow.
	small := newTestDecoder(t, 1<<20)
	if _, err := s.Open(bytes.NewReader(enc)); err != nil {
		t.Fatal(err)
	}
	if w, err := s.FrameWindow(); err != nil || w <= small.Window() {
		t.Fatalf("FrameWindow = %d, %v; want > %d", w, err, small.Window())
	}
	if _, err := s.Decode(small, io.Discard, 8<<20); !errors.Is(err, ErrWindowTooLarge) {
		t.Errorf("decode with a small window: %v, want ErrWindowTooLarge", err)
	}
	if _, err := s.Open(bytes.NewReader(handBlob(t, hexZstd, nil, zstdFrameHugeFCS()))); err != nil {
		t.Fatal(err)
	}
	if w, err := s.FrameWindow(); err != nil || w != 1<<40 {
		t.Errorf("FrameWindow of a frame declaring 1 TiB = %d, %v", w, err)
	}
}

func TestBlobStreamReadError(t *testing.T) {
	s := NewBlobStreamer(4 << 10)
	dec := newTestDecoder(t, 4<<20)
	data := compressible(1 << 20)
	enc, _ := EncodeBlob(data)
	boom := errors.New("connection reset")
	for _, cut := range []int{5, 20, len(enc) / 2} {
		r := io.MultiReader(bytes.NewReader(enc[:cut]), iotest.ErrReader(boom))
		_, _, err := streamBlob(t, s, dec, r, 2<<20)
		if err == nil || !errors.Is(s.ReadError(), boom) || !errors.Is(err, boom) {
			t.Errorf("cut at %d: err %v, ReadError %v; want the read error", cut, err, s.ReadError())
		}
	}
	// The streamer is reusable after a failed read.
	if got, _, err := streamBlob(t, s, dec, bytes.NewReader(enc), 2<<20); err != nil || !bytes.Equal(got, data) || s.ReadError() != nil {
		t.Fatalf("after a read error: %v", err)
	}
}

// TestStreamDecodeMemory: decoding a 4 MiB chunk allocates about the
// decoder's declared memory, not the chunk twice over as whole-blob
// decoding does.
func TestStreamDecodeMemory(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector adds allocations")
	}
	data := compressible(4 << 20)
	enc, _ := EncodeBlob(data)
	s := NewBlobStreamer(256 << 10)
	h := sha256.New()
	var err error
	var w uint64
	n := allocated(func() {
		if _, err = s.Open(bytes.NewReader(enc)); err != nil {
			return
		}
		if w, err = s.FrameWindow(); err != nil {
			return
		}
		var dec *StreamDecoder
		if dec, err = NewStreamDecoder(w); err != nil {
			return
		}
		defer dec.Close()
		h.Reset()
		_, err = s.Decode(dec, h, 8<<20)
	})
	if err != nil {
		t.Fatal(err)
	}
	if budget := uint64(StreamDecoderMemory(StreamWindow(w))) + 256<<10; n > budget {
		t.Errorf("allocated %d bytes for a %d-byte window; budget %d", n, w, budget)
	}
	if sum := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), sum[:]) {
		t.Error("streamed SHA-256 differs")
	}
}

// FuzzBlobStream: streaming agrees with whole-blob decoding: data either
// way is the same, and a blob one accepts the other accepts.
func FuzzBlobStream(f *testing.F) {
	addBlobSeeds(f)
	s := NewBlobStreamer(1 << 10)
	dec := newTestDecoder(f, 4<<20)
	f.Fuzz(func(t *testing.T, raw []byte) {
		for _, raw := range [][]byte{raw, withFixedCRC(raw)} {
			want, werr := DecodeBlob(raw)
			got, _, err := streamBlob(t, s, dec, iotest.HalfReader(bytes.NewReader(raw)), 8<<20)
			switch {
			case errors.Is(err, ErrWindowTooLarge) || errors.Is(err, ErrTooLarge) || errors.Is(werr, ErrTooLarge):
				// Bounds differ by design: the stream's are the caller's.
			case werr == nil && err != nil:
				t.Fatalf("whole-blob decode accepts, stream says %v", err)
			case werr == nil && !bytes.Equal(got, want):
				t.Fatalf("stream gives %d bytes, whole-blob %d", len(got), len(want))
			case errors.Is(werr, ErrBadCRC) && !errors.Is(err, ErrBadCRC):
				t.Fatalf("whole-blob decode finds a bad CRC, stream says %v", err)
			}
			// Skip is InspectBlob for a stream.
			_, ierr := InspectBlob(raw)
			_, serr := s.Open(iotest.HalfReader(bytes.NewReader(raw)))
			if serr == nil {
				_, serr = s.Skip()
			}
			if (ierr == nil) != (serr == nil) {
				t.Fatalf("InspectBlob says %v, Open+Skip %v", ierr, serr)
			}
		}
	})
}
