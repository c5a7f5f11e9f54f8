package volume

import (
	"sync"
)

// Range is a byte range of a volume.
type Range struct {
	Off int64 `json:"off"`
	Len int64 `json:"len"`
}

// readRecorder keeps the ranges a run read, in first-read order, at
// 64 KiB granularity and bounded in count: a prefetch list.
type readRecorder struct {
	mu     sync.Mutex
	seen   map[int64]bool
	ranges []Range
	max    int
}

const prefetchGrain = 64 << 10

// RecordReads starts recording the ranges read from the volume (at most
// max distinct 64 KiB pieces); Recorded returns them. Reads cost one
// atomic load more while no recorder is set.
func (v *Volume) RecordReads(max int) {
	v.recorder.Store(&readRecorder{seen: map[int64]bool{}, max: max})
}

// Recorded returns the ranges read since RecordReads, merged where
// adjacent, in the order they were first read.
func (v *Volume) Recorded() []Range {
	r := v.recorder.Load()
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Range
	for _, x := range r.ranges {
		if n := len(out); n > 0 && out[n-1].Off+out[n-1].Len == x.Off {
			out[n-1].Len += x.Len
			continue
		}
		out = append(out, x)
	}
	return out
}

func (r *readRecorder) record(off, n int64, size uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for g := off / prefetchGrain; g*prefetchGrain < off+n && len(r.ranges) < r.max; g++ {
		if r.seen[g] {
			continue
		}
		r.seen[g] = true
		l := min(int64(prefetchGrain), int64(size)-g*prefetchGrain)
		r.ranges = append(r.ranges, Range{g * prefetchGrain, l})
	}
}

// Prefetch reads the given ranges (a list recorded earlier), so that a
// lazily pulled volume fetches them now, in that order. Ranges past the
// end are skipped. It returns the bytes read.
func (v *Volume) Prefetch(ranges []Range) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	size := int64(v.Size())
	for _, r := range ranges {
		for off, end := r.Off, min(r.Off+r.Len, size); off >= 0 && off < end; {
			n := min(int64(len(buf)), end-off)
			if _, err := v.ReadAt(buf[:n], off); err != nil {
				return total, err
			}
			off += n
			total += n
		}
	}
	return total, nil
}
