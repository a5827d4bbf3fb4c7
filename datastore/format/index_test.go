package format

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"reflect"
	"testing"
)

func digest(i int) [32]byte { return sha256.Sum256([]byte{byte(i), byte(i >> 8), 'c'}) }

// handFixed lays out a .fidx by hand from the spec: magic @0, uuid @8,
// ctime @24, csum @32, size @64, chunk_size @72, digests from 4096.
func handFixed(t testing.TB, uuid [16]byte, ctime int64, size, chunkSize uint64, digests [][32]byte) []byte {
	t.Helper()
	b := make([]byte, 4096)
	copy(b[0:], unhex(t, "2f7f41ed91fd0fcd"))
	copy(b[8:], uuid[:])
	binary.LittleEndian.PutUint64(b[24:], uint64(ctime))
	h := sha256.New()
	for _, d := range digests {
		h.Write(d[:])
		b = append(b, d[:]...)
	}
	copy(b[32:64], h.Sum(nil))
	binary.LittleEndian.PutUint64(b[64:], size)
	binary.LittleEndian.PutUint64(b[72:], chunkSize)
	return b
}

// handDynamic lays out a .didx by hand: magic @0, uuid @8, ctime @24,
// csum @32 over the raw entries, entries (end u64 LE ‖ digest) from 4096.
func handDynamic(t testing.TB, uuid [16]byte, ctime int64, ends []uint64, digests [][32]byte) []byte {
	t.Helper()
	b := make([]byte, 4096)
	copy(b[0:], unhex(t, "1c914ea519bab3cd"))
	copy(b[8:], uuid[:])
	binary.LittleEndian.PutUint64(b[24:], uint64(ctime))
	for i, end := range ends {
		b = binary.LittleEndian.AppendUint64(b, end)
		b = append(b, digests[i][:]...)
	}
	sum := sha256.Sum256(b[4096:])
	copy(b[32:64], sum[:])
	return b
}

var testUUID = [16]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

func TestParseFixedIndexHandBuilt(t *testing.T) {
	const mib = 1 << 20
	digests := [][32]byte{digest(0), digest(1), digest(2)}
	raw := handFixed(t, testUUID, 1700000000, 10*mib, 4*mib, digests)
	x, err := ParseFixedIndex(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := &FixedIndex{UUID: testUUID, CTime: 1700000000, Size: 10 * mib, ChunkSize: 4 * mib, Digests: digests}
	if !reflect.DeepEqual(x, want) {
		t.Fatalf("parsed %+v\nwant %+v", x, want)
	}
	if got := x.Marshal(); !bytes.Equal(got, raw) {
		t.Fatal("Marshal differs from the hand-built file")
	}
	if x.Checksum() != [32]byte(raw[32:64]) {
		t.Fatal("Checksum differs from the stored index_csum")
	}
	wantRanges := [][2]uint64{{0, 4 * mib}, {4 * mib, 8 * mib}, {8 * mib, 10 * mib}}
	for i, r := range wantRanges {
		if s, e := x.ChunkRange(i); s != r[0] || e != r[1] {
			t.Errorf("ChunkRange(%d) = %d, %d; want %v", i, s, e, r)
		}
		if x.ChunkLen(i) != r[1]-r[0] || x.ChunkDigest(i) != digests[i] {
			t.Errorf("chunk %d: len %d digest %x", i, x.ChunkLen(i), x.ChunkDigest(i))
		}
	}
	if x.ChunkCount() != 3 || x.DataSize() != 10*mib {
		t.Errorf("count %d size %d", x.ChunkCount(), x.DataSize())
	}
	// Non-zero reserved bytes are tolerated, as PBS does.
	mod := bytes.Clone(raw)
	mod[100] = 0xff
	if _, err := ParseFixedIndex(mod); err != nil {
		t.Errorf("reserved byte set: %v", err)
	}
}

func TestFixedIndexEdgeShapes(t *testing.T) {
	// The SHA-256 of nothing, from FIPS 180 examples.
	emptySum := "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	for _, tc := range []struct {
		name            string
		size, chunkSize uint64
		n               int
		lastLen         uint64
	}{
		{"empty", 0, 4 << 20, 0, 0},
		{"one-short-chunk", 100, 4 << 20, 1, 100},
		{"exact", 8 << 20, 4 << 20, 2, 4 << 20},
		{"one-byte-over", 8<<20 + 1, 4 << 20, 3, 1},
		{"near-2^64", math.MaxUint64, 1 << 63, 2, 1<<63 - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			digests := make([][32]byte, tc.n)
			for i := range digests {
				digests[i] = digest(i)
			}
			raw := handFixed(t, testUUID, -5, tc.size, tc.chunkSize, digests)
			x, err := ParseFixedIndex(raw)
			if err != nil {
				t.Fatal(err)
			}
			if x.ChunkCount() != tc.n || len(x.Marshal()) != 4096+32*tc.n || !bytes.Equal(x.Marshal(), raw) {
				t.Fatalf("count %d", x.ChunkCount())
			}
			if x.Validate() != nil {
				t.Fatal(x.Validate())
			}
			if tc.n == 0 {
				if hex.EncodeToString(raw[32:64]) != emptySum || x.Checksum() != [32]byte(raw[32:64]) {
					t.Fatal("empty index checksum")
				}
				return
			}
			if l := x.ChunkLen(tc.n - 1); l != tc.lastLen {
				t.Fatalf("last chunk len %d, want %d", l, tc.lastLen)
			}
			if _, end := x.ChunkRange(tc.n - 1); end != tc.size {
				t.Fatalf("last chunk ends at %d", end)
			}
		})
	}
}

