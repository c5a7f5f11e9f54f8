package snapshot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
)

// On-disk constants. docs/format.md describes the layout byte by byte.
const (
	Version = 1

	HeaderSize   = 32
	TrailerSize  = 64
	ExtentSize   = 24 // bytes per extent record in the index
	ChunkRecSize = 16 // bytes per chunk record in the index

	headerMagic  = "OBDVLAYR"
	trailerMagic = "OBDVLTRL"

	// Limits checked before any allocation.
	MinBlockSize   = 512
	MaxBlockSize   = 64 << 10
	MinChunkSize   = 4 << 10
	MaxChunkSize   = 4 << 20
	MaxVirtualSize = 1 << 60
	MaxIndexBytes  = 1 << 30
)

// Codec names the compression of a layer's chunks.
type Codec uint8

// Codecs.
const (
	CodecNone Codec = 0
	CodecZstd Codec = 1
	CodecS2   Codec = 2
)

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecZstd:
		return "zstd"
	case CodecS2:
		return "s2"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// ParseCodec maps "zstd", "s2" or "none" to a Codec.
func ParseCodec(s string) (Codec, error) {
	switch s {
	case "zstd", "":
		return CodecZstd, nil
	case "s2":
		return CodecS2, nil
	case "none":
		return CodecNone, nil
	}
	return 0, fmt.Errorf("unknown codec %q (want zstd, s2 or none)", s)
}

// ErrFormat is wrapped by every error about malformed layer bytes.
var ErrFormat = errors.New("invalid layer")

// ErrChecksum is wrapped when a chunk's or the index's checksum fails.
var ErrChecksum = errors.New("checksum mismatch")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

func formatErr(f string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrFormat, fmt.Sprintf(f, a...))
}

// Trailer is the fixed-size record at the end of every layer. Everything
// needed to find and size the index is here, so a reader opens a layer
// with two reads: the trailer, then the index.
type Trailer struct {
	Version     uint32
	BlockSize   uint32
	ChunkSize   uint32
	Codec       Codec
	VirtualSize uint64 // bytes of the virtual disk when the layer was sealed
	DataBytes   uint64 // bytes of live data (uncompressed) in the data stream
	IndexOffset uint64 // where the extent records start
	ExtentCount uint32
	ChunkCount  uint32
	IndexCRC    uint32 // crc32c over extent and chunk records
}

// IndexLen is the byte length of the index (extent and chunk records).
func (t *Trailer) IndexLen() uint64 {
	return uint64(t.ExtentCount)*ExtentSize + uint64(t.ChunkCount)*ChunkRecSize
}

func (t *Trailer) marshal() []byte {
	b := make([]byte, TrailerSize)
	copy(b, trailerMagic)
	le := binary.LittleEndian
	le.PutUint32(b[8:], t.Version)
	le.PutUint32(b[12:], t.BlockSize)
	le.PutUint32(b[16:], t.ChunkSize)
	b[20] = byte(t.Codec)
	le.PutUint64(b[24:], t.VirtualSize)
	le.PutUint64(b[32:], t.DataBytes)
	le.PutUint64(b[40:], t.IndexOffset)
	le.PutUint32(b[48:], t.ExtentCount)
	le.PutUint32(b[52:], t.ChunkCount)
	le.PutUint32(b[56:], t.IndexCRC)
	le.PutUint32(b[60:], crc(b[:60]))
	return b
}

// ParseTrailer decodes and validates the last TrailerSize bytes of a blob
// of blobSize bytes, as Open does (without reading the index): a pull
// checks what an artifact's config claims against it.
func ParseTrailer(b []byte, blobSize int64) (*Trailer, error) { return parseTrailer(b, blobSize) }

