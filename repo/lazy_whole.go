package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// A registry that ignores Range answers a lazy blob's range request with
// 200 and the whole blob (Harbor's proxy-cache on a miss, distribution
// behind some caches). Those bytes are paid for anyway, so the lazy blob
// streams the answer whole into its .lazy file, committing pages as they
// land (readers waiting for a page go on as soon as it is there), and
// checks the stream's sha256 at the end: a mismatch forgets every page.
// The stream runs in its own goroutine, detached from the read that asked
// (whose context ends only the wait for its pages): that read, like any
// other, returns as soon as its pages land. A stream that receives
// nothing for 30 s, or whose LazyBlob is closed, ends; the pages that
// landed stay. One stream per LazyBlob runs at a time: a second
// whole-blob answer is dropped and its reader waits for its pages from the
// first. A host that
// ignored Range is remembered (ranges.go, rangeIgnoredHosts): while a
// request for a blob of it is in flight, other misses of that blob wait
// for it rather than send requests that would each bring the whole blob.
// It is still asked with Range, and a 206 makes it ordinary again (Harbor
// honours Range once the blob is cached).

// wholeFetcher is a RangeFetcher that can hand a whole-blob answer over
// as a stream (RegistryRanges).
type wholeFetcher interface {
	fetchRangeOrWhole(ctx context.Context, digest string, off, n int64, sink wholeSink) ([]byte, int64, error)
	rangeIgnored() bool
}

// wholeStream is a LazyBlob's whole-blob stream state.
type wholeStream struct {
	mu      sync.Mutex
	running bool          // a stream, or a request to a host that ignores Range, is under way
	landed  chan struct{} // closed (and replaced) when pages land or running ends
	err     error         // how the last stream ended
	cancel  func()        // ends the stream goroutine (nil: none)
	done    chan struct{} // closed when the stream goroutine has ended
}

// errWholeBusy is returned by a sink when another stream of the blob runs.
var errWholeBusy = errors.New("another whole-blob stream of this blob is running")

// wholeSpan is how many bytes of a stream are committed at a time.
const wholeSpan = 4 << 20

// wholeStall ends a stream that received nothing for this long (or for
// RetryFor, if longer).
const wholeStall = 30 * time.Second

// fetchSpan fetches [start, +n), pages [p, q], for fetchPages. It returns
// the bytes, or nil and no error when the pages landed from a whole-blob
// stream (this one's or another's).
func (b *LazyBlob) fetchSpan(ctx context.Context, p, q, start, n int64) ([]byte, error) {
	wf, ok := b.fetch.(wholeFetcher)
	if !ok {
		return b.fetchOnce(ctx, start, n)
	}
	if b.noMirrors.Load() { // as fetchOnce: bytes failed a check, the origin only
		ctx = withoutMirrors(ctx)
	}
	for tries := 0; tries < 4; tries++ {
		if landed, err := b.waitWhole(ctx, p, q); err != nil || landed {
			return nil, err
		}
		if tries > 0 {
			b.whole.mu.Lock()
			err := b.whole.err
			b.whole.mu.Unlock()
			if err != nil {
				return nil, err // the stream ended without our pages
			}
		}
		claimed := false
		if wf.rangeIgnored() {
			// One request of this blob at a time: it may bring the whole blob.
			if !b.claimWhole() {
				continue
			}
			claimed = true
		}
		// The request outlives ctx if it turns into a stream.
		rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		stop := context.AfterFunc(ctx, cancel)
		handed := false
		sink := func(body io.ReadCloser, total int64) error {
			if !claimed {
				if !b.claimWhole() {
					body.Close()
					return errWholeBusy
				}
				claimed = true
			}
			if !stop() { // ctx ended
				body.Close()
				return fmt.Errorf("lazy blob %s: %w", b.digest, ctx.Err())
			}
			handed = true
			b.startWhole(body, total, cancel)
			return nil
		}
		data, total, err := wf.fetchRangeOrWhole(rctx, b.digest, start, n, sink)
		if !handed {
			stop()
			cancel()
			if claimed {
				b.wake(true)
			}
		}
		switch {
		case errors.Is(err, errWholeLanded), errors.Is(err, errWholeBusy):
			continue // the pages land, or will from the other stream
		case err != nil && ctx.Err() != nil:
			return nil, fmt.Errorf("lazy blob %s: %w", b.digest, ctx.Err())
		case err != nil:
			return nil, err
		}
		return b.checkRange(data, total, n)
	}
	if landed, err := b.waitWhole(ctx, p, q); err != nil || landed {
		return nil, err
	}
	return nil, fmt.Errorf("whole-blob streams of the blob ended without pages [%d,%d]", p, q)
}

// checkRange checks a range answer as fetchOnce does.
func (b *LazyBlob) checkRange(data []byte, total, n int64) ([]byte, error) {
	if total >= 0 && total != b.size {
		return nil, fmt.Errorf("the registry has %d bytes, the manifest claims %d: %w", total, b.size, ErrDigestMismatch)
	}
	if total >= 0 {
		b.sizeChecked.Store(true)
	}
	if int64(len(data)) != n {
		return nil, fmt.Errorf("got %d bytes, want %d", len(data), n)
	}
	return data, nil
}

