package format

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Streaming blob reads for hot paths over many large blobs (verify): the
// payload flows through the CRC, the zstd decoder and the caller's writer
// in pieces, so memory is one read buffer plus the decoder's window instead
// of two whole-blob buffers.

// ErrWindowTooLarge: a zstd frame needs a larger history window than the
// decoder given was made for. The caller may retry with a larger decoder.
var ErrWindowTooLarge = errors.New("zstd window larger than the decoder's")

const (
	// minStreamWindow rounds small windows up so decoders are reusable
	// across chunks of similar size.
	minStreamWindow = 512 << 10
	// zstdBlockSpace is the room klauspost's streaming ring keeps for one
	// block beyond the window (a block plus its fast-copy overrun).
	zstdBlockSpace = zstdMaxBlockSize + 64
)

// StreamWindow rounds a frame's window up to the size class a StreamDecoder
// is made for: a power of two, at least 512 KiB.
func StreamWindow(window uint64) uint64 {
	w := uint64(minStreamWindow)
	for w < window {
		w <<= 1
	}
	return w
}

// StreamDecoderMemory is what a StreamDecoder for window holds while it
// lives: klauspost's ring of the window plus two blocks, and the block
// decoder's buffers.
func StreamDecoderMemory(window uint64) int64 {
	return int64(window) + 3*zstdBlockSpace
}

// StreamDecoder is a single-goroutine streaming zstd decoder whose history
// is bounded by a window fixed at creation. Not safe for concurrent use.
type StreamDecoder struct {
	d      *zstd.Decoder
	window uint64
}

// NewStreamDecoder makes a decoder for frames needing at most window bytes
// of history (rounded by StreamWindow).
func NewStreamDecoder(window uint64) (*StreamDecoder, error) {
	window = StreamWindow(window)
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1), // synchronous: no goroutines, no read-ahead buffers
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(window),
		zstd.WithDecoderMaxMemory(MaxBlobSize),
	)
	if err != nil {
		return nil, fmt.Errorf("zstd decoder for a %d-byte window: %w", window, err)
	}
	return &StreamDecoder{d: d, window: window}, nil
}

// Window is the largest history window the decoder accepts.
func (d *StreamDecoder) Window() uint64 { return d.window }

// Close releases the decoder.
func (d *StreamDecoder) Close() { d.d.Close() }

// BlobStreamer reads blobs from readers with one reusable buffer. Open
// reads and checks the header; then exactly one of Copy or Decode consumes
// the payload, checking the CRC once the end is reached. Not safe for
// concurrent use.
type BlobStreamer struct {
	src  sourceReader
	crc  crcReader
	br   *bufio.Reader
	kind BlobKind
	want uint32
}

// NewBlobStreamer makes a streamer reading in pieces of bufSize bytes.
func NewBlobStreamer(bufSize int) *BlobStreamer {
	s := &BlobStreamer{}
	s.crc.r = &s.src
	s.br = bufio.NewReaderSize(&s.crc, bufSize)
	return s
}

// sourceReader remembers the first error of the underlying reader other
// than EOF, so that a failed read is not mistaken for corrupt data.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// crcReader hashes everything read through it.
type crcReader struct {
	r   io.Reader
	sum uint32
	n   int64
}

func (c *crcReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.sum = crc32.Update(c.sum, crc32.IEEETable, p[:n])
	c.n += int64(n)
	return n, err
}

// ReadError is the error the source reader returned, if any: a failed read
// rather than bad data.
func (s *BlobStreamer) ReadError() error { return s.src.err }

// Open starts reading a blob from r: it reads the header, checks the magic
// and returns the kind. The CRC is checked by Copy or Decode at the end.
func (s *BlobStreamer) Open(r io.Reader) (BlobKind, error) {
	s.src = sourceReader{r: r}
	s.crc.sum, s.crc.n = 0, 0
	s.br.Reset(&s.crc)
	s.kind = 0
	var hdr [encryptedBlobHeaderSize]byte
	n, err := io.ReadFull(s.br, hdr[:blobHeaderSize])
	if err != nil {
		return 0, s.fail(fmt.Errorf("blob of %d bytes: %w", n, ErrTruncated))
	}
	k := blobKind(hdr[:])
	if k == 0 {
		return 0, s.fail(errBlobMagic())
	}
	if rest := k.HeaderSize() - blobHeaderSize; rest > 0 {
		if m, err := io.ReadFull(s.br, hdr[blobHeaderSize:k.HeaderSize()]); err != nil {
			return k, s.fail(fmt.Errorf("%v blob of %d bytes: %w", k, blobHeaderSize+m, ErrTruncated))
		}
	}
	s.kind = k
	s.want = binary.LittleEndian.Uint32(hdr[8:12])
	// The CRC covers what follows the (kind-dependent) header.
	s.crc.sum = crc32.ChecksumIEEE(s.pending())
	return k, nil
}

