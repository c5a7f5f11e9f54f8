package repo

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// Pipelined fetches: at 100 ms from the registry a lazy blob is bound by
// round trips, not bytes, unless many requests are in flight. A LazyBlob
// therefore
//
//   - fetches the missing runs a read (or fill, or prefetch) needs at
//     once, a large span cut into pieces, up to LazyOptions.Concurrency
//     requests in flight for the blob (slots);
//   - fetches the read-ahead of a sequential reader in the background: a
//     read returns when its own pages are present, while the window past
//     it (doubling up to LazyOptions.ReadAhead) is in flight, so that a
//     sequential read streams at about window/RTT;
//   - replays a prefetch list (Prefetch) with the window full.
//
// Nothing of the page rules changes: a page is claimed in inflight by one
// fetch at a time (concurrent misses wait for it), and each fetch commits
// its pages as commit (lazy_fill.go) always did. A piece is claimed just
// before it gets its slot, in the order of the blob, so a reader finds
// the pages ahead of it in flight rather than queued behind others.
// Close cancels every fetch and waits for the goroutines to end.

// fetchCall is one range fetch of pages [first, last]; its pages wait on
// done, after which err is its outcome.
type fetchCall struct {
	first, last int64
	ahead       bool // for no reader yet: read-ahead, prefetch
	done        chan struct{}
	err         error
}

// streamRun is how long a sequential run must be for the read-ahead to
// run ahead of the reader and grow fast: shorter runs (files read whole,
// a few chunks each) keep the waste past their end as small as before.
const streamRun = 512 << 10

// errClosed is returned by reads of a LazyBlob being closed.
var errClosed = errors.New("lazy blob closed")

// minPiece is the smallest piece a span is cut into for concurrency: a
// request smaller than this costs a round trip for too little.
const minPiece = 1 << 20

// readPiece is the piece size for a read's own span of n bytes: the span
// shared out over the slots, at least minPiece, at most maxFetchSpan.
func (b *LazyBlob) readPiece(n int64) int64 {
	c := int64(b.opts.Concurrency)
	return min(maxFetchSpan, max(minPiece, (n+c-1)/c))
}

// readAhead notes a read of [off, end) and returns where its own fetch
// ends. A random read fetches what it needs. A sequential read that
// misses starts a read-ahead window past its end, twice the read. With
// Concurrency 1 a read that misses fetches it itself, doubling (as
// before pipelining). Otherwise windows are fetched in the background:
//
//   - in the first streamRun bytes of a sequential run, as before
//     pipelining: the next window, four times the last, when the reader
//     gets past the last (so a short run, a file read whole, fetches no
//     more past its end than before);
//   - then the run is a stream (see stream): ReadAhead is kept issued
//     past the reader, so that the pipe does not empty while the reader
//     drains what landed.
//
// Reads inside a span announced by WillRead count as nothing: the span
// was noted as one read.
func (b *LazyBlob) readAhead(off, end int64) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.noteRead(off, end)
}

// noteRead is readAhead with b.mu held.
func (b *LazyBlob) noteRead(off, end int64) int64 {
	if off >= b.hintStart && end <= b.hintEnd {
		return end
	}
	seq := off == b.lastEnd
	b.lastEnd = end
	if !seq {
		b.raSize, b.raRun, b.raStream = 0, end-off, false
		return end
	}
	b.raRun += end - off
	if b.complete {
		return end
	}
	if b.opts.Concurrency == 1 {
		if _, miss := b.present.firstMissing(off/b.page, (end-1)/b.page); !miss {
			return end
		}
		b.raSize = min(b.opts.ReadAhead, max(2*(end-off), 2*b.raSize))
		return min(b.size, end+b.raSize)
	}
	switch {
	case b.raSize == 0:
		if _, miss := b.present.firstMissing(off/b.page, (end-1)/b.page); !miss {
			return end // a sequential read of local data (prefetched, say) starts none
		}
		b.raIssued = end
		b.window(end, min(b.opts.ReadAhead, 2*(end-off)))
		b.raStream = b.raRun >= streamRun // a run of large reads: a stream already
	case b.raRun < streamRun:
		if off >= b.raIssued {
			b.window(b.raIssued, min(b.opts.ReadAhead, 4*b.raSize))
		}
	default:
		b.raStream = true
	}
	b.stream()
	return end
}