func TestParseFixedIndexErrors(t *testing.T) {
	good := handFixed(t, testUUID, 1, 100, 64, [][32]byte{digest(0), digest(1)})
	for n := range len(good) {
		_, err := ParseFixedIndex(good[:n])
		if n < 4096 && !errors.Is(err, ErrTruncated) || n >= 4096 && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("cut at %d: %v", n, err)
		}
	}
	check := func(name string, raw []byte, want error) {
		t.Helper()
		if x, err := ParseFixedIndex(raw); !errors.Is(err, want) || x != nil {
			t.Errorf("%s: %v; want %v", name, err, want)
		}
	}
	bad := bytes.Clone(good)
	bad[0] ^= 1
	check("magic", bad, ErrBadMagic)
	check("dynamic magic", handDynamic(t, testUUID, 1, nil, nil), ErrBadMagic)
	bad = bytes.Clone(good)
	bad[40] ^= 1
	check("csum", bad, ErrBadChecksum)
	bad = bytes.Clone(good)
	bad[len(bad)-1] ^= 1
	check("digest", bad, ErrBadChecksum)
	check("chunk size 0", handFixed(t, testUUID, 1, 100, 0, nil), ErrCorrupt)
	check("extra digest", handFixed(t, testUUID, 1, 100, 64, [][32]byte{digest(0), digest(1), digest(2)}), ErrCorrupt)
	check("missing digest", handFixed(t, testUUID, 1, 100, 64, [][32]byte{digest(0)}), ErrCorrupt)
	check("partial digest", append(bytes.Clone(good), 0), ErrCorrupt)
	// Absurd sizes with a few digests must fail fast without allocating.
	for _, tc := range []struct{ size, chunk uint64 }{
		{1 << 63, 1}, {math.MaxUint64, 1}, {math.MaxUint64, 2}, {1 << 62, 1 << 3}, {math.MaxUint64, math.MaxUint64 / 4},
	} {
		raw := handFixed(t, testUUID, 1, tc.size, tc.chunk, [][32]byte{digest(0), digest(1), digest(2)})
		var err error
		if n := allocated(func() { _, err = ParseFixedIndex(raw) }); n > 4096 {
			t.Errorf("size %d chunk %d: allocated %d bytes", tc.size, tc.chunk, n)
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("size %d chunk %d: %v", tc.size, tc.chunk, err)
		}
	}
}

func TestParseDynamicIndexHandBuilt(t *testing.T) {
	ends := []uint64{1000, 5000, 5001}
	digests := [][32]byte{digest(0), digest(1), digest(2)}
	raw := handDynamic(t, testUUID, 1600000000, ends, digests)
	x, err := ParseDynamicIndex(raw)
	if err != nil {
		t.Fatal(err)
	}
	want := &DynamicIndex{UUID: testUUID, CTime: 1600000000, Entries: []DynamicEntry{
		{1000, digests[0]}, {5000, digests[1]}, {5001, digests[2]},
	}}
	if !reflect.DeepEqual(x, want) {
		t.Fatalf("parsed %+v", x)
	}
	if !bytes.Equal(x.Marshal(), raw) || x.Checksum() != [32]byte(raw[32:64]) {
		t.Fatal("Marshal/Checksum differ from the hand-built file")
	}
	for i, r := range [][2]uint64{{0, 1000}, {1000, 5000}, {5000, 5001}} {
		if s, e := x.ChunkRange(i); s != r[0] || e != r[1] || x.ChunkLen(i) != r[1]-r[0] {
			t.Errorf("chunk %d: %d-%d", i, s, e)
		}
	}
	if x.DataSize() != 5001 || x.ChunkCount() != 3 || x.ChunkDigest(1) != digests[1] {
		t.Error("accessors")
	}

	empty := handDynamic(t, testUUID, 0, nil, nil)
	e, err := ParseDynamicIndex(empty)
	if err != nil || e.DataSize() != 0 || e.ChunkCount() != 0 || !bytes.Equal(e.Marshal(), empty) {
		t.Fatalf("empty: %+v, %v", e, err)
	}
}

