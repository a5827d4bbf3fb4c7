package datastore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/pbsq/pbsq/datastore/backend"
	"github.com/pbsq/pbsq/datastore/backend/local"
	"github.com/pbsq/pbsq/datastore/format"
	"github.com/pbsq/pbsq/datastore/name"
)

// TestDecoderPoolBudget: however windows mix, the decoders handed out and
// kept idle never hold more than the budget, and nobody waits forever.
func TestDecoderPoolBudget(t *testing.T) {
	const budget = 24 << 20
	p := newDecoderPool(budget)
	defer p.close()
	var held atomic.Int64 // memory of decoders in use
	idle := func() int64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		var n int64
		for _, d := range p.idle {
			n += format.StreamDecoderMemory(d.Window())
		}
		return n
	}
	windows := []uint64{100 << 10, 512 << 10, 1 << 20, 4 << 20, 16 << 20}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var over atomic.Int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for i := 0; i < 200; i++ {
				w := windows[rng.IntN(len(windows))]
				d, err := p.get(ctx, w)
				if err != nil {
					t.Errorf("get(%d): %v", w, err)
					return
				}
				if d.Window() < w {
					t.Errorf("get(%d) gave a %d-byte decoder", w, d.Window())
				}
				cost := format.StreamDecoderMemory(d.Window())
				if now := held.Add(cost); now > budget {
					over.Store(now)
				}
				time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
				held.Add(-cost)
				p.put(d)
			}
		}()
	}
	wg.Wait()
	if n := over.Load(); n > 0 {
		t.Errorf("decoders in use held %d bytes, budget %d", n, budget)
	}
	if n := idle(); n > budget {
		t.Errorf("idle decoders hold %d bytes, budget %d", n, budget)
	}
	// Everything is back: the whole budget can be taken at once again.
	p.close()
	if !p.mem.TryAcquire(budget) {
		t.Error("budget not fully released after close")
	}
}

// zstdFrames encodes each part as its own zstd frame, as a writer that
// flushes frames would.
func zstdFrames(t *testing.T, parts ...[]byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	var out []byte
	for _, p := range parts {
		out = enc.EncodeAll(p, out)
	}
	return out
}

// putRawChunk stores a hand-made compressed chunk of data, bypassing the
// store's encoder.
func putRawChunk(t *testing.T, s *Store, data, payload []byte) chunkRef {
	t.Helper()
	raw := []byte{0x31, 0xb9, 0x58, 0x42, 0x6f, 0xb6, 0xa3, 0x7f} // compressed blob magic
	raw = binary.LittleEndian.AppendUint32(raw, crc32.ChecksumIEEE(payload))
	raw = append(raw, payload...)
	d := Digest(sha256.Sum256(data))
	if _, err := s.b.CreateFile(context.Background(), ChunkPath(d), raw); err != nil {
		t.Fatal(err)
	}
	return chunkRef{digest: d, size: uint64(len(data))}
}

// TestVerifyChunkWindows: a chunk of several zstd frames whose later frame
// needs a larger window than the first verifies (the check is redone with
// a large decoder); a frame declaring more than any chunk needs is corrupt.
func TestVerifyChunkWindows(t *testing.T) {
	s := TestStore(t, TestFlock(-1))
	v := &verifier{s: s, decoders: newDecoderPool(verifyDecodeBudget)}
	defer v.decoders.close()
	c := v.checker()
	data := bytes.Repeat([]byte("pbsq streams chunks through zstd; "), 100_000) // 3.3 MiB
	r := putRawChunk(t, s, data, zstdFrames(t, data[:64<<10], data[64<<10:]))
	if st, _, err := v.checkChunk(context.Background(), r, c); st != chunkOK {
		t.Errorf("two frames, growing window: %v %v", st, err)
	}
	// A frame declaring a 32 MiB window (descriptor 0x78) for five bytes.
	frame := append([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x78, 5<<3 | 1, 0, 0}, "hello"...)
	r = putRawChunk(t, s, []byte("hello"), frame)
	if st, _, err := v.checkChunk(context.Background(), r, c); st != chunkCorrupt || err == nil || !strings.Contains(err.Error(), "33554432-byte window") {
		t.Errorf("32 MiB window: %v %v, want corrupt naming the window", st, err)
	}
}

// flakyReads fails reads of chunk files midway, as a cut S3 body does, for
// the first `fails` opens.
type flakyReads struct {
	backend.Backend
	fails atomic.Int32
}

var errCut = errors.New("connection reset by peer")

func (f *flakyReads) Open(ctx context.Context, name string) (io.ReadCloser, error) {
	rc, err := backend.Open(ctx, f.Backend, name)
	// Only chunk reads are cut: index files are streamed through Open too,
	// and an unreadable index is the snapshot's failure, not the task's.
	if err != nil || !strings.HasPrefix(name, ".chunks/") || f.fails.Add(-1) < 0 {
		return rc, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, 1000), iotestErr{errCut}), rc}, nil
}

type iotestErr struct{ err error }

func (e iotestErr) Read([]byte) (int, error) { return 0, e.err }

// TestVerifyReadErrors: a read cut off midway is retried; one that keeps
// failing fails the task and never blames (renames) the chunk.
func TestVerifyReadErrors(t *testing.T) {
	dir := NewTestEnv(t).Dir
	b, err := local.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	flaky := &flakyReads{Backend: b}
	s, err := Open("flaky", flaky, Options{})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 64<<10)
	r := putRawChunk(t, s, data, zstdFrames(t, data))
	check := func() (chunkState, error) {
		v := &verifier{s: s, decoders: newDecoderPool(verifyDecodeBudget)}
		defer v.decoders.close()
		st, _, err := v.checkChunk(context.Background(), r, v.checker())
		return st, err
	}
	flaky.fails.Store(verifyReadAttempts - 1)
	if st, err := check(); st != chunkOK {
		t.Errorf("after %d cut reads: %v %v, want ok", verifyReadAttempts-1, st, err)
	}
	flaky.fails.Store(verifyReadAttempts)
	st, err := check()
	if st != 0 || !errors.Is(err, errCut) || !strings.Contains(err.Error(), r.digest.String()) {
		t.Errorf("reads always cut: %v %v, want a read error wrapping the cause and naming the chunk", st, err)
	}
	if _, err := b.Stat(context.Background(), ChunkPath(r.digest)); err != nil {
		t.Errorf("chunk moved after read errors: %v", err)
	}

	// The whole operation fails with the cause itself, not its text.
	TestBackup(t, s, "a", "vm/1", time.Unix(1700000000, 0), TestFile(t, "disk", 64<<10, 0))
	flaky.fails.Store(1 << 30)
	res, err := s.Verify(context.Background(), VerifyRequest{Scope: Scope{NS: name.Root, MaxDepth: -1}}, nil)
	if !errors.Is(err, errCut) {
		t.Errorf("verify with failing reads: %v, want an error wrapping %q", err, errCut)
	}
	if res != nil && (res.ChunksCorrupt != 0 || len(res.RenamedBad) != 0) {
		t.Errorf("read errors blamed on chunks: %+v", res)
	}
}