// waitWhole waits, while a whole-blob stream of b runs, for pages [p, q]
// to land. It reports whether they are present (or the blob complete).
func (b *LazyBlob) waitWhole(ctx context.Context, p, q int64) (bool, error) {
	for {
		b.whole.mu.Lock()
		running, ch := b.whole.running, b.whole.landed
		b.whole.mu.Unlock()
		b.mu.Lock()
		_, miss := b.present.firstMissing(p, q)
		done := b.complete || !miss
		b.mu.Unlock()
		if done || !running {
			return done, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false, fmt.Errorf("lazy blob %s: %w", b.digest, ctx.Err())
		}
	}
}

// wake tells waiters that pages landed or the stream ended.
func (b *LazyBlob) wake(end bool) {
	b.whole.mu.Lock()
	if b.whole.landed != nil {
		close(b.whole.landed)
	}
	b.whole.landed = make(chan struct{})
	if end {
		b.whole.running = false
	}
	b.whole.mu.Unlock()
}

// claimWhole marks a stream (or a request that may become one) of b as
// running; false if one is already.
func (b *LazyBlob) claimWhole() bool {
	b.whole.mu.Lock()
	defer b.whole.mu.Unlock()
	if b.whole.running {
		return false
	}
	b.whole.running = true
	b.whole.err = nil
	if b.whole.landed == nil {
		b.whole.landed = make(chan struct{})
	}
	return true
}

// startWhole streams body into b in a goroutine that holds the claim and
// ends with cancel (the request's context): when done, when nothing
// arrives for wholeStall, or when b is closed (endWhole).
func (b *LazyBlob) startWhole(body io.ReadCloser, total int64, cancel func()) {
	done := make(chan struct{})
	b.whole.mu.Lock()
	b.whole.cancel, b.whole.done = cancel, done
	b.whole.mu.Unlock()
	go func() {
		defer close(done)
		defer cancel()
		quiet := max(b.opts.RetryFor, wholeStall)
		stall := time.AfterFunc(quiet, cancel)
		err := b.streamClaimed(&stallReader{r: body, t: stall, d: quiet}, total)
		stall.Stop()
		body.Close()
		b.whole.mu.Lock()
		b.whole.err, b.whole.cancel = err, nil
		b.whole.mu.Unlock()
		b.wake(true)
	}()
}

// endWhole ends b's stream, if one runs, and waits for it (Close).
func (b *LazyBlob) endWhole() {
	b.whole.mu.Lock()
	cancel, done := b.whole.cancel, b.whole.done
	b.whole.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if done != nil {
		<-done
	}
}

// stallReader resets its timer whenever bytes arrive.
type stallReader struct {
	r io.Reader
	t *time.Timer
	d time.Duration
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.t.Reset(s.d)
	}
	return n, err
}

// pacer keeps a whole-blob stream within the rate of a fill that runs
// (LazyBlob.streamRate), counted from when the stream first saw it.
type pacer struct {
	since time.Time // zero: no rate seen (or no longer)
	from  int64     // the stream's offset then
}

// pace waits until the stream, at offset off, is within the rate; it
// fails when b is closed meanwhile.
func (p *pacer) pace(b *LazyBlob, off int64) error {
	rate := b.streamRate.Load()
	if rate <= 0 {
		p.since = time.Time{}
		return nil
	}
	if p.since.IsZero() {
		p.since, p.from = time.Now(), off
	}
	ahead := time.Duration(float64(off-p.from)/float64(rate)*float64(time.Second)) - time.Since(p.since)
	if ahead <= 0 {
		return nil
	}
	t := time.NewTimer(ahead)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-b.closing.Done():
		return fmt.Errorf("lazy blob %s: %w", b.digest, errClosed)
	}
}

// streamClaimed writes the whole blob from body into the .lazy file,
// wholeSpan bytes at a time through commit (pages the map has are not
// rewritten), and checks its size and sha256; a mismatch forgets every
// page. A cut stream keeps the pages that landed. The caller holds the
// claim.
func (b *LazyBlob) streamClaimed(body io.Reader, total int64) error {
	if total >= 0 && total != b.size {
		return fmt.Errorf("the registry has %d bytes, the manifest claims %d: %w", total, b.size, ErrDigestMismatch)
	}
	pg := b.page
	span := max(pg, wholeSpan/pg*pg)
	buf := make([]byte, min(span, b.size))
	h := newHasher()
	var p pacer
	for off := int64(0); off < b.size; {
		m := min(span, b.size-off)
		if err := p.pace(b, off); err != nil {
			return err
		}
		got, err := io.ReadFull(body, buf[:m])
		if err != nil {
			return fmt.Errorf("whole-blob answer (the registry ignores Range) cut after %d of %d bytes: %w", off+int64(got), b.size, err)
		}
		h.Write(buf[:m])
		if err := b.commit(off/pg, (off+m-1)/pg, buf[:m]); err != nil {
			return err
		}
		b.wake(false)
		if b.isComplete() {
			return nil // adopted meanwhile: every byte is local
		}
		off += m
	}
	if n, _ := body.Read(make([]byte, 1)); n > 0 {
		b.Invalidate(0, b.size)
		return fmt.Errorf("whole-blob answer (the registry ignores Range) is longer than the %d bytes the manifest claims: %w", b.size, ErrDigestMismatch)
	}
	if got := h.digest(); got != b.digest {
		b.Invalidate(0, b.size)
		return fmt.Errorf("whole-blob answer (the registry ignores Range) hashes to %s: %w", got, ErrDigestMismatch)
	}
	b.sizeChecked.Store(true)
	return nil
}
