package snapshot

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The merged-index file (docs/format.md, "Merged-index file"): the merged
// index of one chain, stored under the name of its ChainKey so that
// every process opening that chain maps the same file-backed pages
// rather than building the index on its heap. It is derived data: a
// missing, torn, corrupt or foreign file is rebuilt from the layers,
// never trusted.
const (
	IndexFileVersion    = 1
	IndexFileHeaderSize = 80
	IndexRecordSize     = 24

	indexFileMagic = "OBDVMIDX"
	indexFileExt   = ".midx"
)

// ErrIndexFile is wrapped by every error about a malformed merged-index
// file. Such a file is rebuilt, so callers see it only from ParseIndexFile.
var ErrIndexFile = errors.New("invalid merged-index file")

// ChainKey names a chain: its block size, its size and its layers'
// digests, base first. Two chains with equal keys have equal merged
// indexes (layers are immutable and named by their content).
type ChainKey [32]byte

// NewChainKey returns the key of the chain of layers digests (base first)
// at size bytes with blocks of bs bytes: the sha256 of an unambiguous
// encoding of the three.
func NewChainKey(bs uint32, size uint64, digests []string) ChainKey {
	h := sha256.New()
	var b [16]byte
	h.Write([]byte("obdvol chain v1\x00"))
	binary.LittleEndian.PutUint32(b[0:], bs)
	binary.LittleEndian.PutUint64(b[4:], size)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(digests)))
	h.Write(b[:])
	for _, d := range digests {
		binary.LittleEndian.PutUint32(b[:4], uint32(len(d)))
		h.Write(b[:4])
		h.Write([]byte(d))
	}
	var k ChainKey
	h.Sum(k[:0])
	return k
}

// String is the key in hex: the merged-index file's name without ".midx".
func (k ChainKey) String() string { return hex.EncodeToString(k[:]) }

// IndexFileName is the name of the merged-index file of the chain key.
func IndexFileName(k ChainKey) string { return k.String() + indexFileExt }

// IsIndexFileName reports whether name is a merged-index file's name
// (as gc lists them), returning its key.
func IsIndexFileName(name string) (ChainKey, bool) {
	var k ChainKey
	if len(name) != 2*len(k)+len(indexFileExt) || name[2*len(k):] != indexFileExt {
		return k, false
	}
	if _, err := hex.Decode(k[:], []byte(name[:2*len(k)])); err != nil {
		return k, false
	}
	return k, true
}

// IndexFile says where OpenChain keeps a chain's merged index.
type IndexFile struct {
	Dir      string   // directory of merged-index files; "" keeps the index on the heap
	Key      ChainKey // the chain's key (NewChainKey); names the file
	ReadOnly bool     // use a valid file that is there, never write one
}

// OpenChain is NewChain whose merged index lives in a file of f.Dir,
// mapped read-only, so that its pages are the kernel's to reclaim and
// every chain (in any process) with the same key shares them. A valid
// file is mapped as it is; a missing or invalid one (torn, corrupt,
// another chain's) is rebuilt from the layers and written (temp file and
// rename; no fsync: it is derived data, and a torn file fails its
// checksum and is rebuilt). When the file cannot be written or mapped (a
// read-only or full root, f.ReadOnly) the index stays on the heap, as
// NewChain's: OpenChain fails only where NewChain would.
//
// Close the chain when done with it to unmap the file.
func OpenChain(layers []*Layer, size uint64, blockSize uint32, cache *Cache, f IndexFile) (*Chain, error) {
	if err := checkLayers(layers, blockSize); err != nil {
		return nil, err
	}
	if f.Dir == "" || len(layers) == 0 {
		return NewChain(layers, size, blockSize, cache)
	}
	path := filepath.Join(f.Dir, IndexFileName(f.Key))
	if c := loadIndexFile(path, f.Key, layers, size, blockSize, cache); c != nil {
		return c, nil
	}
	c, err := NewChain(layers, size, blockSize, cache)
	if err != nil || f.ReadOnly {
		return c, err
	}
	if writeIndexFile(f.Dir, path, f.Key, c) != nil {
		return c, nil // derived data: the heap index serves
	}
	if mc := loadIndexFile(path, f.Key, layers, size, blockSize, cache); mc != nil {
		return mc, nil
	}
	return c, nil
}

// Mapped reports whether the chain's merged index is a mapped file
// (OpenChain) rather than on the heap.
func (c *Chain) Mapped() bool { return c.mapping != nil }

