package format

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"testing"
)

// withFixedCRC returns raw with a correct CRC for its magic, so the fuzzer
// reaches the payload decoders instead of stalling on the CRC.
func withFixedCRC(raw []byte) []byte {
	if len(raw) < 8 {
		return raw
	}
	k := blobKind(raw)
	if k == 0 || len(raw) < k.HeaderSize() {
		return raw
	}
	fixed := bytes.Clone(raw)
	binary.LittleEndian.PutUint32(fixed[8:], crc32.ChecksumIEEE(fixed[k.HeaderSize():]))
	return fixed
}

func checkBlob(t *testing.T, raw []byte) {
	out, err := DecodeBlob(raw)
	k, ierr := InspectBlob(raw)
	switch {
	case ierr != nil:
		if err == nil || err.Error() != ierr.Error() {
			t.Fatalf("InspectBlob: %v but DecodeBlob: %v", ierr, err)
		}
	case k.IsEncrypted():
		if !errors.Is(err, ErrEncrypted) {
			t.Fatalf("encrypted blob decoded: %v", err)
		}
	}
	app, ak, aerr := DecodeBlobAppend([]byte("pre"), raw)
	if (aerr == nil) != (err == nil) || string(app[:3]) != "pre" || err == nil && !bytes.Equal(app[3:], out) {
		t.Fatalf("DecodeBlobAppend disagrees: %v vs %v", aerr, err)
	}
	if err != nil {
		if string(app) != "pre" {
			t.Fatalf("dst changed on error: %q", app)
		}
		return
	}
	if ak != k || len(out) > MaxBlobSize {
		t.Fatalf("kind %v/%v, %d bytes", ak, k, len(out))
	}
	enc, err := EncodeBlob(out)
	if err != nil {
		t.Fatal(err)
	}
	again, err := DecodeBlob(enc)
	if err != nil || !bytes.Equal(again, out) {
		t.Fatalf("re-encoded blob: %v", err)
	}
}

// addBlobSeeds seeds a blob fuzz target: encoded blobs of every kind and
// hand-made zstd frames (libzstd's, RLE, bombs, huge declared sizes).
func addBlobSeeds(f *testing.F) {
	for _, data := range [][]byte{nil, []byte("x"), []byte("hello hello hello hello hello"), compressible(1 << 10)} {
		raw, _ := EncodeBlob(data)
		f.Add(raw)
		raw, _ = EncodeBlobUncompressed(data)
		f.Add(raw)
	}
	for _, frame := range [][]byte{zstdRawHello, zstdRLE, zstdFrameHugeFCS(), unhex(f, libzstdFCS),
		unhex(f, libzstdStream), zstdRLEBomb(1 << 20), {}, []byte("junk")} {
		f.Add(handBlob(f, hexZstd, nil, frame))
	}
	f.Add(handBlob(f, hexEncrypted, make([]byte, 32), []byte("ct")))
	f.Add(handBlob(f, hexEncZstd, make([]byte, 32), nil))
}

func FuzzDecodeBlob(f *testing.F) {
	addBlobSeeds(f)
	f.Add([]byte{})
	f.Add(unhex(f, hexPlain))
	f.Add(unhex(f, hexPlain+"ffffffff"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		checkBlob(t, raw)
		if fixed := withFixedCRC(raw); !bytes.Equal(fixed, raw) {
			checkBlob(t, fixed)
		}
	})
}

// zeroReserved clears the reserved header bytes, which Marshal writes as 0.
func zeroReserved(b []byte, from int) []byte {
	z := bytes.Clone(b)
	clear(z[from:IndexHeaderSize])
	return z
}

// fixIndexCsum rewrites index_csum so the fuzzer gets past it.
func fixIndexCsum(b []byte) []byte {
	if len(b) < IndexHeaderSize {
		return b
	}
	fixed := bytes.Clone(b)
	sum := sha256.Sum256(fixed[IndexHeaderSize:])
	copy(fixed[offCsum:], sum[:])
	return fixed
}

// Index fuzz inputs leave out the reserved part of the header: the
// fuzzer's minimiser is quadratic in the input length, and 4 KiB of
// ignored zeros would stall it. expandIndex puts the padding back.
const (
	fixedHeaderUsed   = offFixedChunkSize + 8
	dynamicHeaderUsed = offCsum + 32
)

func expandIndex(b []byte, used int) []byte {
	if len(b) < used {
		return b
	}
	out := make([]byte, IndexHeaderSize+len(b)-used)
	copy(out, b[:used])
	copy(out[IndexHeaderSize:], b[used:])
	return out
}

func compactIndex(b []byte, used int) []byte {
	return append(bytes.Clone(b[:used]), b[IndexHeaderSize:]...)
}

// indexInputs are the variants of a fuzz input to parse.
func indexInputs(b []byte, used int) [][]byte {
	full := expandIndex(b, used)
	return [][]byte{b, full, fixIndexCsum(full)}
}

