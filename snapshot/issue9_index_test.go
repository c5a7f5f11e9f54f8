package snapshot

import (
	"bytes"
	"runtime"
	"testing"
)

// claimedSource is a blob that claims size bytes, of which only tail (at
// the end) is real: every other byte reads as zero. It stands for a lazy
// layer whose size a registry claimed; reading it costs no memory.
type claimedSource struct {
	size int64
	tail []byte
}

func (s claimedSource) Size() int64 { return s.size }

func (s claimedSource) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > s.size || int64(len(p)) > s.size-off {
		return 0, errShort
	}
	clear(p)
	if t0 := s.size - int64(len(s.tail)); off+int64(len(p)) > t0 {
		from := max(off, t0)
		copy(p[from-off:], s.tail[from-t0:])
	}
	return len(p), nil
}

// allocated returns the bytes fn allocated.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// hostileTrailer is a valid trailer claiming an index of about il bytes
// of extent records for a layer of virtual size vsize, placed at the end
// of a blob just large enough to hold it.
func hostileTrailer(il, vsize uint64) (Trailer, int64) {
	tr := Trailer{Version: Version, BlockSize: 4096, ChunkSize: 65536, Codec: CodecZstd,
		VirtualSize: vsize, ExtentCount: uint32(il / ExtentSize), IndexOffset: HeaderSize + 4096}
	return tr, int64(tr.IndexOffset + tr.IndexLen() + TrailerSize)
}

// Issue 9 #10: a (lazy, remote) layer whose trailer claims a large index
// made Open allocate all of it before a record was checked. The index is
// now read in bounded pieces: garbage records cost one piece.
func TestOpenClaimedIndexIsReadInPieces(t *testing.T) {
	tr, size := hostileTrailer(256<<20, 1<<40)
	src := claimedSource{size: size, tail: tr.marshal()}
	if _, err := parseTrailer(src.tail, size); err != nil {
		t.Fatalf("precondition: the hostile trailer must be valid: %v", err)
	}
	var err error
	got := allocated(func() { _, err = Open(src) })
	if err == nil {
		t.Fatal("a layer with a zero-filled index opened")
	}
	if got > 4<<20 {
		t.Fatalf("Open allocated %d bytes for a claimed %d-byte index of zeros (err %v)", got, tr.IndexLen(), err)
	}
}

// Backing names the same layer and data block in two chains exactly
// where they read the same stored bytes.
func TestChainBacking(t *testing.T) {
	blk := func(x byte) []byte { return bytes.Repeat([]byte{x}, tbs) }
	l1, err := Open(BytesSource(buildLayer(t, 8*tbs, CodecNone, 0, map[uint64][]byte{1: blk(1), 2: blk(2), 3: blk(3)})))
	if err != nil {
		t.Fatal(err)
	}
	l2, err := Open(BytesSource(buildLayer(t, 8*tbs, CodecNone, 0, map[uint64][]byte{2: blk(4), 3: nil})))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := NewChain([]*Layer{l1}, 8*tbs, tbs, nil)
	b, _ := NewChain([]*Layer{l1, l2}, 8*tbs, tbs, nil)
	for blk, same := range map[uint64]bool{0: true, 1: true, 2: false, 3: false, 5: true} {
		la, da, oka := a.Backing(blk)
		lb, db, okb := b.Backing(blk)
		if got := oka == okb && la == lb && da == db; got != same {
			t.Errorf("block %d: backing (%p %d %v) vs (%p %d %v), same %v, want %v", blk, la, da, oka, lb, db, okb, got, same)
		}
	}
	if l, d, ok := b.Backing(1); !ok || l != l1 || d != 0 {
		t.Errorf("block 1: backing (%p %d %v), want layer 1 data block 0", l, d, ok)
	}
}