func TestParseDynamicIndexErrors(t *testing.T) {
	d3 := [][32]byte{digest(0), digest(1), digest(2)}
	good := handDynamic(t, testUUID, 1, []uint64{10, 20, 30}, d3)
	for n := range len(good) {
		_, err := ParseDynamicIndex(good[:n])
		if n < 4096 && !errors.Is(err, ErrTruncated) ||
			n >= 4096 && n%40 != 4096%40 && !errors.Is(err, ErrCorrupt) ||
			n >= 4096 && n%40 == 4096%40 && !errors.Is(err, ErrBadChecksum) {
			t.Fatalf("cut at %d: %v", n, err)
		}
	}
	check := func(name string, raw []byte, want error) {
		t.Helper()
		if x, err := ParseDynamicIndex(raw); !errors.Is(err, want) || x != nil {
			t.Errorf("%s: %v; want %v", name, err, want)
		}
	}
	bad := bytes.Clone(good)
	bad[7] ^= 1
	check("magic", bad, ErrBadMagic)
	check("fixed magic", handFixed(t, testUUID, 1, 0, 1, nil), ErrBadMagic)
	bad = bytes.Clone(good)
	bad[4096] ^= 1 // first end offset; checksum now stale
	check("csum", bad, ErrBadChecksum)
	// Non-monotonic ends with a valid checksum.
	check("decreasing", handDynamic(t, testUUID, 1, []uint64{10, 30, 20}, d3), ErrCorrupt)
	check("repeated", handDynamic(t, testUUID, 1, []uint64{10, 10, 20}, d3), ErrCorrupt)
	check("wrapped", handDynamic(t, testUUID, 1, []uint64{math.MaxUint64, 0, 1}, d3), ErrCorrupt)
	check("partial entry", append(bytes.Clone(good), make([]byte, 39)...), ErrCorrupt)
}

func TestParseIndex(t *testing.T) {
	fidx := handFixed(t, testUUID, 1, 1, 1, [][32]byte{digest(0)})
	didx := handDynamic(t, testUUID, 1, []uint64{7}, [][32]byte{digest(0)})
	for _, tc := range []struct {
		name string
		b    []byte
		want any
		err  error
	}{
		{"drive-scsi0.img.fidx", fidx, &FixedIndex{}, nil},
		{"root.pxar.didx", didx, &DynamicIndex{}, nil},
		{"noext", fidx, &FixedIndex{}, nil},
		{"noext", didx, &DynamicIndex{}, nil},
		{"root.pxar.didx", fidx, nil, ErrBadMagic},
		{"disk.img.fidx", didx, nil, ErrBadMagic},
		{"noext", make([]byte, 4096), nil, ErrBadMagic},
		{"noext", []byte{1, 2}, nil, ErrTruncated},
	} {
		x, err := ParseIndex(tc.name, tc.b)
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: %v; want %v", tc.name, err, tc.err)
			continue
		}
		if tc.err == nil {
			if reflect.TypeOf(x) != reflect.TypeOf(tc.want) || x.ChunkCount() != 1 || x.ChunkDigest(0) != digest(0) {
				t.Errorf("%s: got %T", tc.name, x)
			}
			if !bytes.Equal(x.Marshal(), tc.b) {
				t.Errorf("%s: Marshal differs", tc.name)
			}
		}
	}
}

func TestIndexValidate(t *testing.T) {
	if err := (&FixedIndex{Size: 10, ChunkSize: 4, Digests: make([][32]byte, 2)}).Validate(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("fixed: %v", err)
	}
	if err := (&FixedIndex{Size: 10}).Validate(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("fixed chunk 0: %v", err)
	}
	if err := (&DynamicIndex{Entries: []DynamicEntry{{End: 5}, {End: 5}}}).Validate(); !errors.Is(err, ErrCorrupt) {
		t.Errorf("dynamic: %v", err)
	}
}
