package snapshot

import (
	"math/rand"
	"testing"
)

// FuzzOpenLayer feeds arbitrary bytes to the layer parser and, when they
// parse, reads every block: errors are fine, panics and giant allocations
// are not.
func FuzzOpenLayer(f *testing.F) {
	r := rand.New(rand.NewSource(1))
	f.Add(buildLayer(f, 8*tbs, CodecZstd, 0, map[uint64][]byte{1: randBlock(r), 2: nil, 5: randBlock(r)}))
	f.Add(buildLayer(f, 8*tbs, CodecS2, 0, map[uint64][]byte{0: randBlock(r)}))
	f.Add(buildLayer(f, 8*tbs, CodecNone, 0, map[uint64][]byte{7: randBlock(r)}))
	f.Add([]byte("OBDVLAYR"))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := Open(BytesSource(b))
		if err != nil {
			return
		}
		l.Verify()
		size := l.Trailer().VirtualSize
		if size > 1<<20 {
			return
		}
		ch, err := NewChain([]*Layer{l, l}, size, l.Trailer().BlockSize, NewCache(1<<20))
		if err != nil {
			return
		}
		p := make([]byte, 4096)
		for off := uint64(0); off+4096 <= size; off += 4096 {
			ch.ReadAt(p, int64(off))
		}
	})
}

// FuzzIndex decodes arbitrary index bytes under a valid trailer.
func FuzzIndex(f *testing.F) {
	f.Add(uint32(2), uint64(4096), make([]byte, 2*ExtentSize+ChunkRecSize))
	f.Fuzz(func(t *testing.T, extents uint32, dataBytes uint64, b []byte) {
		tr := &Trailer{Version: Version, BlockSize: 4096, ChunkSize: 65536, VirtualSize: 1 << 30,
			DataBytes: dataBytes &^ 4095 % (1 << 30), ExtentCount: extents % 1024}
		tr.ChunkCount = uint32((tr.DataBytes + 65535) / 65536)
		tr.IndexOffset = 1 << 20
		tr.IndexCRC = crc(b)
		parseIndex(b, tr)
	})
}
