package snapshot

import (
	"sync"
)

// Cache keeps decompressed chunks of any number of layers, bounded in
// bytes, with CLOCK eviction. A hit copies out under a shard lock (a
// memcpy, never I/O) and allocates nothing. A nil *Cache caches nothing.
type Cache struct {
	shards [cacheShards]cacheShard
	pool   sync.Pool
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
	mu     sync.Mutex
	m      map[cacheKey]int // index into ents
	ents   []cacheEntry
	hand   int
	bytes  int
	limit  int
	hits   uint64
	misses uint64
	_      [32]byte
}

// NewCache returns a cache of about limit bytes of decompressed chunks.
func NewCache(limit int) *Cache {
	c := &Cache{}
	for i := range c.shards {
		c.shards[i].m = make(map[cacheKey]int)
		c.shards[i].limit = limit / cacheShards
	}
	return c
}

func (c *Cache) shard(k cacheKey) *cacheShard {
	h := k.layer*0x9E3779B97F4A7C15 ^ uint64(k.chunk)*0xC2B2AE3D27D4EB4F
	return &c.shards[(h>>32)%cacheShards]
}

// copyOut copies from a cached chunk into *p at chunk offset in, advancing
// *p and *off. It reports whether the chunk was cached.
func (c *Cache) copyOut(layer uint64, chunk, in int, p *[]byte, off *uint64) bool {
	k := cacheKey{layer, chunk}
	s := c.shard(k)
	s.mu.Lock()
	i, ok := s.m[k]
	if !ok {
		s.misses++
		s.mu.Unlock()
		return false
	}
	e := &s.ents[i]
	e.ref = true
	n := copy(*p, e.data[in:])
	s.hits++
	s.mu.Unlock()
	*p = (*p)[n:]
	*off += uint64(n)
	return true
}

// insert adds a chunk; the cache takes ownership of data.
func (c *Cache) insert(layer uint64, chunk int, data []byte) {
	k := cacheKey{layer, chunk}
	s := c.shard(k)
	s.mu.Lock()
	if _, ok := s.m[k]; ok || s.limit < len(data) {
		s.mu.Unlock()
		c.putBuf(data)
		return
	}
	var freed [][]byte
	for s.bytes+len(data) > s.limit && len(s.ents) > 0 {
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
		s.bytes -= len(e.data)
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
	s.bytes += len(data)
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
			s.bytes -= len(s.ents[j].data)
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

// Stats returns hit and miss counts.
func (c *Cache) Stats() (hits, misses uint64) {
	if c == nil {
		return 0, 0
	}
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		hits += s.hits
		misses += s.misses
		s.mu.Unlock()
	}
	return
}

// Bytes is the size of the decompressed chunks the cache holds.
func (c *Cache) Bytes() int {
	if c == nil {
		return 0
	}
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += s.bytes
		s.mu.Unlock()
	}
	return n
}

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