// Close unmaps the chain's merged-index file, if it has one. The chain
// must not be used afterwards (its index is gone); closing a chain whose
// index is on the heap does nothing.
func (c *Chain) Close() error {
	if c.mapping == nil {
		return nil
	}
	m := c.mapping
	c.mapping, c.idx = nil, nil
	return unix.Munmap(m)
}

// loadIndexFile maps the merged-index file at path and returns the chain
// over it, or nil when the file is missing or invalid for this chain.
func loadIndexFile(path string, key ChainKey, layers []*Layer, size uint64, bs uint32, cache *Cache) *Chain {
	fd, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer fd.Close()
	st, err := fd.Stat()
	if err != nil || !st.Mode().IsRegular() || st.Size() < IndexFileHeaderSize || st.Size() > maxIndexFileSize {
		return nil
	}
	m, err := unix.Mmap(int(fd.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil
	}
	n, err := ParseIndexFile(m, key, layers, size, bs)
	if err != nil {
		unix.Munmap(m)
		return nil
	}
	idx, mapped := recordsView(m[IndexFileHeaderSize:], n)
	c := &Chain{layers: layers, idx: idx, bs: uint64(bs), size: size, cache: cache}
	if mapped {
		c.mapping = m
	} else {
		unix.Munmap(m) // idx is a heap copy
	}
	return c
}

// maxIndexFileSize bounds the file mapped: no merged index has more
// records than that (MaxIndexBytes of layer index per layer would be far
// more than any real chain).
const maxIndexFileSize = 4 << 30

// ParseIndexFile checks b, a whole merged-index file, against the chain
// it should hold (key, layers base first, size, block size bs) and
// returns its record count. Every record is checked, so a file that
// passes reads only within the chain's layers: sorted, non-overlapping,
// non-empty extents within size, each naming one of layers and lying
// within that layer's data stream. Errors wrap ErrIndexFile.
func ParseIndexFile(b []byte, key ChainKey, layers []*Layer, size uint64, bs uint32) (int, error) {
	if len(b) < IndexFileHeaderSize {
		return 0, idxErr("%d bytes is shorter than the header", len(b))
	}
	h := b[:IndexFileHeaderSize]
	if string(h[0:8]) != indexFileMagic {
		return 0, idxErr("bad magic %q", h[0:8])
	}
	if got, want := crc(h[:76]), binary.LittleEndian.Uint32(h[76:]); got != want {
		return 0, idxErr("header crc %08x, want %08x", got, want)
	}
	if v := binary.LittleEndian.Uint32(h[8:]); v != IndexFileVersion {
		return 0, idxErr("version %d, want %d", v, IndexFileVersion)
	}
	if string(h[40:72]) != string(key[:]) {
		return 0, idxErr("file is another chain's (key mismatch)")
	}
	if v := binary.LittleEndian.Uint32(h[12:]); v != bs || bs == 0 {
		return 0, idxErr("block size %d, want %d", v, bs)
	}
	if v := binary.LittleEndian.Uint64(h[16:]); v != size {
		return 0, idxErr("size %d, want %d", v, size)
	}
	if v := binary.LittleEndian.Uint32(h[24:]); uint64(v) != uint64(len(layers)) {
		return 0, idxErr("%d layers, want %d", v, len(layers))
	}
	if v := binary.LittleEndian.Uint32(h[28:]); v != 0 {
		return 0, idxErr("reserved field %#x", v)
	}
	recs := b[IndexFileHeaderSize:]
	n := binary.LittleEndian.Uint64(h[32:])
	if uint64(len(recs))%IndexRecordSize != 0 || n != uint64(len(recs))/IndexRecordSize {
		return 0, idxErr("%d records in %d bytes", n, len(recs))
	}
	if got, want := crc(recs), binary.LittleEndian.Uint32(h[72:]); got != want {
		return 0, idxErr("records crc %08x, want %08x", got, want)
	}
	limit := size / uint64(bs)
	var prevEnd uint64
	for i := 0; i < len(recs); i += IndexRecordSize {
		r := recs[i : i+IndexRecordSize]
		start := binary.LittleEndian.Uint64(r[0:])
		dataOff := binary.LittleEndian.Uint64(r[8:])
		count := uint64(binary.LittleEndian.Uint32(r[16:]))
		layer := int(binary.LittleEndian.Uint16(r[20:]))
		switch {
		case binary.LittleEndian.Uint16(r[22:]) != 0:
			return 0, idxErr("record %d: padding not zero", i/IndexRecordSize)
		case count == 0 || count > 1<<31:
			return 0, idxErr("record %d: count %d", i/IndexRecordSize, count)
		case start < prevEnd || start > limit || count > limit-start:
			return 0, idxErr("record %d: blocks [%d,+%d) out of order or beyond %d", i/IndexRecordSize, start, count, limit)
		case layer >= len(layers):
			return 0, idxErr("record %d: layer %d of %d", i/IndexRecordSize, layer, len(layers))
		}
		if dataBlocks := layers[layer].t.DataBytes / uint64(bs); dataOff > dataBlocks || count > dataBlocks-dataOff {
			return 0, idxErr("record %d: data blocks [%d,+%d) beyond layer %d's %d", i/IndexRecordSize, dataOff, count, layer, dataBlocks)
		}
		prevEnd = start + count
	}
	return int(n), nil
}

func idxErr(f string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrIndexFile, fmt.Sprintf(f, a...))
}