// parseTrailer decodes and validates a trailer against the blob size.
func parseTrailer(b []byte, blobSize int64) (*Trailer, error) {
	if len(b) != TrailerSize {
		return nil, formatErr("trailer is %d bytes, want %d", len(b), TrailerSize)
	}
	if string(b[:8]) != trailerMagic {
		return nil, formatErr("bad trailer magic (not an obdvol layer, or truncated)")
	}
	le := binary.LittleEndian
	if got, want := le.Uint32(b[60:]), crc(b[:60]); got != want {
		return nil, fmt.Errorf("%w: trailer crc %08x, want %08x", ErrChecksum, got, want)
	}
	t := &Trailer{
		Version:     le.Uint32(b[8:]),
		BlockSize:   le.Uint32(b[12:]),
		ChunkSize:   le.Uint32(b[16:]),
		Codec:       Codec(b[20]),
		VirtualSize: le.Uint64(b[24:]),
		DataBytes:   le.Uint64(b[32:]),
		IndexOffset: le.Uint64(b[40:]),
		ExtentCount: le.Uint32(b[48:]),
		ChunkCount:  le.Uint32(b[52:]),
		IndexCRC:    le.Uint32(b[56:]),
	}
	if b[21] != 0 || b[22] != 0 || b[23] != 0 {
		return nil, formatErr("reserved trailer bytes are set")
	}
	if err := t.validate(blobSize); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Trailer) validate(blobSize int64) error {
	if t.Version != Version {
		return formatErr("version %d not supported (this obdvol reads version %d)", t.Version, Version)
	}
	if t.BlockSize < MinBlockSize || t.BlockSize > MaxBlockSize || t.BlockSize&(t.BlockSize-1) != 0 {
		return formatErr("block size %d", t.BlockSize)
	}
	if t.ChunkSize < MinChunkSize || t.ChunkSize > MaxChunkSize || t.ChunkSize%t.BlockSize != 0 {
		return formatErr("chunk size %d", t.ChunkSize)
	}
	if t.Codec > CodecS2 {
		return formatErr("unknown codec %d", t.Codec)
	}
	if t.VirtualSize > MaxVirtualSize || t.VirtualSize%uint64(t.BlockSize) != 0 {
		return formatErr("virtual size %d", t.VirtualSize)
	}
	if t.DataBytes%uint64(t.BlockSize) != 0 || t.DataBytes > t.VirtualSize {
		return formatErr("data bytes %d", t.DataBytes)
	}
	if want := (t.DataBytes + uint64(t.ChunkSize) - 1) / uint64(t.ChunkSize); uint64(t.ChunkCount) != want {
		return formatErr("chunk count %d, want %d for %d data bytes", t.ChunkCount, want, t.DataBytes)
	}
	if uint64(t.ExtentCount) > t.VirtualSize/uint64(t.BlockSize) {
		return formatErr("extent count %d exceeds blocks", t.ExtentCount)
	}
	il := t.IndexLen()
	if blobSize < 0 { // parameters only (a writer starting a layer)
		return nil
	}
	if il > MaxIndexBytes {
		return formatErr("index of %d bytes exceeds limit", il)
	}
	if blobSize < HeaderSize+TrailerSize || t.IndexOffset < HeaderSize || il > uint64(blobSize) ||
		t.IndexOffset > uint64(blobSize) || t.IndexOffset+il+TrailerSize != uint64(blobSize) {
		return formatErr("index at %d+%d does not fit a blob of %d bytes", t.IndexOffset, il, blobSize)
	}
	return nil
}

func marshalHeader(blockSize, chunkSize uint32, codec Codec) []byte {
	b := make([]byte, HeaderSize)
	copy(b, headerMagic)
	le := binary.LittleEndian
	le.PutUint32(b[8:], Version)
	le.PutUint32(b[12:], blockSize)
	le.PutUint32(b[16:], chunkSize)
	b[20] = byte(codec)
	le.PutUint32(b[28:], crc(b[:28]))
	return b
}

// checkHeader validates the header at the start of a layer: its magic,
// its crc32c, its reserved bytes, and that its version, block size, chunk
// size and codec equal the trailer's. Readers do not need the header (the
// trailer says everything), so only Verify reads it.
func checkHeader(b []byte, t *Trailer) error {
	if len(b) != HeaderSize {
		return formatErr("header is %d bytes, want %d", len(b), HeaderSize)
	}
	if string(b[:8]) != headerMagic {
		return formatErr("bad header magic")
	}
	le := binary.LittleEndian
	if got, want := le.Uint32(b[28:]), crc(b[:28]); got != want {
		return fmt.Errorf("%w: header crc %08x, want %08x", ErrChecksum, got, want)
	}
	for _, x := range b[21:28] {
		if x != 0 {
			return formatErr("reserved header bytes are set")
		}
	}
	if v, bs, cs, c := le.Uint32(b[8:]), le.Uint32(b[12:]), le.Uint32(b[16:]), Codec(b[20]); v != t.Version ||
		bs != t.BlockSize || cs != t.ChunkSize || c != t.Codec {
		return formatErr("header (version %d, block size %d, chunk size %d, codec %s) contradicts the trailer (version %d, block size %d, chunk size %d, codec %s)",
			v, bs, cs, c, t.Version, t.BlockSize, t.ChunkSize, t.Codec)
	}
	return nil
}

