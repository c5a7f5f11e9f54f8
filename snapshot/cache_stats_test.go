package snapshot

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gatedSource delays every read until gate is closed, and fails the
// first read when fail is set.
type gatedSource struct {
	BytesSource
	gate  chan struct{}
	reads atomic.Int64
	fail  atomic.Bool
}

func (g *gatedSource) ReadAt(p []byte, off int64) (int, error) {
	<-g.gate
	if g.reads.Add(1) == 1 && g.fail.Load() {
		return 0, errors.New("injected read failure")
	}
	return g.BytesSource.ReadAt(p, off)
}

func gatedLayer(t *testing.T) (*Layer, *gatedSource, []byte) {
	r := rand.New(rand.NewSource(1))
	blocks := map[uint64][]byte{}
	want := make([]byte, 16*tbs)
	for b := uint64(0); b < 16; b++ {
		blocks[b] = randBlock(r)
		blocks[b][0] = 1
		copy(want[b*tbs:], blocks[b])
	}
	raw := buildLayer(t, 16*tbs, CodecZstd, 64<<10, blocks)
	l, err := Open(BytesSource(raw))
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedSource{BytesSource: raw, gate: make(chan struct{})}
	l.src = g // the index is read; chunk reads go through the gate
	return l, g, want
}

// Concurrent reads of one chunk decompress it once: the first loads it,
// the others wait for it and copy it from the cache. The counters say so.
func TestCacheLoadsAChunkOnce(t *testing.T) {
	l, g, want := gatedLayer(t)
	c := NewCache(16 << 20)
	const n = 8
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, tbs)
			if err := l.ReadData(p, uint64(i%4)*tbs, c); err != nil || !bytes.Equal(p, want[(i%4)*tbs:][:tbs]) {
				t.Errorf("reader %d: %v or wrong data", i, err)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond) // let them all reach the chunk (not needed for correctness)
	close(g.gate)
	wg.Wait()
	st := c.Stats()
	if g.reads.Load() != 1 || st.ChunksDecompressed != 1 || st.Misses != 1 {
		t.Fatalf("%d reads of the source, stats %+v: want the chunk loaded once", g.reads.Load(), st)
	}
	if st.Hits != n-1 || st.BytesDecompressed != uint64(len(want)) || st.Bytes != uint64(len(want)) || st.Evictions != 0 {
		t.Fatalf("stats %+v", st)
	}
	var nilCache *Cache
	if nilCache.Stats() != (CacheStats{}) {
		t.Fatal("a nil cache has counters")
	}
}

// A failed load wakes the reads waiting for it, which load the chunk
// themselves; a waiting read whose context ends returns at once.
func TestCacheFailedLoadWakesWaiters(t *testing.T) {
	l, g, want := gatedLayer(t)
	c := NewCache(16 << 20)
	g.fail.Store(true)
	first := make(chan error)
	go func() { first <- l.ReadData(make([]byte, tbs), 0, c) }()
	for {
		c.shard(cacheKey{l.id, 0}).mu.Lock()
		_, loading := c.shard(cacheKey{l.id, 0}).loading[cacheKey{l.id, 0}]
		c.shard(cacheKey{l.id, 0}).mu.Unlock()
		if loading {
			break
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.ReadDataContext(ctx, make([]byte, tbs), 0, c); !errors.Is(err, context.Canceled) {
		t.Fatalf("a waiter with an ended context: %v", err)
	}
	second := make(chan error)
	p := make([]byte, tbs)
	go func() { second <- l.ReadData(p, tbs, c) }()
	time.Sleep(20 * time.Millisecond)
	close(g.gate)
	if err := <-first; err == nil {
		t.Fatal("the failing load succeeded")
	}
	// The second reader either waited and loads it itself now, or
	// started after the failure: either way it reads the data.
	if err := <-second; err != nil || !bytes.Equal(p, want[tbs:2*tbs]) {
		t.Fatalf("second reader: %v", err)
	}
	if st := c.Stats(); st.ChunksDecompressed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// Evictions are counted, and Bytes follows what is held.
func TestCacheEvictionsCounted(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	blocks := map[uint64][]byte{}
	for b := uint64(0); b < 256; b++ {
		blocks[b] = randBlock(r)
		blocks[b][0] = 1
	}
	l, err := Open(BytesSource(buildLayer(t, 256*tbs, CodecS2, 4<<10, blocks)))
	if err != nil {
		t.Fatal(err)
	}
	c := NewCache(cacheShards * 2 * tbs) // two chunks a shard
	p := make([]byte, tbs)
	for b := uint64(0); b < 256; b++ {
		if err := l.ReadData(p, b*tbs, c); err != nil {
			t.Fatal(err)
		}
	}
	st := c.Stats()
	if st.ChunksDecompressed != 256 || st.Evictions == 0 || st.Bytes > cacheShards*2*tbs ||
		st.Evictions != st.ChunksDecompressed-st.Bytes/tbs {
		t.Fatalf("stats %+v", st)
	}
	c.Drop(l)
	if c.Stats().Bytes != 0 {
		t.Fatal("Drop left bytes counted")
	}
}
