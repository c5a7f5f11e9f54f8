package volume

import "fmt"

// Map reports which ranges of [off, off+n) hold data and which read as
// zeros (device.Mapper): written blocks are data, zeroed or discarded
// blocks and blocks no layer holds are holes that read as zeros. Ranges
// are block-aligned inside, clipped to [off, off+n) at the ends.
func (v *Volume) Map(off, n int64, fn func(length int64, hole, zero bool) bool) error {
	v.ioMu.RLock()
	defer v.ioMu.RUnlock()
	if err := v.checkRange(off, 0); err != nil || n < 0 || uint64(n) > v.size-uint64(off) {
		return fmt.Errorf("%w: map [%d,+%d) beyond volume size %d", ErrRange, off, n, v.size)
	}
	bs := v.bs
	pos, end := uint64(off), uint64(off)+uint64(n)
	for pos < end {
		blk := pos / bs
		want := (end - blk*bs + bs - 1) / bs
		st, cnt := v.w.run(blk, want)
		if st == stUnset && v.frozen != nil {
			st, cnt = v.frozen.run(blk, cnt)
		}
		data := st == stData
		if st == stUnset {
			data, cnt = v.chain.c.Span(blk, cnt)
		}
		runEnd := min((blk+cnt)*bs, end)
		if !fn(int64(runEnd-pos), !data, !data) {
			return nil
		}
		pos = runEnd
	}
	return nil
}
