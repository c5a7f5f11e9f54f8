package volume

import "github.com/obdvol/obdvol/journal"

// Block states of the writable layer (the journal's record states).
const (
	stUnset = 0            // not written here: read through to the chain
	stZero  = journal.Zero // discarded or zeroed here: reads as zeros
	stData  = journal.Data // written here: read the data file
)

const (
	pageShift  = 14 // 16384 blocks per page
	pageBlocks = 1 << pageShift
	pageWords  = pageBlocks * 2 / 64
)

// bitmap keeps two bits of state per block in pages allocated on demand;
// a page whose blocks all share one state is stored as that state alone,
// so a 1 TiB volume that is all unset or all zero costs a few KiB.
// It is not safe for concurrent use: the writable layer locks around it.
type bitmap struct {
	uniform []uint8
	pages   []*[pageWords]uint64
	blocks  uint64
}

func newBitmap(blocks uint64) *bitmap {
	b := &bitmap{}
	b.resize(blocks)
	return b
}

func (b *bitmap) resize(blocks uint64) {
	np := int((blocks + pageBlocks - 1) >> pageShift)
	if np > cap(b.pages) {
		// Exactly the new size: no doubling of a large page table.
		pages := make([]*[pageWords]uint64, len(b.pages), np)
		copy(pages, b.pages)
		uniform := make([]uint8, len(b.uniform), np)
		copy(uniform, b.uniform)
		b.pages, b.uniform = pages, uniform
	}
	for len(b.pages) < np {
		b.pages = append(b.pages, nil)
		b.uniform = append(b.uniform, stUnset)
	}
	b.pages = b.pages[:np]
	b.uniform = b.uniform[:np]
	if blocks < b.blocks && blocks%pageBlocks != 0 {
		// Forget the state of blocks past the new end in the last page.
		b.setRange(blocks, uint64(np)<<pageShift-blocks, stUnset, true)
	}
	b.blocks = blocks
}

func (b *bitmap) get(blk uint64) uint8 {
	p := b.pages[blk>>pageShift]
	if p == nil {
		return b.uniform[blk>>pageShift]
	}
	i := blk & (pageBlocks - 1)
	return uint8(p[i>>5]>>((i&31)*2)) & 3
}

// run returns the state of blk and how many blocks from blk (at most max)
// share it.
func (b *bitmap) run(blk, max uint64) (uint8, uint64) {
	st := b.get(blk)
	n := uint64(1)
	for n < max {
		next := blk + n
		if pi := next >> pageShift; b.pages[pi] == nil {
			if b.uniform[pi] != st {
				break
			}
			n = (pi+1)<<pageShift - blk
			continue
		}
		if b.get(next) != st {
			break
		}
		n++
	}
	return st, min(n, max)
}

func (b *bitmap) set(start, count uint64, st uint8) { b.setRange(start, count, st, false) }

func (b *bitmap) setRange(start, count uint64, st uint8, beyond bool) {
	end := start + count
	if !beyond && end > b.blocks {
		end = b.blocks
	}
	for blk := start; blk < end; {
		pi := blk >> pageShift
		pstart := pi << pageShift
		pend := pstart + pageBlocks
		if blk == pstart && end >= pend {
			b.pages[pi] = nil
			b.uniform[pi] = st
			blk = pend
			continue
		}
		p := b.pages[pi]
		if p == nil {
			if b.uniform[pi] == st {
				blk = min(end, pend)
				continue
			}
			p = new([pageWords]uint64)
			if u := uint64(b.uniform[pi]); u != 0 {
				fill := u * 0x5555555555555555
				for w := range p {
					p[w] = fill
				}
			}
			b.pages[pi] = p
		}
		stop := min(end, pend)
		for ; blk < stop; blk++ {
			i := blk & (pageBlocks - 1)
			sh := (i & 31) * 2
			p[i>>5] = p[i>>5]&^(3<<sh) | uint64(st)<<sh
		}
	}
}

// runs calls fn for each maximal run of blocks in a state other than unset.
func (b *bitmap) runs(fn func(start, count uint64, st uint8) error) error {
	for blk := uint64(0); blk < b.blocks; {
		st, n := b.run(blk, b.blocks-blk)
		if st != stUnset {
			if err := fn(blk, n, st); err != nil {
				return err
			}
		}
		blk += n
	}
	return nil
}
