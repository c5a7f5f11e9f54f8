package snapshot

import (
	"context"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// BlobSource is where a layer's bytes come from: a local file, a
// partially fetched file, or range requests against a registry. ReadAt
// follows io.ReaderAt; Size is the blob's total length.
type BlobSource interface {
	io.ReaderAt
	Size() int64
}

// Invalidator is implemented by blob sources that cache bytes fetched
// from elsewhere: a chunk failing its checksum is invalidated and read
// once more.
type Invalidator interface {
	Invalidate(off, n int64)
}

// ContextReaderAt is implemented by blob sources whose reads may wait on
// the network (repo.LazyBlob): a read made with a context ends when the
// context does.
type ContextReaderAt interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// SpanHinter is implemented by blob sources whose reads may wait on the
// network (repo.LazyBlob): before a read of several chunks loads the
// first one, the layer tells it the stored span [off, end) that its
// chunk reads will cover, in order, so that the source fetches the span
// at once rather than chunk by chunk, one round trip each. A hint is
// advice: it returns at once, and the reads that follow still say what
// they need.
type SpanHinter interface {
	WillRead(ctx context.Context, off, end int64)
}

// Layer is an opened sealed layer. It is safe for concurrent use.
type Layer struct {
	src     BlobSource
	t       Trailer
	exts    []Extent
	chunks  []chunkRec
	id      uint64 // cache key namespace
	label   string // what errors call the layer (see Labeled)
	storedP sync.Pool
}

var layerIDs atomic.Uint64

var zdec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderLowmem(false),
	zstd.WithDecoderMaxMemory(MaxChunkSize*2))

// Open reads a layer's trailer and index from the end of src and
// validates them. Malformed bytes give an error wrapping ErrFormat or
// ErrChecksum. The index is read in pieces of at most 1 MiB, and what
// Open allocates is bounded by the valid records src delivered, not by
// what the trailer or src.Size() claim (a lazy layer's size is a
// registry's word).
func Open(src BlobSource) (*Layer, error) {
	size := src.Size()
	if size < HeaderSize+TrailerSize {
		return nil, formatErr("blob of %d bytes is too short", size)
	}
	tb := make([]byte, TrailerSize)
	if _, err := src.ReadAt(tb, size-TrailerSize); err != nil {
		return nil, fmt.Errorf("read trailer: %w", err)
	}
	t, err := parseTrailer(tb, size)
	if err != nil {
		return nil, err
	}
	exts, chunks, err := readIndex(src, t)
	if err != nil {
		return nil, err
	}
	l := &Layer{src: src, t: *t, exts: exts, chunks: chunks, id: layerIDs.Add(1)}
	if lb, ok := src.(Labeled); ok {
		l.label = lb.Label()
	}
	cs := int(t.ChunkSize)
	l.storedP.New = func() any { b := make([]byte, cs); return &b }
	return l, nil
}

// Label is what the layer's source calls its blob (see Labeled), or "".
func (l *Layer) Label() string { return l.label }

// Trailer returns the layer's trailer.
func (l *Layer) Trailer() Trailer { return l.t }

// Extents returns the layer's extents in block order. Callers must not
// modify the slice.
func (l *Layer) Extents() []Extent { return l.exts }

// Chunks is the number of chunks in the data stream.
func (l *Layer) Chunks() int { return len(l.chunks) }

// ChunkSpan returns the stored byte range of chunk i in the blob, for a
// blob source that fetches on demand.
func (l *Layer) ChunkSpan(i int) (off int64, n int) {
	c := l.chunks[i]
	return int64(c.Off), int(c.Len)
}

// Source returns the layer's blob source.
func (l *Layer) Source() BlobSource { return l.src }

// ReadData copies len(p) bytes of the data stream from byte offset off
// into p, verifying and decompressing the chunks it touches. A non-nil
// cache keeps decompressed chunks for later reads.
func (l *Layer) ReadData(p []byte, off uint64, cache *Cache) error {
	return l.ReadDataContext(context.Background(), p, off, cache)
}