// stream tops up the read-ahead of a stream (a sequential run past
// streamRun). Its target is eight times the run so far, at most
// ReadAhead (ReadAhead at once when a read had to wait for the
// read-ahead: the pipe is short of the round trip); whenever no more
// than half the target is issued past the reader's last read, it starts
// windows of half the target until the target is, at most maxWindows
// running. It runs on every read and whenever a window lands, so that
// what is in flight does not wait for the reader to drain what landed:
// latency, not the reader, bounds the stream, and at most ReadAhead is
// fetched past where the reader stops. A stream's window goes in pieces
// of ReadAhead/Concurrency, at least minPiece: a full read-ahead fills
// the slots, in requests as large as that allows (a registry's cost is
// per request as much as per byte). b.mu is held.
func (b *LazyBlob) stream() {
	target := min(b.opts.ReadAhead, 8*b.raRun)
	if b.raWaited {
		target = b.opts.ReadAhead
	}
	half := max(target/2, b.page)
	for b.raStream && !b.closed && b.raLive < maxWindows {
		from := max(b.raIssued, b.lastEnd)
		if from >= b.size || from-b.lastEnd > target-half {
			return
		}
		b.window(from, half)
	}
}

// maxWindows is how many read-ahead windows of one blob run at once.
const maxWindows = 4

// window starts fetching the read-ahead window [from, from+size) in the
// background (the pages missing from it), and notes it as the last
// window. b.mu is held.
func (b *LazyBlob) window(from, size int64) {
	from = max(from, b.lastEnd)
	if from >= b.size || b.closed || b.raLive >= maxWindows {
		return // nothing left, or enough read-ahead running: not yet
	}
	to := min(b.size, (from+size+b.page-1)/b.page*b.page) // the pages fetched
	b.raStart, b.raSize, b.raIssued, b.raWaited = from, size, to, false
	p, miss := b.present.firstMissing(from/b.page, (to-1)/b.page)
	if !miss {
		return
	}
	from = max(from, p*b.page)
	// A stream's window goes in fewer, larger requests (a registry's
	// cost is per request as much as per byte), two windows still
	// filling the slots; earlier ones in one request per slot.
	piece := min(maxFetchSpan, max(minPiece, size/int64(b.opts.Concurrency)))
	if b.raStream {
		piece = min(maxFetchSpan, max(minPiece, b.opts.ReadAhead/int64(b.opts.Concurrency)))
	}
	b.raLive++
	b.wg.Add(1)
	b.running.Add(1)
	go func() {
		defer b.wg.Done()
		defer b.running.Add(-1)
		b.ensure(b.closing, from, to, from, piece) // read-ahead failures are not errors
		b.mu.Lock()
		b.raLive--
		b.stream()
		b.mu.Unlock()
	}()
}

// WillRead implements snapshot.SpanHinter: reads of [off, end) follow,
// in order (a layer loading several chunks). The span counts as one read
// for the read-ahead, the reads inside it as nothing, and its missing
// pages are fetched now, in pieces over the slots (with ctx: a reader's
// fetch), each read then waiting for its own. With Concurrency 1 it does
// nothing: one request at a time fetches what each read needs, as before
// pipelining.
func (b *LazyBlob) WillRead(ctx context.Context, off, end int64) {
	if b.opts.Concurrency == 1 || off < 0 || off >= end || end > b.size {
		return
	}
	b.mu.Lock()
	b.noteRead(off, end)
	b.hintStart, b.hintEnd = off, end
	_, miss := b.present.firstMissing(off/b.page, (end-1)/b.page)
	if !miss || b.complete || b.closed {
		b.mu.Unlock()
		return
	}
	b.wg.Add(1)
	b.running.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		defer b.running.Add(-1)
		// Its failures are the reads': each finds its pages' fetch ended
		// with an error, and fails with it or (cancelled) fetches again.
		b.launch(ctx, off/b.page, (end-1)/b.page, b.readPiece(end-off), end, false)
	}()
}

