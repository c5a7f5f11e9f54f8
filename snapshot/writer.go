package snapshot

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// WriterOptions configure a new layer.
type WriterOptions struct {
	BlockSize   uint32 // default 4096
	ChunkSize   uint32 // default DefaultChunkSize
	Codec       Codec
	VirtualSize uint64 // bytes; extents must lie below it
	Concurrency int    // compression workers; default GOMAXPROCS
}

// DefaultChunkSize is the chunk size chosen by measurement (docs/format.md).
const DefaultChunkSize = 64 << 10

// DefaultBlockSize is the block size of new volumes.
const DefaultBlockSize = 4096

// Info describes a finished layer.
type Info struct {
	Trailer
	StoredBytes uint64 // total blob size
	Extents     int
	ZeroBlocks  uint64 // blocks recorded as zero extents
}

// Writer builds a sealed layer, streaming it to an io.Writer (typically a
// content-store writer that hashes as it goes). Extents must be added in
// increasing block order and must not overlap. Data blocks that are all
// zeros become zero extents and store nothing. Chunks are compressed in
// parallel and written in order. Close writes the index and trailer.
//
//	w, _ := snapshot.NewWriter(blob, snapshot.WriterOptions{VirtualSize: size, Codec: snapshot.CodecZstd})
//	w.AddData(0, blocks)      // blocks: a multiple of the block size
//	w.AddZero(100, 50)        // blocks 100..149 read as zeros
//	info, err := w.Close()
type Writer struct {
	out    *bufio.Writer
	opts   WriterOptions
	bs     uint64
	off    uint64 // bytes written to out
	exts   []Extent
	chunks []chunkRec
	next   uint64 // first block not yet covered by an added extent
	data   uint64 // data blocks appended to the stream
	zeros  uint64
	cur    []byte // chunk being filled

	jobs    chan *job
	order   chan *job
	done    chan struct{}
	werr    error
	wg      sync.WaitGroup
	bufPool sync.Pool
	closed  bool
}

type job struct {
	raw    []byte
	out    []byte
	stored []byte
	ready  chan struct{}
}

var zeroBlock = make([]byte, MaxBlockSize)

// NewWriter starts a layer on out.
func NewWriter(out io.Writer, opts WriterOptions) (*Writer, error) {
	if opts.BlockSize == 0 {
		opts.BlockSize = DefaultBlockSize
	}
	if opts.ChunkSize == 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = runtime.GOMAXPROCS(0)
	}
	t := Trailer{Version: Version, BlockSize: opts.BlockSize, ChunkSize: opts.ChunkSize, Codec: opts.Codec,
		VirtualSize: opts.VirtualSize}
	if err := t.validate(-1); err != nil {
		return nil, err
	}
	w := &Writer{out: bufio.NewWriterSize(out, 1<<20), opts: opts, bs: uint64(opts.BlockSize),
		jobs: make(chan *job, opts.Concurrency), order: make(chan *job, 4*opts.Concurrency), done: make(chan struct{})}
	w.bufPool.New = func() any { b := make([]byte, 0, opts.ChunkSize); return &b }
	if _, err := w.out.Write(marshalHeader(opts.BlockSize, opts.ChunkSize, opts.Codec)); err != nil {
		return nil, err
	}
	w.off = HeaderSize
	for i := 0; i < opts.Concurrency; i++ {
		w.wg.Add(1)
		go w.compressor()
	}
	go w.sequencer()
	w.cur = w.getBuf()
	return w, nil
}

func (w *Writer) getBuf() []byte  { return (*w.bufPool.Get().(*[]byte))[:0] }
func (w *Writer) putBuf(b []byte) { b = b[:0]; w.bufPool.Put(&b) }

func (w *Writer) compressor() {
	defer w.wg.Done()
	var enc *zstd.Encoder
	if w.opts.Codec == CodecZstd {
		enc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
			zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false))
		defer enc.Close()
	}
	for j := range w.jobs {
		switch w.opts.Codec {
		case CodecZstd:
			j.out = enc.EncodeAll(j.raw, j.out[:0])
		case CodecS2:
			j.out = s2.Encode(j.out[:cap(j.out)], j.raw)
		}
		if w.opts.Codec == CodecNone || len(j.out) >= len(j.raw) {
			j.stored = j.raw
		} else {
			j.stored = j.out
		}
		close(j.ready)
	}
}

// sequencer writes finished chunks in submission order.
func (w *Writer) sequencer() {
	defer close(w.done)
	for j := range w.order {
		<-j.ready
		if w.werr == nil {
			rec := chunkRec{Off: w.off, Len: uint32(len(j.stored)), CRC: crc(j.stored)}
			if _, err := w.out.Write(j.stored); err != nil {
				w.werr = err
			}
			w.off += uint64(len(j.stored))
			w.chunks = append(w.chunks, rec)
		}
		w.putBuf(j.raw)
	}
}

func (w *Writer) submitChunk() {
	if len(w.cur) == 0 {
		return
	}
	j := &job{raw: w.cur, ready: make(chan struct{})}
	w.order <- j
	w.jobs <- j
	w.cur = w.getBuf()
}