// ReadDataContext is ReadData whose reads from a ContextReaderAt source
// end when ctx does.
func (l *Layer) ReadDataContext(ctx context.Context, p []byte, off uint64, cache *Cache) error {
	if off > l.t.DataBytes || uint64(len(p)) > l.t.DataBytes-off {
		return fmt.Errorf("%w: read [%d,+%d) beyond %d data bytes", ErrFormat, off, len(p), l.t.DataBytes)
	}
	cs := uint64(l.t.ChunkSize)
	hinted := false
	for len(p) > 0 {
		ci := int(off / cs)
		in := int(off % cs)
		if cache != nil {
			hit, wait := cache.copyOut(l.id, ci, in, &p, &off)
			if hit {
				continue
			}
			if wait != nil {
				// Another read is loading this chunk: take it from the
				// cache when that ends (or load it, if that failed).
				select {
				case <-wait:
					continue
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		if !hinted {
			hinted = true
			l.hint(ctx, ci, int((off+uint64(len(p))-1)/cs))
		}
		buf := cache.getBuf(int(cs))
		raw, err := l.loadChunk(ctx, ci, buf)
		if err != nil {
			cache.putBuf(buf)
			if cache != nil {
				cache.abandon(l.id, ci)
			}
			return err
		}
		cache.loaded(len(raw))
		n := copy(p, raw[in:])
		p = p[n:]
		off += uint64(n)
		if cache != nil {
			cache.insert(l.id, ci, raw)
		} else {
			cache.putBuf(buf)
		}
	}
	return nil
}

// hint tells a SpanHinter source the stored span of chunks first..last
// (a read about to load them in order), when that is more than one chunk
// and the chunks lie together.
func (l *Layer) hint(ctx context.Context, first, last int) {
	h, ok := l.src.(SpanHinter)
	if !ok || last <= first {
		return
	}
	lo, hi, sum := uint64(math.MaxUint64), uint64(0), uint64(0)
	for _, c := range l.chunks[first : last+1] {
		lo, hi, sum = min(lo, c.Off), max(hi, c.Off+uint64(c.Len)), sum+uint64(c.Len)
	}
	if hi-lo > 2*sum { // scattered chunks: each read fetches its own
		return
	}
	h.WillRead(ctx, int64(lo), int64(hi))
}

// loadChunk reads, verifies and decompresses chunk i into dst (capacity
// at least the chunk size), returning the raw bytes.
func (l *Layer) loadChunk(ctx context.Context, i int, dst []byte) ([]byte, error) {
	c := l.chunks[i]
	raw := int(rawLen(&l.t, i))
	sp := l.storedP.Get().(*[]byte)
	defer l.storedP.Put(sp)
	stored := (*sp)[:c.Len]
	if err := l.readStored(ctx, stored, int64(c.Off)); err != nil {
		return nil, fmt.Errorf("read chunk %d: %w", i, err)
	}
	if got := crc(stored); got != c.CRC {
		// A source that caches remote bytes may have kept bad ones: make
		// it fetch them again, once.
		inv, ok := l.src.(Invalidator)
		if !ok {
			return nil, fmt.Errorf("%w: chunk %d at offset %d: crc %08x, want %08x", ErrChecksum, i, c.Off, got, c.CRC)
		}
		inv.Invalidate(int64(c.Off), int64(c.Len))
		if err := l.readStored(ctx, stored, int64(c.Off)); err != nil {
			return nil, fmt.Errorf("read chunk %d: %w", i, err)
		}
		if got := crc(stored); got != c.CRC {
			inv.Invalidate(int64(c.Off), int64(c.Len))
			return nil, fmt.Errorf("%w: chunk %d at offset %d: crc %08x, want %08x (fetched twice)", ErrChecksum, i, c.Off, got, c.CRC)
		}
	}
	dst = dst[:raw]
	if int(c.Len) == raw {
		copy(dst, stored)
		return dst, nil
	}
	var out []byte
	var err error
	switch l.t.Codec {
	case CodecZstd:
		out, err = zdec.DecodeAll(stored, dst[:0])
	case CodecS2:
		var n int
		n, err = s2.DecodedLen(stored)
		if err == nil && n != raw {
			err = fmt.Errorf("decoded length %d, want %d", n, raw)
		}
		if err == nil {
			out, err = s2.Decode(dst, stored)
		}
	default:
		err = fmt.Errorf("stored length %d < raw %d with codec none", c.Len, raw)
	}
	if err == nil && len(out) != raw {
		err = fmt.Errorf("decoded %d bytes, want %d", len(out), raw)
	}
	if err == nil && &out[0] != &dst[0] {
		err = fmt.Errorf("decoder overran the chunk buffer")
	}
	if err != nil {
		return nil, fmt.Errorf("%w: chunk %d: %v", ErrFormat, i, err)
	}
	return out, nil
}

// readStored reads stored chunk bytes, with ctx when the source takes one.
func (l *Layer) readStored(ctx context.Context, p []byte, off int64) error {
	var err error
	if cs, ok := l.src.(ContextReaderAt); ok {
		_, err = cs.ReadAtContext(ctx, p, off)
	} else {
		_, err = l.src.ReadAt(p, off)
	}
	return err
}

// Verify checks every checksum the format defines (docs/format.md): the
// header's crc32c and that it agrees with the trailer (Open checked the
// trailer's and the index's), then re-reads every chunk and checks its
// crc32c and decompressed length. It returns the first failure.
func (l *Layer) Verify() error {
	hb := make([]byte, HeaderSize)
	if _, err := l.src.ReadAt(hb, 0); err != nil {
		return fmt.Errorf("read header: %w", err)
	}
	if err := checkHeader(hb, &l.t); err != nil {
		return err
	}
	buf := make([]byte, l.t.ChunkSize)
	for i := range l.chunks {
		if _, err := l.loadChunk(context.Background(), i, buf); err != nil {
			return err
		}
	}
	return nil
}