// ensure makes [off, need) present, and fetches up to fetchEnd if that
// part is missing too (failures there are not errors), in pieces of at
// most piece bytes, as many at once as slots allow. A page that another
// fetch has claimed is waited for (when below need), not fetched again.
func (b *LazyBlob) ensure(ctx context.Context, off, fetchEnd, need, piece int64) error {
	pg := b.page
	first, last := off/pg, (fetchEnd-1)/pg
	for {
		calls, err := b.launch(ctx, first, last, piece, need, false)
		if err != nil {
			return err // our fetches end with ctx, or with the blob
		}
		retry := false
		for _, c := range calls {
			select {
			case <-c.done:
			default:
				if c.ahead && c.first*pg < need { // the reader caught up with the read-ahead
					b.mu.Lock()
					b.raWaited = true
					b.mu.Unlock()
				}
				select {
				case <-c.done:
				case <-ctx.Done():
					return fmt.Errorf("lazy blob %s: %w", b.digest, ctx.Err())
				}
			}
			if c.err == nil || c.first*pg >= need {
				continue // done, or only read-ahead failed
			}
			// A fetch whose context ended (another reader's, or ours
			// while closing), or a read-ahead that failed: look again,
			// and fetch it ourselves.
			if c.ahead || errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded) {
				if ctx.Err() != nil {
					return fmt.Errorf("lazy blob %s: %w", b.digest, ctx.Err())
				}
				retry = true
				continue
			}
			return c.err
		}
		// Pages below need may still be missing: fetched by a call that
		// was cancelled, or removed since. The read-ahead is not retried.
		if need <= off {
			return nil
		}
		last = min(last, (need-1)/pg)
		if !retry {
			b.mu.Lock()
			_, miss := b.present.firstMissing(first, last)
			miss = miss && !b.complete
			b.mu.Unlock()
			if !miss {
				return nil
			}
		}
	}
}

// waitAll waits for calls to end, or ctx.
func (b *LazyBlob) waitAll(ctx context.Context, calls []*fetchCall) error {
	for _, c := range calls {
		select {
		case <-c.done:
		case <-ctx.Done():
			return fmt.Errorf("lazy blob %s: %w", b.digest, ctx.Err())
		}
	}
	return nil
}

// launch starts fetches of the missing, unclaimed pages of [first, last]
// in pieces, in order, each once it has a slot, and returns the calls to
// wait for: its own, and others' holding pages below need. Its calls past
// need, or all with ahead, are marked ahead: a reader that finds one
// failed fetches the pages itself. It fails when ctx ends or the blob is
// closing while it waits for a slot.
func (b *LazyBlob) launch(ctx context.Context, first, last, piece, need int64, ahead bool) ([]*fetchCall, error) {
	pg := b.page
	per := max(1, min(piece, maxFetchSpan)/pg)
	var calls []*fetchCall
	for p := first; p <= last; {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return calls, fmt.Errorf("lazy blob %s: %w", b.digest, errClosed)
		}
		q, miss := b.present.firstMissing(p, last)
		if !miss || b.complete {
			b.mu.Unlock()
			break
		}
		if c := b.inflight[q]; c != nil {
			b.mu.Unlock()
			if q*pg < need {
				calls = append(calls, c)
			}
			p = c.last + 1
			continue
		}
		r := q
		for r+1 <= last && r+1-q < per && !b.present.has(r+1) && b.inflight[r+1] == nil {
			r++
		}
		c := &fetchCall{first: q, last: r, ahead: ahead || q*pg >= need, done: make(chan struct{})}
		for i := q; i <= r; i++ {
			b.inflight[i] = c
		}
		b.wg.Add(1)
		b.running.Add(1)
		b.mu.Unlock()
		calls = append(calls, c)
		p = r + 1
		select {
		case b.slots <- struct{}{}:
		case <-ctx.Done():
			b.finish(c, fmt.Errorf("lazy blob %s: %w", b.digest, ctx.Err()))
			return calls, c.err
		case <-b.closing.Done():
			b.finish(c, fmt.Errorf("lazy blob %s: %w", b.digest, errClosed))
			return calls, c.err
		}
		go b.run(ctx, c)
	}
	return calls, nil
}

// run fetches c's pages holding a slot, with a context that ends with
// ctx or when the blob is closed.
func (b *LazyBlob) run(ctx context.Context, c *fetchCall) {
	fctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(b.closing, cancel)
	err := b.fetchPages(fctx, c.first, c.last)
	stop()
	cancel()
	<-b.slots
	b.finish(c, err)
}