func (w *Writer) checkRange(start, count uint64) error {
	if w.closed {
		return errors.New("snapshot writer is closed")
	}
	if start < w.next {
		return fmt.Errorf("extent at block %d is out of order (next free block %d)", start, w.next)
	}
	if count == 0 || start+count > w.opts.VirtualSize/w.bs || start+count < start {
		return fmt.Errorf("extent [%d,+%d) outside virtual size %d", start, count, w.opts.VirtualSize)
	}
	return nil
}

// AddData appends data blocks at virtual block start. len(p) must be a
// non-zero multiple of the block size. p may be reused when it returns.
func (w *Writer) AddData(start uint64, p []byte) error {
	if uint64(len(p))%w.bs != 0 {
		return fmt.Errorf("data of %d bytes is not a multiple of the block size %d", len(p), w.bs)
	}
	n := uint64(len(p)) / w.bs
	if err := w.checkRange(start, n); err != nil {
		return err
	}
	zero := zeroBlock[:w.bs]
	for i := uint64(0); i < n; i++ {
		blk := p[i*w.bs : (i+1)*w.bs]
		if bytes.Equal(blk, zero) {
			w.addExtent(Extent{Start: start + i, Count: 1, Kind: KindZero})
			w.zeros++
			continue
		}
		w.addExtent(Extent{Start: start + i, DataOff: w.data, Count: 1, Kind: KindData})
		w.data++
		w.cur = append(w.cur, blk...)
		if len(w.cur) == int(w.opts.ChunkSize) {
			w.submitChunk()
		}
	}
	w.next = start + n
	return nil
}

// AddZero records count zero blocks at start.
func (w *Writer) AddZero(start, count uint64) error {
	if err := w.checkRange(start, count); err != nil {
		return err
	}
	for count > 0 {
		c := min(count, 1<<31)
		w.addExtent(Extent{Start: start, Count: uint32(c), Kind: KindZero})
		w.zeros += c
		start += c
		count -= c
	}
	w.next = start
	return nil
}

// addExtent appends e, merging it with the previous extent when they are
// adjacent, of the same kind and (for data) contiguous in the stream.
func (w *Writer) addExtent(e Extent) {
	if n := len(w.exts); n > 0 {
		p := &w.exts[n-1]
		if p.Kind == e.Kind && p.End() == e.Start && uint64(p.Count)+uint64(e.Count) <= 1<<31 &&
			(e.Kind == KindZero || p.DataOff+uint64(p.Count) == e.DataOff) {
			p.Count += e.Count
			return
		}
	}
	w.exts = append(w.exts, e)
}

// Close finishes the layer: remaining chunks, the index and the trailer.
// The caller commits (fsyncs, renames) the underlying blob.
func (w *Writer) Close() (Info, error) {
	if w.closed {
		return Info{}, errors.New("snapshot writer is closed")
	}
	w.submitChunk()
	w.closed = true
	close(w.jobs)
	close(w.order)
	w.wg.Wait()
	<-w.done
	if w.werr != nil {
		return Info{}, w.werr
	}
	if len(w.exts) > 1<<32-1 || len(w.chunks) > 1<<32-1 ||
		uint64(len(w.exts))*ExtentSize+uint64(len(w.chunks))*ChunkRecSize > MaxIndexBytes {
		return Info{}, fmt.Errorf("layer would have %d extents and %d chunks: its index exceeds %d bytes; flatten the volume or use a larger chunk size",
			len(w.exts), len(w.chunks), MaxIndexBytes)
	}
	t := Trailer{Version: Version, BlockSize: w.opts.BlockSize, ChunkSize: w.opts.ChunkSize, Codec: w.opts.Codec,
		VirtualSize: w.opts.VirtualSize, DataBytes: w.data * w.bs, IndexOffset: w.off,
		ExtentCount: uint32(len(w.exts)), ChunkCount: uint32(len(w.chunks))}
	idx := make([]byte, t.IndexLen())
	for i, e := range w.exts {
		putExtent(idx[i*ExtentSize:], e)
	}
	cb := idx[len(w.exts)*ExtentSize:]
	for i, c := range w.chunks {
		putChunk(cb[i*ChunkRecSize:], c)
	}
	t.IndexCRC = crc(idx)
	if _, err := w.out.Write(idx); err != nil {
		return Info{}, err
	}
	if _, err := w.out.Write(t.marshal()); err != nil {
		return Info{}, err
	}
	if err := w.out.Flush(); err != nil {
		return Info{}, err
	}
	total := w.off + uint64(len(idx)) + TrailerSize
	return Info{Trailer: t, StoredBytes: total, Extents: len(w.exts), ZeroBlocks: w.zeros}, nil
}

// Abort stops the workers without finishing the layer.
func (w *Writer) Abort() {
	if w.closed {
		return
	}
	w.closed = true
	close(w.jobs)
	close(w.order)
	w.wg.Wait()
	<-w.done
}