func FuzzParseFixedIndex(f *testing.F) {
	for _, x := range []*FixedIndex{
		{ChunkSize: 4 << 20},
		{UUID: testUUID, CTime: 7, Size: 100, ChunkSize: 4 << 20, Digests: [][32]byte{digest(0)}},
		{Size: 9, ChunkSize: 4, Digests: [][32]byte{digest(0), digest(1), digest(2)}},
	} {
		f.Add(compactIndex(x.Marshal(), fixedHeaderUsed))
	}
	f.Add(compactIndex(handFixed(f, testUUID, 1, 1<<63, 1, [][32]byte{digest(0), digest(1)}), fixedHeaderUsed))
	f.Add(compactIndex(handFixed(f, testUUID, 1, 100, 0, nil), fixedHeaderUsed))
	f.Add(make([]byte, 100))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, in := range indexInputs(b, fixedHeaderUsed) {
			x, err := ParseFixedIndex(in)
			if err != nil {
				if x != nil {
					t.Fatal("index with error")
				}
				continue
			}
			if err := x.Validate(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(x.Marshal(), zeroReserved(in, fixedHeaderUsed)) {
				t.Fatal("Marshal differs from input")
			}
			if x.Checksum() != [32]byte(in[offCsum:]) {
				t.Fatal("Checksum differs from stored")
			}
			var next uint64
			for i := range x.ChunkCount() {
				s, e := x.ChunkRange(i)
				if s != next || e <= s || x.ChunkLen(i) != e-s || x.ChunkLen(i) > x.ChunkSize {
					t.Fatalf("chunk %d: %d-%d after %d", i, s, e, next)
				}
				next = e
			}
			if next != x.DataSize() {
				t.Fatalf("chunks end at %d, size %d", next, x.DataSize())
			}
		}
	})
}

func FuzzParseDynamicIndex(f *testing.F) {
	for _, x := range []*DynamicIndex{
		{},
		{UUID: testUUID, CTime: -1, Entries: []DynamicEntry{{End: 10, Digest: digest(0)}}},
		{Entries: []DynamicEntry{{End: 0}, {End: 1, Digest: digest(1)}, {End: 1 << 40, Digest: digest(2)}}},
	} {
		f.Add(compactIndex(x.Marshal(), dynamicHeaderUsed))
	}
	f.Add(compactIndex(handDynamic(f, testUUID, 1, []uint64{5, 4}, [][32]byte{digest(0), digest(1)}), dynamicHeaderUsed))
	f.Add(make([]byte, dynamicHeaderUsed+39))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, in := range indexInputs(b, dynamicHeaderUsed) {
			x, err := ParseDynamicIndex(in)
			if err != nil {
				if x != nil {
					t.Fatal("index with error")
				}
				continue
			}
			if !bytes.Equal(x.Marshal(), zeroReserved(in, dynamicHeaderUsed)) {
				t.Fatal("Marshal differs from input")
			}
			if x.Checksum() != [32]byte(in[offCsum:]) {
				t.Fatal("Checksum differs from stored")
			}
			var next uint64
			for i := range x.ChunkCount() {
				s, e := x.ChunkRange(i)
				if s != next || e < s || (i > 0 && e == s) || x.ChunkLen(i) != e-s {
					t.Fatalf("chunk %d: %d-%d after %d", i, s, e, next)
				}
				next = e
			}
			if next != x.DataSize() {
				t.Fatalf("chunks end at %d, size %d", next, x.DataSize())
			}
		}
	})
}

func checkManifest(t *testing.T, m *Manifest) {
	blob, err := m.Marshal()
	if err != nil {
		t.Fatalf("Marshal of a parsed manifest: %v", err)
	}
	m2, err := ParseManifest(blob)
	if err != nil {
		t.Fatalf("re-parse: %v", err)
	}
	if !reflect.DeepEqual(m, m2) {
		t.Fatalf("round trip differs:\n%#v\n%#v", m, m2)
	}
	js1, _ := m.JSON()
	js2, _ := m2.JSON()
	if !bytes.Equal(js1, js2) {
		t.Fatalf("JSON not stable:\n%s\n%s", js1, js2)
	}
	_ = m.VerifyState()
	_ = m.Notes()
}

func FuzzParseManifest(f *testing.F) {
	f.Add(handBlob(f, hexPlain, nil, []byte(pbsManifest)))
	m, _ := ParseManifestJSON([]byte(pbsManifest))
	blob, _ := m.Marshal()
	f.Add(blob)
	f.Add([]byte(pbsManifest))
	f.Add([]byte(`{"backup-type":"host","backup-id":"h","backup-time":1,"files":[],"unprotected":null,"x":{}}`))
	f.Add([]byte(`{"backup-type":"vm","backup-id":"1","backup-time":1,"files":[{"filename":"a/b","size":1,"csum":"` + csumA + `"}]}`))
	f.Add(handBlob(f, hexPlain, nil, []byte(`{"files":null}`)))
	f.Add([]byte(`{"backup-type":"vm","backup-id":"\u2028<&>","backup-time":-0,"files":[],"unprotected":{"a":"\ud800"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, in := range [][]byte{b, withFixedCRC(b)} {
			if m, err := ParseManifest(in); err == nil {
				checkManifest(t, m)
			} else if m != nil {
				t.Fatal("manifest with error")
			}
		}
		if m, err := ParseManifestJSON(b); err == nil {
			checkManifest(t, m)
		}
	})
}
