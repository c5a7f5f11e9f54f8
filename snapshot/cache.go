package snapshot

import (
	"sync"
	"sync/atomic"
)

// Cache keeps decompressed chunks of any number of layers, bounded in
// bytes, with CLOCK eviction. A hit copies out under a shard lock (a
// memcpy, never I/O) and allocates nothing. A nil *Cache caches nothing.
//
// One Cache serves every layer a Manager has open, so clones of one
// snapshot decompress each of its chunks once (while it stays cached).
// Its counters (Stats) are atomics, read without locking.
type Cache struct {
	shards [cacheShards]cacheShard
	pool   sync.Pool

	// Chunks loaded (read, verified, decompressed) by reads through this
	// cache, and their decompressed bytes; on the miss path only.
	decompressed      atomic.Uint64
	decompressedBytes atomic.Uint64
}

// CacheStats are a Cache's counters since it was made.
type CacheStats struct {
	Hits               uint64 // chunk lookups answered from the cache
	Misses             uint64 // chunk lookups not answered
	ChunksDecompressed uint64 // chunks read, verified and decompressed for reads through the cache
	BytesDecompressed  uint64 // their decompressed bytes
	Evictions          uint64 // chunks evicted to make room (not counting Drop of a closed layer)
	Bytes              uint64 // decompressed bytes held now
}

const cacheShards = 32

type cacheKey struct {
	layer uint64
	chunk int
}

type cacheEntry struct {
	key  cacheKey
	data []byte
	ref  bool
}

type cacheShard struct {
	mu sync.Mutex
	m  map[cacheKey]int // index into ents
	// loading holds the chunks being loaded by a read (see copyOut);
	// their channel is closed when the load ends.
	loading map[cacheKey]chan struct{}
	ents    []cacheEntry
	hand    int
	limit   int
	// Counters: changed under mu, read by Stats without it.
	bytes     atomic.Int64
	hits      atomic.Uint64
	misses    atomic.Uint64
	evictions atomic.Uint64
	_         [32]byte // 128 bytes: shards on their own cache lines
}

// NewCache returns a cache of about limit bytes of decompressed chunks.
func NewCache(limit int) *Cache {
	c := &Cache{}
	for i := range c.shards {
		c.shards[i].m = make(map[cacheKey]int)
		c.shards[i].loading = make(map[cacheKey]chan struct{})
		c.shards[i].limit = limit / cacheShards
	}
	return c
}

func (c *Cache) shard(k cacheKey) *cacheShard {
	h := k.layer*0x9E3779B97F4A7C15 ^ uint64(k.chunk)*0xC2B2AE3D27D4EB4F
	return &c.shards[(h>>32)%cacheShards]
}

// copyOut copies from a cached chunk into *p at chunk offset in, advancing
// *p and *off, and reports hit. On a miss, when another read is loading
// the chunk, wait is closed when that load ends (the caller waits, then
// looks again); otherwise the caller is now the chunk's loader and must
// end the load with insert or abandon. So reads of one chunk through
// clones of one snapshot decompress it once. A hit allocates nothing.
func (c *Cache) copyOut(layer uint64, chunk, in int, p *[]byte, off *uint64) (hit bool, wait <-chan struct{}) {
	k := cacheKey{layer, chunk}
	s := c.shard(k)
	s.mu.Lock()
	i, ok := s.m[k]
	if !ok {
		if ch, loading := s.loading[k]; loading {
			s.mu.Unlock()
			return false, ch
		}
		s.loading[k] = make(chan struct{})
		s.misses.Add(1)
		s.mu.Unlock()
		return false, nil
	}
	e := &s.ents[i]
	e.ref = true
	n := copy(*p, e.data[in:])
	s.hits.Add(1)
	s.mu.Unlock()
	*p = (*p)[n:]
	*off += uint64(n)
	return true, nil
}

// loaded ends the load of k, if one is registered: its waiters wake.
// Caller holds s.mu.
func (s *cacheShard) loadDone(k cacheKey) {
	if ch, ok := s.loading[k]; ok {
		delete(s.loading, k)
		close(ch)
	}
}

