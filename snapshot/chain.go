package snapshot

import (
	"context"
	"fmt"
)

// MExtent is one entry of a chain's merged index: Count blocks from Start
// are stored in layer Layer at data-stream block DataOff. Blocks not
// covered by any MExtent read as zeros. 24 bytes.
type MExtent struct {
	Start   uint64
	DataOff uint64
	Count   uint32
	Layer   uint16
}

// End is the block after the extent.
func (e MExtent) End() uint64 { return e.Start + uint64(e.Count) }

// MaxChainDepth is the most layers one chain may have.
const MaxChainDepth = 65535

// Chain is a stack of layers (base first) merged into one sorted,
// non-overlapping index, so that a read costs one binary search whatever
// the depth (the LSMT idea). Zero extents of upper layers hide lower data
// and are dropped from the index (they read as zeros, like holes).
// A Chain is immutable and safe for concurrent use.
type Chain struct {
	layers []*Layer
	idx    []MExtent
	bs     uint64
	size   uint64
	cache  *Cache

	mapping []byte // the merged-index file idx points into (OpenChain); nil: idx is on the heap
}

// NewChain merges layers (base first) into one index clipped to size
// bytes. All layers must have the same block size.
func NewChain(layers []*Layer, size uint64, blockSize uint32, cache *Cache) (*Chain, error) {
	if err := checkLayers(layers, blockSize); err != nil {
		return nil, err
	}
	bs := uint64(blockSize)
	var idx, tmp []MExtent
	for k, l := range layers {
		tmp = overlay(tmp[:0], idx, l.exts, uint16(k))
		idx, tmp = tmp, idx
	}
	// Clip to the chain's size.
	limit := size / bs
	for len(idx) > 0 && idx[len(idx)-1].End() > limit {
		last := &idx[len(idx)-1]
		if last.Start >= limit {
			idx = idx[:len(idx)-1]
			continue
		}
		last.Count = uint32(limit - last.Start)
	}
	out := make([]MExtent, len(idx))
	copy(out, idx)
	return &Chain{layers: layers, idx: out, bs: bs, size: size, cache: cache}, nil
}

// checkLayers checks that layers can form one chain of block size bs.
func checkLayers(layers []*Layer, blockSize uint32) error {
	if len(layers) > MaxChainDepth {
		return fmt.Errorf("chain of %d layers exceeds %d", len(layers), MaxChainDepth)
	}
	for k, l := range layers {
		if l.t.BlockSize != blockSize {
			name := fmt.Sprintf("layer %d", k)
			if l.label != "" {
				name = "layer " + l.label
			}
			return fmt.Errorf("%w: %s has block size %d, the chain %d (all layers of a chain share one block size)",
				ErrFormat, name, l.t.BlockSize, blockSize)
		}
	}
	return nil
}

// overlay writes into dst the merge of lower (a merged index) with upper
// (one layer's extents, sorted): upper wins where they overlap.
func overlay(dst, lower []MExtent, upper []Extent, layer uint16) []MExtent {
	i := 0
	var cur MExtent
	have := false
	next := func() {
		have = i < len(lower)
		if have {
			cur = lower[i]
			i++
		}
	}
	next()
	for _, u := range upper {
		uEnd := u.End()
		for have && cur.End() <= u.Start {
			dst = appendMerged(dst, cur)
			next()
		}
		if have && cur.Start < u.Start {
			head := cur
			head.Count = uint32(u.Start - cur.Start)
			dst = appendMerged(dst, head)
			cur = cutFront(cur, u.Start)
		}
		for have && cur.Start < uEnd {
			if cur.End() <= uEnd {
				next()
				continue
			}
			cur = cutFront(cur, uEnd)
			break
		}
		if u.Kind == KindData {
			dst = appendMerged(dst, MExtent{Start: u.Start, DataOff: u.DataOff, Count: u.Count, Layer: layer})
		}
	}
	for have {
		dst = appendMerged(dst, cur)
		next()
	}
	return dst
}

func cutFront(e MExtent, at uint64) MExtent {
	d := at - e.Start
	e.Start = at
	e.DataOff += d
	e.Count -= uint32(d)
	return e
}