// ValidateParams checks a block size, chunk size and codec as the format
// allows them, with a message that names the broken rule.
func ValidateParams(blockSize, chunkSize uint32, codec Codec) error {
	if blockSize < MinBlockSize || blockSize > MaxBlockSize || blockSize&(blockSize-1) != 0 {
		return fmt.Errorf("block size %d: want a power of two from %d to %d", blockSize, MinBlockSize, MaxBlockSize)
	}
	if chunkSize < MinChunkSize || chunkSize > MaxChunkSize || chunkSize%blockSize != 0 {
		return fmt.Errorf("chunk size %d: want a multiple of the block size (%d) from %d to %d", chunkSize, blockSize, MinChunkSize, MaxChunkSize)
	}
	if codec > CodecS2 {
		return fmt.Errorf("unknown codec %d", codec)
	}
	return nil
}

// Extent kinds.
const (
	KindData = 0 // blocks stored in the layer's data stream
	KindZero = 1 // blocks that read as zeros and hide lower layers
)

// Extent is one run of blocks in a layer: Count blocks from Start are
// either data at block DataOff of the layer's data stream, or zeros.
type Extent struct {
	Start   uint64 // first virtual block
	DataOff uint64 // first block in the data stream (data extents)
	Count   uint32 // blocks
	Kind    uint8
}

// End is the block after the extent.
func (e Extent) End() uint64 { return e.Start + uint64(e.Count) }

func putExtent(b []byte, e Extent) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], e.Start)
	le.PutUint64(b[8:], e.DataOff)
	le.PutUint32(b[16:], e.Count)
	b[20] = e.Kind
	b[21], b[22], b[23] = 0, 0, 0
}

// chunkRec locates one stored chunk. A chunk whose stored length equals
// its raw length is stored uncompressed; a shorter one is compressed with
// the layer's codec; a longer one is invalid.
type chunkRec struct {
	Off uint64
	Len uint32
	CRC uint32 // crc32c of the stored bytes
}

func putChunk(b []byte, c chunkRec) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], c.Off)
	le.PutUint32(b[8:], c.Len)
	le.PutUint32(b[12:], c.CRC)
}

// parseIndex decodes and validates the extent and chunk records of an
// index held whole in b.
func parseIndex(b []byte, t *Trailer) ([]Extent, []chunkRec, error) {
	if uint64(len(b)) != t.IndexLen() {
		return nil, nil, formatErr("index is %d bytes, want %d", len(b), t.IndexLen())
	}
	d := newIndexDecoder(t)
	el := int(t.ExtentCount) * ExtentSize
	d.extents(b[:el])
	d.chunks(b[el:])
	return d.finish()
}

// indexDecoder checksums and decodes an index fed in pieces of whole
// records (extents first, then chunks). It keeps only records it decoded
// and found valid: the memory it takes grows with the bytes it was given,
// never with what the trailer claims. The first invalid record is
// remembered and later ones are only checksummed, so a damaged index
// reports ErrChecksum before any structural complaint, as a whole-index
// check would.
type indexDecoder struct {
	t          *Trailer
	blocks     uint64 // virtual blocks
	dataBlocks uint64 // data-stream blocks
	prevEnd    uint64
	crc        uint32
	exts       []Extent
	chs        []chunkRec
	bad        error // first invalid record
}

func newIndexDecoder(t *Trailer) *indexDecoder {
	return &indexDecoder{t: t, blocks: t.VirtualSize / uint64(t.BlockSize), dataBlocks: t.DataBytes / uint64(t.BlockSize)}
}

