package volume

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/obdvol/obdvol/metadata"
)

// Volume is an open volume: a chain of sealed layers plus the writable
// layer on top. It is the device.Backend that ublk and NBD serve: ReadAt,
// WriteAt, Flush, Discard, WriteZeroes and Size are safe for concurrent
// use. The process that opened it holds the volume's lock until Close.
//
// Reads look at the writable layer's bitmap first (data here, zeros here,
// or not written here), then the chain's merged index: one lookup each,
// whatever the chain's depth.
type Volume struct {
	m    *Manager
	name string
	lock *volumeLock

	// ioMu is shared by reads and writes and taken exclusively only to
	// swap the chain and writable layer (seal's freeze, flatten, resize,
	// Close). It is never held across a read of the chain's layers
	// (which for a lazy layer may wait up to its retry limit on a
	// registry): a read resolves its range under ioMu, takes a reference
	// to the chain, releases ioMu and reads the immutable layers; a
	// write fetches the lower-layer blocks it must merge the same way,
	// before taking ioMu (see warm). So a freeze never waits for the
	// network, and, since Go's RWMutex holds new readers back while a
	// writer waits, neither does any other I/O.
	ioMu   sync.RWMutex
	rec    *metadata.Volume
	chain  *chainRef // nil once closed
	w      *writable
	frozen *writable // being sealed (reads fall through w, then frozen)
	bs     uint64
	size   uint64
	broken error // set when a swap failed half-way: I/O refused

	readOnly bool // opened by OpenReadOnly: every change fails with ErrReadOnly

	sealMu  sync.Mutex // one seal, flatten or resize at a time
	sealErr error      // why the seal of frozen failed at open (under sealMu)

	// stripes order sub-block read-modify-writes against every other
	// write of the same block: an RMW holds its block's stripe
	// exclusively from the read to the rewrite, whole-block writes and
	// zeroings hold the stripes of their blocks shared (taken in stripe
	// order, so no two writers deadlock). A disk never loses sector A
	// because sector B of the same block was written.
	stripes [nStripes]sync.RWMutex

	recorder atomic.Pointer[readRecorder] // prefetch-list recording, usually nil

	// ctx ends when the volume is closed: reads of lazy layers in
	// flight (made by ReadAt, with no context of their own) stop then.
	ctx    context.Context
	cancel context.CancelFunc
}

// Name is the volume's name.
func (v *Volume) Name() string { return v.name }

// Size is the virtual size in bytes.
func (v *Volume) Size() uint64 {
	v.ioMu.RLock()
	defer v.ioMu.RUnlock()
	return v.size
}

// BlockSize is the volume's block size.
func (v *Volume) BlockSize() uint32 { return uint32(v.bs) }

// Record returns a copy of the volume's catalogue record as last loaded.
func (v *Volume) Record() metadata.Volume {
	v.ioMu.RLock()
	defer v.ioMu.RUnlock()
	r := *v.rec
	r.Layers = append([]string(nil), v.rec.Layers...)
	return r
}

func (v *Volume) checkRange(off int64, n int) error {
	if v.broken != nil {
		return v.broken
	}
	if v.w == nil {
		return fmt.Errorf("volume %s: %w", v.name, ErrClosed)
	}
	if err := v.w.err(); err != nil {
		return fmt.Errorf("volume %s: %w", v.name, err) // fail-stop
	}
	if off < 0 || uint64(off) > v.size || uint64(n) > v.size-uint64(off) {
		return fmt.Errorf("%w: [%d,+%d) beyond volume size %d", ErrRange, off, n, v.size)
	}
	return nil
}

// ReadAt reads len(p) bytes at off. Holes read as zeros. Reads of
// lazy layers end when the volume is closed.
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	return v.ReadAtContext(v.ctx, p, off)
}