// finish unclaims c's pages and wakes its waiters.
func (b *LazyBlob) finish(c *fetchCall, err error) {
	c.err = err
	b.mu.Lock()
	for i := c.first; i <= c.last; i++ {
		delete(b.inflight, i)
	}
	b.mu.Unlock()
	close(c.done)
	b.running.Add(-1)
	b.wg.Done()
}

// Prefetch fetches the given byte ranges of the blob (off, length pairs:
// a prefetch list), keeping up to Concurrency requests in flight. The
// list is taken prefetchBatch ranges at a time, in its order; within a
// batch the ranges are sorted and those closer than prefetchGap merged
// into one request (at most maxFetchSpan), so that a list of scattered
// small ranges costs fewer round trips while its early ranges still come
// first. It returns when every range is present, or with the first
// error. Pages present are not fetched again.
func (b *LazyBlob) Prefetch(ctx context.Context, ranges [][2]int64) error {
	pg := b.page
	var calls []*fetchCall
	var err error
	flush := func(first, last int64) {
		var cs []*fetchCall
		cs, err = b.launch(ctx, first, last, maxFetchSpan, (last+1)*pg, true)
		calls = append(calls, cs...)
	}
	batch := make([]pageRun, 0, prefetchBatch)
	send := func() {
		slices.SortFunc(batch, func(x, y pageRun) int { return cmp.Compare(x.first, y.first) })
		first, last := int64(-1), int64(-1)
		for _, r := range batch {
			if first >= 0 && r.first <= last+1+prefetchGap/pg && r.end-1-first < maxFetchSpan/pg {
				last = max(last, r.end-1)
				continue
			}
			if first >= 0 {
				if flush(first, last); err != nil {
					return
				}
			}
			first, last = r.first, r.end-1
		}
		if first >= 0 {
			flush(first, last)
		}
		batch = batch[:0]
	}
	for _, r := range ranges {
		if r[0] < 0 || r[1] <= 0 || r[0] >= b.size {
			continue
		}
		end := r[0] + min(r[1], b.size-r[0])
		batch = append(batch, pageRun{r[0] / pg, (end-1)/pg + 1})
		if len(batch) == prefetchBatch {
			if send(); err != nil {
				break
			}
		}
	}
	if err == nil {
		send()
	}
	if werr := b.waitAll(ctx, calls); err == nil {
		err = werr
	}
	if err != nil {
		return err
	}
	for _, c := range calls {
		if c.err == nil {
			continue
		}
		// Another reader's fetch that its context ended: fetch it here.
		if ctx.Err() == nil && (errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded)) {
			end := min(b.size, (c.last+1)*pg)
			if err := b.ensure(ctx, c.first*pg, end, end, maxFetchSpan); err != nil {
				return err
			}
			continue
		}
		return c.err
	}
	return nil
}

// prefetchBatch is how many ranges of a prefetch list are sorted and
// merged together.
const prefetchBatch = 64

// prefetchGap is the most bytes between two ranges of a prefetch list
// that are fetched along with them rather than cost a request of their
// own.
const prefetchGap = 256 << 10

// syncData makes every write to the data file made before it was called
// durable: it returns after an fdatasync that started after the call has
// finished. Commits landing together share one (a group commit): at 16
// requests in flight an fdatasync each would bound a blob to the disk's
// flush rate. Once one fails, every later call fails with its error
// (the page cache may have dropped what it could not write).
func (b *LazyBlob) syncData() error {
	b.syncMu.Lock()
	defer b.syncMu.Unlock()
	need := b.syncStarted + 1 // the first sync that starts from now on
	for b.syncFinished < need && b.syncErr == nil {
		if b.syncing {
			b.syncCond.Wait()
			continue
		}
		b.syncing = true
		b.syncStarted++
		gen := b.syncStarted
		b.syncMu.Unlock()
		err := unix.Fdatasync(int(b.f.Fd()))
		b.syncMu.Lock()
		b.syncing = false
		b.syncFinished = gen
		if err != nil && b.syncErr == nil {
			b.syncErr = err
		}
		b.syncCond.Broadcast()
	}
	return b.syncErr
}
