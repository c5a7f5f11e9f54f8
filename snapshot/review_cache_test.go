package snapshot

import (
	"math/rand"
	"testing"
)

// The cache's buffer pool is shared by layers of every chunk size (one
// Manager cache serves all volumes). getBuf hands a 4 MiB buffer from a
// big-chunk layer to a 4 KiB-chunk layer, sliced to 4 KiB; insert
// accounts len(data), so the cache's byte limit counts 4 KiB while it
// pins 4 MiB: the real footprint grows up to MaxChunkSize/MinChunkSize
// (1024x) past the limit.
func TestReviewCacheMixedChunkSizesExceedLimit(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	const bigChunk, smallChunk = 4 << 20, 4 << 10
	big := map[uint64][]byte{}
	for b := uint64(0); b < 4*bigChunk/tbs; b++ {
		big[b] = randBlock(r)
		big[b][0] = 1
	}
	small := map[uint64][]byte{}
	for b := uint64(0); b < 256; b++ {
		small[b] = randBlock(r)
		small[b][0] = 1
	}
	lb, err := Open(BytesSource(buildLayer(t, 4*bigChunk, CodecNone, bigChunk, big)))
	if err != nil {
		t.Fatal(err)
	}
	ls, err := Open(BytesSource(buildLayer(t, 256*tbs, CodecNone, smallChunk, small)))
	if err != nil {
		t.Fatal(err)
	}
	const limit = 1 << 20
	c := NewCache(limit)
	p := make([]byte, tbs)
	for i := 0; i < 256; i++ {
		// A big-chunk read: too big for a shard, its buffer goes to the pool.
		if err := lb.ReadData(p, uint64(i%4)*bigChunk, c); err != nil {
			t.Fatal(err)
		}
		if err := ls.ReadData(p, uint64(i)*smallChunk, c); err != nil {
			t.Fatal(err)
		}
	}
	var held, accounted int
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		accounted += int(s.bytes.Load())
		for _, e := range s.ents {
			held += cap(e.data)
		}
		s.mu.Unlock()
	}
	if held > 2*limit {
		t.Fatalf("cache of limit %d accounts %d bytes but pins %d", limit, accounted, held)
	}
}
