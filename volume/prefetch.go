package volume

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/obdvol/obdvol/snapshot"
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

// BlobPrefetcher is a layer source that fetches a list of its byte
// ranges (off, length pairs) at once, with many requests in flight, in
// the order given (repo.LazyBlob).
type BlobPrefetcher interface {
	Prefetch(ctx context.Context, ranges [][2]int64) error
}

// prefetchReaders is how many reads of a prefetch list run at once
// (after the fetch, they read local data: decompression and checksums).
const prefetchReaders = 4

// Prefetch reads the given ranges (a list recorded earlier), so that a
// lazily pulled volume fetches them now, in that order. The chunks the
// ranges need are first fetched together, layer by layer, with the
// requests in flight the layer's source allows (BlobPrefetcher), so that
// latency, not the number of ranges, bounds the replay; then every range
// is read through the volume (checked, and cached as any read), a few at
// once. Ranges past the end are skipped. It returns the bytes read.
func (v *Volume) Prefetch(ranges []Range) (int64, error) {
	if err := v.prefetchBlobs(ranges); err != nil {
		return 0, err
	}
	var total atomic.Int64
	size := int64(v.Size())
	g, ctx := errgroup.WithContext(v.ctx)
	g.SetLimit(prefetchReaders)
	for _, r := range ranges {
		for off, end := r.Off, min(r.Off+r.Len, size); off >= 0 && off < end && ctx.Err() == nil; {
			n := min(1<<20, end-off)
			at := off
			g.Go(func() error {
				buf := make([]byte, n)
				if _, err := v.ReadAtContext(ctx, buf, at); err != nil {
					return err
				}
				total.Add(n)
				return nil
			})
			off += n
		}
	}
	err := g.Wait()
	return total.Load(), err
}

// prefetchBlobs fetches the stored chunks that ranges read from the lazy
// layers of the chain, each layer's list in the order of the ranges, the
// layers at once. Blocks written since the snapshot are fetched too (a
// few bytes for nothing, never a wrong byte).
func (v *Volume) prefetchBlobs(ranges []Range) error {
	v.ioMu.RLock()
	if err := v.checkRange(0, 0); err != nil {
		v.ioMu.RUnlock()
		return err
	}
	c := v.chain
	c.acquire()
	v.ioMu.RUnlock()
	defer c.release()
	lists := blobRanges(c.c, ranges)
	g, ctx := errgroup.WithContext(v.ctx)
	for src, list := range lists {
		g.Go(func() error { return src.Prefetch(ctx, list) })
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("volume %s: prefetch: %w", v.name, err)
	}
	return nil
}

// blobRanges maps byte ranges of a chain to the stored chunks they read,
// per layer source that prefetches, in the order of the ranges, merging
// chunks that follow each other.
func blobRanges(ch *snapshot.Chain, ranges []Range) map[BlobPrefetcher][][2]int64 {
	out := map[BlobPrefetcher][][2]int64{}
	bs, size := uint64(ch.BlockSize()), ch.Size()
	for _, r := range ranges {
		if r.Off < 0 || r.Len <= 0 || uint64(r.Off) >= size {
			continue
		}
		blk, last := uint64(r.Off)/bs, (uint64(r.Off)+min(uint64(r.Len), size-uint64(r.Off))-1)/bs
		for blk <= last {
			e, ok := ch.Lookup(blk)
			if !ok {
				_, n := ch.Span(blk, last-blk+1)
				blk += max(n, 1)
				continue
			}
			n := min(e.End(), last+1) - blk
			l := ch.Layers()[e.Layer]
			if src, ok := l.Source().(BlobPrefetcher); ok {
				dataOff := (e.DataOff + blk - e.Start) * bs
				cs := uint64(l.Trailer().ChunkSize)
				list := out[src]
				for ci := dataOff / cs; ci*cs < dataOff+n*bs && ci < uint64(l.Chunks()); ci++ {
					off, ln := l.ChunkSpan(int(ci))
					if k := len(list) - 1; k >= 0 && list[k][0]+list[k][1] == off {
						list[k][1] += int64(ln)
						continue
					}
					list = append(list, [2]int64{off, int64(ln)})
				}
				out[src] = list
			}
			blk += n
		}
	}
	return out
}
