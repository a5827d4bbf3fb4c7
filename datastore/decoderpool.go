package datastore

import (
	"context"
	"sort"
	"sync"

	"golang.org/x/sync/semaphore"

	"github.com/pbsq/pbsq/datastore/format"
)

// maxChunkWindow is the largest zstd window a chunk may need: no chunk is
// larger than 16 MiB, and zstd never needs a window beyond the content.
const maxChunkWindow = dynMaxChunk

// decoderPool hands out streaming zstd decoders while keeping the memory
// all of them hold within a byte budget. A decoder's memory is its window,
// fixed at creation, so the budget admits many small-window decoders (for
// PBS's 512 KiB level-1 windows) or a few large ones (for 16 MiB chunks
// that declare their whole size as window).
type decoderPool struct {
	mem     *semaphore.Weighted
	mu      sync.Mutex
	idle    []*format.StreamDecoder // sorted by window, smallest first
	waiting int
}

func newDecoderPool(budget int64) *decoderPool {
	// Every request must fit, or Acquire would wait forever.
	budget = max(budget, format.StreamDecoderMemory(format.StreamWindow(maxChunkWindow)))
	return &decoderPool{mem: semaphore.NewWeighted(budget)}
}

// get returns a decoder for frames needing window bytes of history: an idle
// one that is large enough, or a new one once the budget allows it. Idle
// decoders too small to serve are closed to make room.
func (p *decoderPool) get(ctx context.Context, window uint64) (*format.StreamDecoder, error) {
	window = format.StreamWindow(window)
	cost := format.StreamDecoderMemory(window)
	p.mu.Lock()
	if i := sort.Search(len(p.idle), func(i int) bool { return p.idle[i].Window() >= window }); i < len(p.idle) {
		d := p.idle[i]
		p.idle = append(p.idle[:i], p.idle[i+1:]...)
		p.mu.Unlock()
		return d, nil
	}
	acquired := p.mem.TryAcquire(cost)
	for !acquired && len(p.idle) > 0 {
		p.drop(p.idle[0])
		p.idle = p.idle[1:]
		acquired = p.mem.TryAcquire(cost)
	}
	if !acquired {
		// Every byte is held by decoders in use; put gives them back to
		// the budget while someone waits.
		p.waiting++
		p.mu.Unlock()
		err := p.mem.Acquire(ctx, cost)
		p.mu.Lock()
		p.waiting--
		if err != nil {
			p.mu.Unlock()
			return nil, err
		}
	}
	p.mu.Unlock()
	d, err := format.NewStreamDecoder(window)
	if err != nil {
		p.mem.Release(cost)
		return nil, err
	}
	return d, nil
}

// put returns a decoder: kept for reuse, or closed when someone waits for
// its memory.
func (p *decoderPool) put(d *format.StreamDecoder) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.waiting > 0 {
		p.drop(d)
		return
	}
	i := sort.Search(len(p.idle), func(i int) bool { return p.idle[i].Window() >= d.Window() })
	p.idle = append(p.idle, nil)
	copy(p.idle[i+1:], p.idle[i:])
	p.idle[i] = d
}

func (p *decoderPool) drop(d *format.StreamDecoder) {
	d.Close()
	p.mem.Release(format.StreamDecoderMemory(d.Window()))
}

// close closes the idle decoders; all must have been put back.
func (p *decoderPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range p.idle {
		p.drop(d)
	}
	p.idle = nil
}
