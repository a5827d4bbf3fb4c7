package format

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"testing"
)

type scanned struct {
	d          [32]byte
	start, end uint64
}

// scanAll runs ScanIndex over b, in a reader that hands out odd pieces.
func scanAll(name string, b []byte, size int64) ([]scanned, IndexInfo, error) {
	var out []scanned
	info, err := ScanIndex(name, &oddReader{r: bytes.NewReader(b)}, size, func(i int, d [32]byte, s, e uint64) error {
		if i != len(out) {
			return errors.New("index out of order")
		}
		out = append(out, scanned{d, s, e})
		return nil
	})
	return out, info, err
}

// oddReader returns at most 1000 bytes per Read, so pieces straddle entries.
type oddReader struct{ r io.Reader }

func (o *oddReader) Read(p []byte) (int, error) { return o.r.Read(p[:min(len(p), 1000)]) }

// checkScan asserts ScanIndex agrees with ParseIndex on b.
func checkScan(t *testing.T, name string, b []byte) {
	t.Helper()
	idx, perr := ParseIndex(name, b)
	for _, size := range []int64{-1, int64(len(b))} {
		got, info, serr := scanAll(name, b, size)
		if (perr == nil) != (serr == nil) {
			t.Fatalf("%s (size %d): ParseIndex %v, ScanIndex %v", name, size, perr, serr)
		}
		if perr != nil {
			continue
		}
		if info.Count != idx.ChunkCount() || info.DataSize != idx.DataSize() || info.Checksum != idx.Checksum() {
			t.Fatalf("info %+v, index count %d size %d", info, idx.ChunkCount(), idx.DataSize())
		}
		for i, s := range got {
			st, en := idx.ChunkRange(i)
			if s.d != idx.ChunkDigest(i) || s.start != st || s.end != en {
				t.Fatalf("entry %d: %x %d-%d, index %x %d-%d", i, s.d, s.start, s.end, idx.ChunkDigest(i), st, en)
			}
		}
	}
}

func sampleIndexes(n int) [][]byte {
	fx := &FixedIndex{Size: uint64(n)*4096 - 100, ChunkSize: 4096}
	dx := &DynamicIndex{}
	for i := 0; i < n; i++ {
		d := sha256.Sum256([]byte{byte(i), byte(i >> 8), byte(i >> 16)})
		fx.Digests = append(fx.Digests, d)
		dx.Entries = append(dx.Entries, DynamicEntry{End: uint64(i+1) * 777, Digest: d})
	}
	return [][]byte{fx.Marshal(), dx.Marshal()}
}

// TestScanIndexMatchesParse: on good indexes (across piece boundaries),
// and on truncated, extended and damaged ones, ScanIndex agrees with
// ParseIndex.
func TestScanIndexMatchesParse(t *testing.T) {
	for _, n := range []int{0, 1, 3, 20000, scanPiece/32 + 1} {
		for k, b := range sampleIndexes(n) {
			name := []string{"x.fidx", "x.didx"}[k]
			checkScan(t, name, b)
			checkScan(t, "x.blob", b) // by magic
			checkScan(t, []string{"x.didx", "x.fidx"}[k], b)
			checkScan(t, name, b[:len(b)-1])
			checkScan(t, name, append(bytes.Clone(b), make([]byte, 40)...))
			if len(b) > IndexHeaderSize {
				bad := bytes.Clone(b)
				bad[len(bad)-3] ^= 1
				checkScan(t, name, bad)
			}
		}
	}
	checkScan(t, "x.fidx", nil)
	checkScan(t, "x.didx", make([]byte, 5000))
}

// TestScanIndexHugeHeaderFailsEarly: a fixed index whose header promises
// far more digests than the file holds fails on its size, unread.
func TestScanIndexHugeHeaderFailsEarly(t *testing.T) {
	b := sampleIndexes(2)[0]
	r := &countingReader{r: bytes.NewReader(b)}
	_, err := ScanIndex("x.fidx", r, 1<<40, func(int, [32]byte, uint64, uint64) error { return nil })
	if !errors.Is(err, ErrCorrupt) || r.n > IndexHeaderSize {
		t.Fatalf("err %v after reading %d bytes", err, r.n)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func FuzzScanIndex(f *testing.F) {
	for _, b := range sampleIndexes(3) {
		f.Add(b, uint8(0))
		f.Add(b, uint8(1))
	}
	f.Fuzz(func(t *testing.T, b []byte, which uint8) {
		name := []string{"a.fidx", "a.didx", "a.blob"}[which%3]
		checkScan(t, name, b)
		// With a correct checksum the fuzzer reaches the entry checks.
		if len(b) >= IndexHeaderSize {
			fixed := bytes.Clone(b)
			sum := sha256.Sum256(fixed[IndexHeaderSize:])
			copy(fixed[offCsum:], sum[:])
			checkScan(t, name, fixed)
		}
	})
}