// abandon ends a load that failed (see copyOut): a waiter loads the
// chunk itself.
func (c *Cache) abandon(layer uint64, chunk int) {
	k := cacheKey{layer, chunk}
	s := c.shard(k)
	s.mu.Lock()
	s.loadDone(k)
	s.mu.Unlock()
}

// insert adds a chunk, ending its load (see copyOut); the cache takes
// ownership of data.
func (c *Cache) insert(layer uint64, chunk int, data []byte) {
	k := cacheKey{layer, chunk}
	s := c.shard(k)
	s.mu.Lock()
	s.loadDone(k)
	if _, ok := s.m[k]; ok || s.limit < len(data) {
		s.mu.Unlock()
		c.putBuf(data)
		return
	}
	var freed [][]byte
	for int(s.bytes.Load())+len(data) > s.limit && len(s.ents) > 0 {
		// CLOCK: skip referenced entries once, evict the first unreferenced.
		if s.hand >= len(s.ents) {
			s.hand = 0
		}
		e := &s.ents[s.hand]
		if e.ref {
			e.ref = false
			s.hand++
			continue
		}
		freed = append(freed, e.data)
		s.bytes.Add(-int64(len(e.data)))
		s.evictions.Add(1)
		delete(s.m, e.key)
		last := len(s.ents) - 1
		if s.hand != last {
			s.ents[s.hand] = s.ents[last]
			s.m[s.ents[s.hand].key] = s.hand
		}
		s.ents = s.ents[:last]
	}
	s.m[k] = len(s.ents)
	s.ents = append(s.ents, cacheEntry{key: k, data: data})
	s.bytes.Add(int64(len(data)))
	s.mu.Unlock()
	for _, b := range freed {
		c.putBuf(b)
	}
}

// Drop removes every chunk of a layer (when the layer is closed).
func (c *Cache) Drop(layer *Layer) {
	if c == nil {
		return
	}
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for j := 0; j < len(s.ents); {
			if s.ents[j].key.layer != layer.id {
				j++
				continue
			}
			s.bytes.Add(-int64(len(s.ents[j].data)))
			delete(s.m, s.ents[j].key)
			last := len(s.ents) - 1
			s.ents[j] = s.ents[last]
			if j != last {
				s.m[s.ents[j].key] = j
			}
			s.ents = s.ents[:last]
		}
		s.mu.Unlock()
	}
}

// loaded counts a chunk of n decompressed bytes loaded for a read
// through the cache. A nil cache counts nothing.
func (c *Cache) loaded(n int) {
	if c != nil {
		c.decompressed.Add(1)
		c.decompressedBytes.Add(uint64(n))
	}
}

// Stats returns the cache's counters. It takes no lock and allocates
// nothing; the counters are read one by one, so a snapshot taken during
// reads may be off by the reads in flight. A nil cache has none.
func (c *Cache) Stats() CacheStats {
	var st CacheStats
	if c == nil {
		return st
	}
	for i := range c.shards {
		s := &c.shards[i]
		st.Hits += s.hits.Load()
		st.Misses += s.misses.Load()
		st.Evictions += s.evictions.Load()
		st.Bytes += uint64(max(s.bytes.Load(), 0))
	}
	st.ChunksDecompressed = c.decompressed.Load()
	st.BytesDecompressed = c.decompressedBytes.Load()
	return st
}

// Bytes is the size of the decompressed chunks the cache holds.
func (c *Cache) Bytes() int { return int(c.Stats().Bytes) }

func (c *Cache) getBuf(n int) []byte {
	if c != nil {
		// Only a buffer of about the right size: a big one kept for a small
		// chunk would count len, not cap, against the cache's limit.
		if b, ok := c.pool.Get().(*[]byte); ok && cap(*b) >= n && cap(*b) <= 2*n {
			return (*b)[:n]
		}
	}
	return make([]byte, n)
}

func (c *Cache) putBuf(b []byte) {
	if c != nil {
		c.pool.Put(&b)
	}
}