func appendMerged(dst []MExtent, e MExtent) []MExtent {
	if n := len(dst); n > 0 {
		p := &dst[n-1]
		if p.Layer == e.Layer && p.End() == e.Start && p.DataOff+uint64(p.Count) == e.DataOff &&
			uint64(p.Count)+uint64(e.Count) <= 1<<31 {
			p.Count += e.Count
			return dst
		}
	}
	return append(dst, e)
}

// describe names layer i for an error: its label when its source has one,
// and its place in the chain.
func (c *Chain) describe(i int) string {
	if lb := c.layers[i].label; lb != "" {
		return fmt.Sprintf("layer %s (%d of %d, base first)", lb, i+1, len(c.layers))
	}
	return fmt.Sprintf("layer %d of %d (base first)", i+1, len(c.layers))
}

// Size is the chain's virtual size in bytes.
func (c *Chain) Size() uint64 { return c.size }

// BlockSize is the chain's block size.
func (c *Chain) BlockSize() uint32 { return uint32(c.bs) }

// Layers returns the chain's layers, base first.
func (c *Chain) Layers() []*Layer { return c.layers }

// Index returns the merged index. Callers must not modify it.
func (c *Chain) Index() []MExtent { return c.idx }

// find returns the index of the first extent whose End is after block.
func (c *Chain) find(block uint64) int {
	lo, hi := 0, len(c.idx)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if c.idx[m].End() <= block {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// Lookup reports what backs block: ok is false for a hole (zeros);
// otherwise e is the merged extent containing it.
func (c *Chain) Lookup(block uint64) (e MExtent, ok bool) {
	i := c.find(block)
	if i < len(c.idx) && c.idx[i].Start <= block {
		return c.idx[i], true
	}
	return MExtent{}, false
}

// Backing reports which layer holds block and at which block of its
// data stream; ok is false when block reads as zeros. Two chains whose
// Backing of a block agree (the same *Layer, the same data block) read
// the same bytes there: layers are immutable.
func (c *Chain) Backing(block uint64) (l *Layer, dataBlock uint64, ok bool) {
	e, ok := c.Lookup(block)
	if !ok {
		return nil, 0, false
	}
	return c.layers[e.Layer], e.DataOff + (block - e.Start), true
}

// ReadAt fills p from the virtual disk at byte offset off. Holes read as
// zeros. It reads past nothing: off+len(p) must be within Size.
func (c *Chain) ReadAt(p []byte, off int64) (int, error) {
	return c.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt whose reads of layers over the network (see
// ContextReaderAt) end when ctx does.
func (c *Chain) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 || uint64(off) > c.size || uint64(len(p)) > c.size-uint64(off) {
		return 0, fmt.Errorf("read [%d,+%d) beyond size %d", off, len(p), c.size)
	}
	total := len(p)
	pos := uint64(off)
	i := c.find(pos / c.bs)
	for len(p) > 0 {
		if i >= len(c.idx) || c.idx[i].Start*c.bs > pos {
			// A hole up to the next extent.
			end := c.size
			if i < len(c.idx) {
				end = c.idx[i].Start * c.bs
			}
			n := min(uint64(len(p)), end-pos)
			clear(p[:n])
			p = p[n:]
			pos += n
			continue
		}
		e := &c.idx[i]
		n := min(uint64(len(p)), e.End()*c.bs-pos)
		dataOff := (e.DataOff+(pos/c.bs-e.Start))*c.bs + pos%c.bs
		if err := c.layers[e.Layer].ReadDataContext(ctx, p[:n], dataOff, c.cache); err != nil {
			return total - len(p), fmt.Errorf("%s: %w", c.describe(int(e.Layer)), err)
		}
		p = p[n:]
		pos += n
		i++
	}
	return total, nil
}

// Span reports whether block holds data (true) or reads as zeros, and
// for how many blocks from it (at most max) that stays so.
func (c *Chain) Span(block, max uint64) (data bool, n uint64) {
	i := c.find(block)
	if i < len(c.idx) && c.idx[i].Start <= block {
		// Data, possibly continuing through adjacent extents.
		end := c.idx[i].End()
		for j := i + 1; j < len(c.idx) && c.idx[j].Start == end && end-block < max; j++ {
			end = c.idx[j].End()
		}
		return true, min(end-block, max)
	}
	end := c.size / c.bs
	if i < len(c.idx) {
		end = c.idx[i].Start
	}
	return false, min(end-block, max)
}