// pending is what the buffer holds beyond the header, already counted by
// crcReader: Open restarts the CRC over it.
func (s *BlobStreamer) pending() []byte {
	b, _ := s.br.Peek(s.br.Buffered())
	return b
}

// fail prefers the source's read error over what it caused.
func (s *BlobStreamer) fail(err error) error {
	if s.src.err != nil {
		return fmt.Errorf("read: %w", s.src.err)
	}
	return err
}

// FrameWindow peeks at the zstd frame header of a compressed blob and
// returns the history window its decoder needs.
func (s *BlobStreamer) FrameWindow() (uint64, error) {
	head, err := s.br.Peek(zstd.HeaderMaxSize)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return 0, s.fail(err)
	}
	var h zstd.Header
	if err := h.Decode(head); err != nil {
		// A damaged blob is told by its CRC first, as the other paths do.
		if _, derr := io.Copy(io.Discard, s.br); derr == nil {
			if cerr := s.checkCRC(); cerr != nil {
				return 0, cerr
			}
		}
		return 0, s.fail(fmt.Errorf("zstd frame header: %w: %w", ErrCorrupt, err))
	}
	w := h.WindowSize
	if h.SingleSegment || w == 0 {
		w = h.FrameContentSize
	}
	return max(w, zstd.MinWindowSize), nil
}

// Copy writes the payload of an uncompressed blob (or, for an encrypted
// one, its ciphertext) to w and checks the CRC. At most limit bytes are
// accepted; more is ErrTooLarge.
func (s *BlobStreamer) Copy(w io.Writer, limit int64) (int64, error) {
	if s.kind == 0 || s.kind == Compressed {
		return 0, fmt.Errorf("copy of a %v blob: %w", s.kind, ErrCorrupt)
	}
	n, err := io.Copy(&limitWriter{w: w, left: limit}, s.br)
	if errors.Is(err, errLimit) {
		return n, s.fail(fmt.Errorf("blob data over %d bytes: %w", limit, ErrTooLarge))
	}
	if err != nil {
		return n, s.fail(err)
	}
	return n, s.checkCRC()
}

// Skip reads the rest of a blob of any kind without decoding it and
// checks the CRC: InspectBlob for a stream.
func (s *BlobStreamer) Skip() (int64, error) {
	if s.kind == 0 {
		return 0, fmt.Errorf("skip of an unopened blob: %w", ErrCorrupt)
	}
	n, err := io.Copy(io.Discard, s.br)
	if err != nil {
		return n, s.fail(err)
	}
	return n, s.checkCRC()
}

// Decode decompresses a compressed blob's payload into w with dec and
// checks the CRC. At most limit bytes are accepted; more is ErrTooLarge.
// A frame needing a larger window than dec's is ErrWindowTooLarge.
func (s *BlobStreamer) Decode(dec *StreamDecoder, w io.Writer, limit int64) (int64, error) {
	if s.kind != Compressed {
		return 0, fmt.Errorf("decode of a %v blob: %w", s.kind, ErrCorrupt)
	}
	if err := dec.d.Reset(s.br); err != nil {
		return 0, fmt.Errorf("zstd: %w", err)
	}
	n, err := dec.d.WriteTo(&limitWriter{w: w, left: limit})
	// Whatever the decoder left unread (after an error) still counts.
	if _, derr := io.Copy(io.Discard, s.br); err == nil && derr != nil {
		err = derr
	}
	_ = dec.d.Reset(nil)
	switch {
	case s.src.err != nil:
		return n, fmt.Errorf("read: %w", s.src.err)
	case errors.Is(err, errLimit):
		return n, fmt.Errorf("blob data over %d bytes: %w", limit, ErrTooLarge)
	case errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded):
		// The streaming decoder reports a too-large window either way.
		// The CRC decides between a damaged header and a real frame.
		if cerr := s.checkCRC(); cerr != nil {
			return n, cerr
		}
		return n, fmt.Errorf("zstd frame over a %d-byte window: %w", dec.window, ErrWindowTooLarge)
	case err != nil:
		if cerr := s.checkCRC(); cerr != nil {
			return n, cerr
		}
		return n, fmt.Errorf("zstd: %w: %w", ErrCorrupt, err)
	}
	return n, s.checkCRC()
}

func (s *BlobStreamer) checkCRC() error {
	if s.crc.sum != s.want {
		return fmt.Errorf("%v blob: crc %08x, header says %08x: %w", s.kind, s.crc.sum, s.want, ErrBadCRC)
	}
	return nil
}

var errLimit = errors.New("write limit reached")

// limitWriter refuses to write past left bytes.
type limitWriter struct {
	w    io.Writer
	left int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.left {
		return 0, errLimit
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	return n, err
}