// AppendIndexFile appends to dst the merged-index file of chain c named
// key: the bytes writeIndexFile writes (for tests and tools).
func AppendIndexFile(dst []byte, key ChainKey, c *Chain) []byte {
	var h [IndexFileHeaderSize]byte
	putIndexHeader(h[:], key, c)
	dst = append(dst, h[:]...)
	var r [IndexRecordSize]byte
	for i := range c.idx {
		putRecord(r[:], &c.idx[i])
		dst = append(dst, r[:]...)
	}
	return dst
}

func putRecord(r []byte, e *MExtent) {
	binary.LittleEndian.PutUint64(r[0:], e.Start)
	binary.LittleEndian.PutUint64(r[8:], e.DataOff)
	binary.LittleEndian.PutUint32(r[16:], e.Count)
	binary.LittleEndian.PutUint16(r[20:], e.Layer)
	binary.LittleEndian.PutUint16(r[22:], 0)
}

func putIndexHeader(h []byte, key ChainKey, c *Chain) {
	sum := crc32.New(castagnoli)
	var r [IndexRecordSize]byte
	for i := range c.idx {
		putRecord(r[:], &c.idx[i])
		sum.Write(r[:])
	}
	copy(h[0:8], indexFileMagic)
	binary.LittleEndian.PutUint32(h[8:], IndexFileVersion)
	binary.LittleEndian.PutUint32(h[12:], uint32(c.bs))
	binary.LittleEndian.PutUint64(h[16:], c.size)
	binary.LittleEndian.PutUint32(h[24:], uint32(len(c.layers)))
	binary.LittleEndian.PutUint32(h[28:], 0)
	binary.LittleEndian.PutUint64(h[32:], uint64(len(c.idx)))
	copy(h[40:72], key[:])
	binary.LittleEndian.PutUint32(h[72:], sum.Sum32())
	binary.LittleEndian.PutUint32(h[76:], crc(h[:76]))
}

// writeIndexFile writes chain c's merged index to path: a temp file in
// dir renamed over path, so a reader sees the old file or the new one,
// whole. Two processes writing the same key write the same bytes, and
// whichever rename comes last wins. No fsync: the file is derived data,
// and what a crash leaves torn fails its checksum and is rebuilt.
func writeIndexFile(dir, path string, key ChainKey, c *Chain) (err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".midx-tmp-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	w := bufio.NewWriterSize(f, 64<<10)
	var h [IndexFileHeaderSize]byte
	putIndexHeader(h[:], key, c)
	w.Write(h[:])
	var r [IndexRecordSize]byte
	for i := range c.idx {
		putRecord(r[:], &c.idx[i])
		w.Write(r[:])
	}
	if err = w.Flush(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// IsIndexTempFile reports whether name is a temp file writeIndexFile
// left behind (a crash between create and rename): gc removes them.
func IsIndexTempFile(name string) bool {
	return len(name) > len(".midx-tmp-") && name[:len(".midx-tmp-")] == ".midx-tmp-"
}

// decodeRecords decodes n records of b (checked by ParseIndexFile) into a
// heap index.
func decodeRecords(b []byte, n int) []MExtent {
	idx := make([]MExtent, n)
	for i := range idx {
		r := b[i*IndexRecordSize:]
		idx[i] = MExtent{Start: binary.LittleEndian.Uint64(r[0:]), DataOff: binary.LittleEndian.Uint64(r[8:]),
			Count: binary.LittleEndian.Uint32(r[16:]), Layer: binary.LittleEndian.Uint16(r[20:])}
	}
	return idx
}