// extents decodes extent records; len(b) is a multiple of ExtentSize.
func (d *indexDecoder) extents(b []byte) {
	d.crc = crc32.Update(d.crc, castagnoli, b)
	le := binary.LittleEndian
	for ; d.bad == nil && len(b) >= ExtentSize; b = b[ExtentSize:] {
		i := len(d.exts)
		e := Extent{Start: le.Uint64(b[0:]), DataOff: le.Uint64(b[8:]), Count: le.Uint32(b[16:]), Kind: b[20]}
		switch {
		case b[21] != 0 || b[22] != 0 || b[23] != 0:
			d.bad = formatErr("extent %d: reserved bytes set", i)
		case e.Count == 0 || e.Start < d.prevEnd || e.Start > d.blocks || uint64(e.Count) > d.blocks-e.Start:
			d.bad = formatErr("extent %d [%d,+%d) out of order or beyond %d blocks", i, e.Start, e.Count, d.blocks)
		case e.Kind == KindData && (e.DataOff > d.dataBlocks || uint64(e.Count) > d.dataBlocks-e.DataOff):
			d.bad = formatErr("extent %d points past the data stream", i)
		case e.Kind == KindZero && e.DataOff != 0:
			d.bad = formatErr("zero extent %d has a data offset", i)
		case e.Kind != KindData && e.Kind != KindZero:
			d.bad = formatErr("extent %d has unknown kind %d", i, e.Kind)
		default:
			d.prevEnd = e.End()
			d.exts = append(d.exts, e)
		}
	}
}

// chunks decodes chunk records; len(b) is a multiple of ChunkRecSize.
func (d *indexDecoder) chunks(b []byte) {
	d.crc = crc32.Update(d.crc, castagnoli, b)
	le := binary.LittleEndian
	t := d.t
	for ; d.bad == nil && len(b) >= ChunkRecSize; b = b[ChunkRecSize:] {
		i := len(d.chs)
		c := chunkRec{Off: le.Uint64(b[0:]), Len: le.Uint32(b[8:]), CRC: le.Uint32(b[12:])}
		if c.Len == 0 || c.Len > rawLen(t, i) || c.Off < HeaderSize || c.Off > t.IndexOffset || uint64(c.Len) > t.IndexOffset-c.Off {
			d.bad = formatErr("chunk %d at %d+%d out of bounds", i, c.Off, c.Len)
			break
		}
		d.chs = append(d.chs, c)
	}
}

// finish checks the checksum and the record counts.
func (d *indexDecoder) finish() ([]Extent, []chunkRec, error) {
	if d.crc != d.t.IndexCRC {
		return nil, nil, fmt.Errorf("%w: index crc %08x, want %08x", ErrChecksum, d.crc, d.t.IndexCRC)
	}
	if d.bad != nil {
		return nil, nil, d.bad
	}
	if len(d.exts) != int(d.t.ExtentCount) || len(d.chs) != int(d.t.ChunkCount) {
		return nil, nil, formatErr("index has %d extents and %d chunks, want %d and %d", len(d.exts), len(d.chs), d.t.ExtentCount, d.t.ChunkCount)
	}
	return slices.Clip(d.exts), slices.Clip(d.chs), nil
}

// indexPiece is the most index bytes Open reads at once.
const indexPiece = 1 << 20

// readIndex reads, checksums and decodes the index of t from src in
// pieces of at most indexPiece bytes: the memory it takes is the records
// src actually delivered, so a trailer claiming a huge index costs
// nothing until (and unless) the bytes arrive and decode as valid
// records.
func readIndex(src BlobSource, t *Trailer) ([]Extent, []chunkRec, error) {
	d := newIndexDecoder(t)
	buf := make([]byte, min(t.IndexLen(), indexPiece))
	off := int64(t.IndexOffset)
	read := func(total uint64, rec uint64, decode func([]byte)) error {
		for total > 0 {
			n := min(total, uint64(len(buf))/rec*rec)
			if _, err := src.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("read index: %w", err)
			}
			decode(buf[:n])
			off += int64(n)
			total -= n
		}
		return nil
	}
	if err := read(uint64(t.ExtentCount)*ExtentSize, ExtentSize, d.extents); err != nil {
		return nil, nil, err
	}
	if err := read(uint64(t.ChunkCount)*ChunkRecSize, ChunkRecSize, d.chunks); err != nil {
		return nil, nil, err
	}
	return d.finish()
}

// rawLen is the uncompressed length of chunk i.
func rawLen(t *Trailer, i int) uint32 {
	start := uint64(i) * uint64(t.ChunkSize)
	if rem := t.DataBytes - start; rem < uint64(t.ChunkSize) {
		return uint32(rem)
	}
	return t.ChunkSize
}

var errShort = errors.New("short read: blob truncated")
