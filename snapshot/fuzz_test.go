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

// FuzzOpenClaimed opens fuzzed bytes as the tail of a blob that claims
// to be much larger (a lazy layer's size is a registry's word; the rest
// reads as zeros): whatever the trailer in those bytes claims, Open
// allocates at most one index piece plus a few times the bytes that are
// real (only they can hold valid records), and never panics.
func FuzzOpenClaimed(f *testing.F) {
	r := rand.New(rand.NewSource(2))
	f.Add(buildLayer(f, 8*tbs, CodecZstd, 0, map[uint64][]byte{1: randBlock(r), 3: nil}), uint64(0))
	tr, _ := hostileTrailer(64<<20, 1<<40)
	f.Add(tr.marshal(), uint64(0))
	tr.ExtentCount = 1 << 31
	f.Add(tr.marshal(), uint64(1<<30))
	f.Fuzz(func(t *testing.T, tail []byte, pad uint64) {
		size := int64(len(tail)) + int64(pad%(1<<40))
		src := claimedSource{size: size, tail: tail}
		if len(tail) >= TrailerSize {
			// Make the trailer's index fit the claimed size, so that
			// Open gets as far as reading it.
			if t0, err := parseTrailer(tail[len(tail)-TrailerSize:], -1); err == nil {
				if il := t0.IndexLen(); il+TrailerSize+HeaderSize <= 1<<40 && il <= MaxIndexBytes {
					src.size = max(size, int64(il+TrailerSize+HeaderSize))
					t0.IndexOffset = uint64(src.size) - il - TrailerSize
					tail = append(tail[:len(tail)-TrailerSize:len(tail)-TrailerSize], t0.marshal()...)
					src.tail = tail
				}
			}
		}
		got := allocated(func() { Open(src) })
		if limit := uint64(2*indexPiece + 8*len(tail) + 64<<10); got > limit {
			t.Fatalf("Open of a blob claiming %d bytes (%d real) allocated %d bytes", src.size, len(tail), got)
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