// ReadAtContext is ReadAt whose reads of lazy layers (range requests to
// a registry) end when ctx does.
func (v *Volume) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	v.ioMu.RLock()
	if err := v.checkRange(off, len(p)); err != nil {
		v.ioMu.RUnlock()
		return 0, err
	}
	if r := v.recorder.Load(); r != nil {
		r.record(off, int64(len(p)), v.size)
	}
	if err := v.readUnlocking(ctx, p, uint64(off)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// readUnlocking reads p at pos. The caller holds ioMu shared; it is
// released on return. Blocks of the writable and frozen layers (local
// files) are read under it; for blocks of the chain, the chain is
// referenced and ioMu released while its layers are read, then taken
// again (and the range checked again: the volume may have been closed)
// for the rest. It does not allocate.
func (v *Volume) readUnlocking(ctx context.Context, p []byte, pos uint64) error {
	bs := v.bs
	for len(p) > 0 {
		blk, in := pos/bs, pos%bs
		want := (in + uint64(len(p)) + bs - 1) / bs
		st, n, src := v.localRun(blk, want)
		nb := min(n*bs-in, uint64(len(p)))
		var err error
		switch st {
		case stData:
			err = src.readData(p[:nb], pos)
		case stZero:
			clear(p[:nb])
		default:
			c := v.chain
			c.acquire()
			v.ioMu.RUnlock()
			_, err = c.c.ReadAtContext(ctx, p[:nb], int64(pos))
			c.release()
			if err == nil && uint64(len(p)) > nb {
				v.ioMu.RLock()
				err = v.checkRange(int64(pos+nb), len(p)-int(nb))
				if err != nil {
					v.ioMu.RUnlock()
					return err
				}
			}
			if err != nil {
				return fmt.Errorf("volume %s: read at %d: %w", v.name, pos, err)
			}
			if uint64(len(p)) == nb {
				return nil
			}
		}
		if err != nil {
			v.ioMu.RUnlock()
			return fmt.Errorf("volume %s: read at %d: %w", v.name, pos, err)
		}
		p = p[nb:]
		pos += nb
	}
	v.ioMu.RUnlock()
	return nil
}

// localRun says where blocks blk.. come from locally: the state of the
// run starting at blk (at most want blocks) in the writable layer, or,
// where it has nothing, in the frozen layer of an unfinished seal; src is
// the layer holding that run. stUnset means the chain. Caller holds ioMu.
func (v *Volume) localRun(blk, want uint64) (st uint8, n uint64, src *writable) {
	st, n = v.w.run(blk, want)
	if st == stUnset && v.frozen != nil {
		st, n = v.frozen.run(blk, n)
		return st, n, v.frozen
	}
	return st, n, v.w
}

// readLocked reads p at pos holding ioMu shared throughout, chain blocks
// included: only for a write's merge of a partial block whose fetched
// bytes a chain swapped in meanwhile no longer holds (a flatten's new
// layer, local).
func (v *Volume) readLocked(p []byte, pos uint64) error {
	bs := v.bs
	for len(p) > 0 {
		blk, in := pos/bs, pos%bs
		want := (in + uint64(len(p)) + bs - 1) / bs
		st, n, src := v.localRun(blk, want)
		nb := min(n*bs-in, uint64(len(p)))
		var err error
		switch st {
		case stData:
			err = src.readData(p[:nb], pos)
		case stZero:
			clear(p[:nb])
		default:
			_, err = v.chain.c.ReadAtContext(v.ctx, p[:nb], int64(pos))
		}
		if err != nil {
			return fmt.Errorf("volume %s: read at %d: %w", v.name, pos, err)
		}
		p = p[nb:]
		pos += nb
	}
	return nil
}

// fetched is a lower-layer block that a write fetched before taking ioMu
// (see warm): its bytes as chain c holds them; the write holds a
// reference to c until it ends.
type fetched struct {
	blk uint64
	buf []byte // nil: nothing fetched
	c   *chainRef
}

// edges are the fetched first and last partial blocks of one write.
type edges [2]fetched

// take returns the fetched bytes of blk if chain c (the volume's chain
// now) still holds them: the chain they were read from, or one that a
// seal or flatten put in its place since and that takes blk from the
// same layer and data block (layers are immutable). Otherwise nil.
func (e *edges) take(blk uint64, c *chainRef) []byte {
	for i := range e {
		f := &e[i]
		if f.buf == nil || f.blk != blk {
			continue
		}
		if f.c != c {
			l1, d1, ok1 := f.c.c.Backing(blk)
			l2, d2, ok2 := c.c.Backing(blk)
			if ok1 != ok2 || l1 != l2 || d1 != d2 {
				return nil
			}
		}
		b := f.buf
		f.buf = nil
		return b
	}
	return nil
}

func (e *edges) release() {
	for i := range e {
		if e[i].c != nil {
			e[i].c.release()
			e[i] = fetched{}
		}
	}
}

// warm fetches, into e, the lower-layer blocks that a write of n bytes at
// off must merge (its partial first and last blocks) before the write
// takes ioMu: the chain is referenced and read with no lock held, so a
// slow lazy fetch holds up neither a freeze nor other I/O. Blocks the
// writable or frozen layer holds need no fetch. A failed fetch is left
// to the merge, which reads again and reports it.
func (v *Volume) warm(off int64, n int, e *edges) {
	if off < 0 || n <= 0 {
		return
	}
	bs := v.bs
	pos, end := uint64(off), uint64(off)+uint64(n)
	first, last := pos/bs, (end-1)/bs
	if pos%bs != 0 || end < (first+1)*bs {
		e[0] = v.fetchBlock(first)
	}
	if last != first && end%bs != 0 {
		e[1] = v.fetchBlock(last)
	}
}

// fetchBlock reads block blk from the chain with no lock held, when
// neither the writable nor the frozen layer holds it.
func (v *Volume) fetchBlock(blk uint64) fetched {
	v.ioMu.RLock()
	if v.checkRange(int64(blk*v.bs), int(v.bs)) != nil {
		v.ioMu.RUnlock()
		return fetched{}
	}
	st, _ := v.w.run(blk, 1)
	if st == stUnset && v.frozen != nil {
		st, _ = v.frozen.run(blk, 1)
	}
	if st != stUnset {
		v.ioMu.RUnlock()
		return fetched{}
	}
	c := v.chain
	c.acquire()
	v.ioMu.RUnlock()
	buf := make([]byte, v.bs)
	if _, err := c.c.ReadAtContext(v.ctx, buf, int64(blk*v.bs)); err != nil {
		c.release()
		return fetched{}
	}
	return fetched{blk: blk, buf: buf, c: c}
}

// WriteAt writes p at off. Whole blocks go straight to the writable
// layer; a partial block at either end is read, merged and rewritten.
// Writes are durable only after Flush.
func (v *Volume) WriteAt(p []byte, off int64) (int, error) {
	if v.readOnly {
		return 0, fmt.Errorf("volume %s: %w", v.name, ErrReadOnly)
	}
	var e edges
	v.warm(off, len(p), &e)
	defer e.release()
	v.ioMu.RLock()
	defer v.ioMu.RUnlock()
	if err := v.checkRange(off, len(p)); err != nil || len(p) == 0 {
		return 0, err
	}
	if err := v.writeLocked(p, uint64(off), &e); err != nil {
		return 0, fmt.Errorf("volume %s: write at %d: %w", v.name, off, err)
	}
	return len(p), nil
}

// nStripes is the number of block stripes (see Volume.stripes).
const nStripes = 256

// rlockBlocks takes the stripes of blocks [blk, blk+n) shared, in stripe
// order; runlockBlocks releases them. Neither allocates.
func (v *Volume) rlockBlocks(blk, n uint64) {
	lo, hi, wrap := stripeSpan(blk, n)
	for i := range wrap {
		v.stripes[i].RLock()
	}
	for i := lo; i < hi; i++ {
		v.stripes[i].RLock()
	}
}

func (v *Volume) runlockBlocks(blk, n uint64) {
	lo, hi, wrap := stripeSpan(blk, n)
	for i := lo; i < hi; i++ {
		v.stripes[i].RUnlock()
	}
	for i := range wrap {
		v.stripes[i].RUnlock()
	}
}

// stripeSpan returns the stripes of blocks [blk, blk+n): [lo, hi) plus
// [0, wrap) when the range wraps around the stripe count.
func stripeSpan(blk, n uint64) (lo, hi, wrap int) {
	if n >= nStripes {
		return 0, nStripes, 0
	}
	lo = int(blk % nStripes)
	end := lo + int(n)
	if end > nStripes {
		return lo, nStripes, end - nStripes
	}
	return lo, end, 0
}

// rmwBlock writes p at byte in of block blk, which p does not cover
// whole: the block is read, merged and rewritten holding its stripe
// exclusively, so concurrent writes to other bytes of the block are kept.
// A block from a lower layer was fetched by warm before the write took
// ioMu (e): no layer is read here unless the chain changed meanwhile.
func (v *Volume) rmwBlock(p []byte, blk, in uint64, e *edges) error {
	mu := &v.stripes[blk%nStripes]
	mu.Lock()
	defer mu.Unlock()
	st, _ := v.w.run(blk, 1)
	if st == stUnset && v.frozen != nil {
		st, _ = v.frozen.run(blk, 1)
	}
	var buf []byte
	if st == stUnset {
		buf = e.take(blk, v.chain)
	}
	if buf == nil {
		buf = make([]byte, v.bs)
		if err := v.readLocked(buf, blk*v.bs); err != nil {
			return err
		}
	}
	copy(buf[in:], p)
	return v.w.writeBlocks(buf, blk)
}

func (v *Volume) writeLocked(p []byte, pos uint64, e *edges) error {
	bs := v.bs
	if in := pos % bs; in != 0 || uint64(len(p)) < bs {
		// Partial head block.
		n := min(bs-in, uint64(len(p)))
		if err := v.rmwBlock(p[:n], pos/bs, in, e); err != nil {
			return err
		}
		p = p[n:]
		pos += n
	}
	if full := uint64(len(p)) / bs * bs; full > 0 {
		v.rlockBlocks(pos/bs, full/bs)
		err := v.w.writeBlocks(p[:full], pos/bs)
		v.runlockBlocks(pos/bs, full/bs)
		if err != nil {
			return err
		}
		p = p[full:]
		pos += full
	}
	if len(p) > 0 {
		// Partial tail block.
		return v.rmwBlock(p, pos/bs, 0, e)
	}
	return nil
}

// WriteZeroes makes [off, off+n) read as zeros; whole blocks become a zero
// extent (no data stored), partial blocks are written.
func (v *Volume) WriteZeroes(off int64, n int64) error {
	if v.readOnly {
		return fmt.Errorf("volume %s: %w", v.name, ErrReadOnly)
	}
	if n < 0 || int64(int(n)) != n {
		return fmt.Errorf("%w: length %d", ErrRange, n)
	}
	var e edges
	v.warm(off, int(n), &e)
	defer e.release()
	v.ioMu.RLock()
	defer v.ioMu.RUnlock()
	if err := v.checkRange(off, int(n)); err != nil || n == 0 {
		return err
	}
	bs := v.bs
	pos, end := uint64(off), uint64(off)+uint64(n)
	first := (pos + bs - 1) / bs
	last := end / bs
	if first >= last {
		return v.writeLocked(make([]byte, n), pos, &e)
	}
	if head := first*bs - pos; head > 0 {
		if err := v.writeLocked(make([]byte, head), pos, &e); err != nil {
			return err
		}
	}
	if tail := end - last*bs; tail > 0 {
		if err := v.writeLocked(make([]byte, tail), last*bs, &e); err != nil {
			return err
		}
	}
	v.rlockBlocks(first, last-first)
	defer v.runlockBlocks(first, last-first)
	return v.w.zeroBlocks(first, last-first)
}

// Discard is WriteZeroes: discarded blocks read as zeros afterwards,
// which is what filesystems and databases expect of a thin volume.
func (v *Volume) Discard(off int64, n int64) error { return v.WriteZeroes(off, n) }

// Flush makes every completed write durable.
func (v *Volume) Flush() error {
	v.ioMu.RLock()
	defer v.ioMu.RUnlock()
	if v.w == nil {
		return fmt.Errorf("volume %s: %w", v.name, ErrClosed)
	}
	if err := v.w.flush(); err != nil {
		return fmt.Errorf("volume %s: flush: %w", v.name, err)
	}
	return nil
}

// WritableBytes is the disk space the writable layer uses.
func (v *Volume) WritableBytes() uint64 {
	v.ioMu.RLock()
	defer v.ioMu.RUnlock()
	if v.w == nil {
		return 0
	}
	return v.w.allocated()
}

// Close flushes and releases the volume. It waits for a seal in progress.
// I/O after Close fails with ErrClosed.
func (v *Volume) Close() error {
	v.cancel() // reads of lazy layers in flight stop
	v.sealMu.Lock()
	defer v.sealMu.Unlock()
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	if v.w == nil {
		return nil
	}
	err := v.w.close()
	if v.frozen != nil {
		if e := v.frozen.close(); err == nil {
			err = e
		}
		v.frozen = nil
	}
	v.w = nil
	// Reads still in flight hold their own references: the layers are
	// closed when the last of them ends.
	v.chain.release()
	v.chain = nil
	v.lock.release()
	return err
}
