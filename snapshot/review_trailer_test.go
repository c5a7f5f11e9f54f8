package snapshot

import (
	"runtime"
	"testing"
)

// A 96-byte hostile blob whose trailer makes IndexOffset+IndexLen+64 wrap
// around to the blob size passes validate, and Open then allocates (and
// zeroes) an index of up to MaxIndexBytes before the read fails: the
// "allocation bounded by the blob size" promise of docs/format.md breaks.
func TestReviewOpenHostileTrailerAllocatesIndex(t *testing.T) {
	const size = HeaderSize + TrailerSize
	tr := Trailer{Version: Version, BlockSize: 512, ChunkSize: 4096, Codec: CodecNone,
		VirtualSize: 1 << 50, ExtentCount: MaxIndexBytes / ExtentSize}
	il := tr.IndexLen()
	tr.IndexOffset = uint64(size) - il - TrailerSize // wraps
	blob := make([]byte, size)
	copy(blob[size-TrailerSize:], tr.marshal())
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := Open(BytesSource(blob))
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("hostile layer opened")
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
		t.Fatalf("Open of a %d-byte blob allocated %d bytes (err %v)", size, got, err)
	}
}
