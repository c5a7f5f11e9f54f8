package repo

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"
)

// gateFetcher serves data; a request starting at from or past it waits
// until open is closed (or its context ends). It records what was asked.
type gateFetcher struct {
	data []byte
	from int64
	open chan struct{}

	mu     sync.Mutex
	calls  int
	bytes  int64
	maxEnd int64 // the furthest end of any request started
}

func (g *gateFetcher) FetchRange(ctx context.Context, digest string, off, n int64) ([]byte, error) {
	g.mu.Lock()
	g.calls++
	g.bytes += n
	g.maxEnd = max(g.maxEnd, off+n)
	g.mu.Unlock()
	if off >= g.from {
		select {
		case <-g.open:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return bytes.Clone(g.data[off : off+n]), nil
}

func (g *gateFetcher) stats() (calls int, n, maxEnd int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls, g.bytes, g.maxEnd
}

// waitMaxEnd waits until some request started reaches end.
func (g *gateFetcher) waitMaxEnd(t *testing.T, end int64) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, _, m := g.stats(); m >= end {
			return
		}
		if time.Now().After(deadline) {
			_, _, m := g.stats()
			t.Fatalf("no request reached %d while the reader waited (furthest %d)", end, m)
		}
	}
}

// readSpan reads [off, off+span) of b as a layer does: announced with
// WillRead, then chunk by chunk.
func readSpan(b *LazyBlob, got []byte, off, span, chunk int64) error {
	end := min(off+span, int64(len(got)))
	b.WillRead(context.Background(), off, end)
	for o := off; o < end; o += chunk {
		if _, err := b.ReadAt(got[o:min(end, o+chunk)], o); err != nil {
			return err
		}
	}
	return nil
}

// A span announced by WillRead is fetched at once: before any byte comes
// back, the requests in flight cover the whole span, not only the first
// chunk (a cold multi-chunk read costs one round trip, not one a chunk).
// With Concurrency 1 a hint does nothing.
func TestLazyWillReadFetchesSpanAtOnce(t *testing.T) {
	s, f, d := lazyFixture(t, 8<<20)
	g := &gateFetcher{data: f.data, from: 3 << 20, open: make(chan struct{})}
	b, err := s.OpenLazy(d, int64(len(g.data)), g, LazyOptions{Page: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := make([]byte, len(g.data))
	done := make(chan error, 1)
	go func() { done <- readSpan(b, got, 3<<20, 1<<20, 64<<10) }()
	g.waitMaxEnd(t, 4<<20)
	close(g.open)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[3<<20:4<<20], g.data[3<<20:4<<20]) {
		t.Fatal("wrong bytes")
	}
	waitIdle(t, b)
	// One span read at a random place: no read-ahead past it.
	if _, n, m := g.stats(); n != 1<<20 || m != 4<<20 {
		t.Fatalf("a 1 MiB span fetched %d bytes up to %d, want exactly the span", n, m)
	}

	s1, _, _ := lazyFixture(t, 8<<20)
	g1 := &gateFetcher{data: f.data, from: int64(len(f.data)), open: make(chan struct{})}
	b1, err := s1.OpenLazy(d, int64(len(g1.data)), g1, LazyOptions{Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b1.Close()
	b1.WillRead(context.Background(), 0, 1<<20)
	if c, _, _ := g1.stats(); c != 0 || b1.running.Load() != 0 {
		t.Fatalf("one request at a time: a hint started %d requests", c)
	}
}

// A stream (a long sequential read) keeps its read-ahead in flight while
// the reader waits: when the reader blocks on a window, requests reaching
// ReadAhead/2 past it have started already. When the reader stops, no
// more than ReadAhead past it is fetched, in requests of at least
// minPiece, and every byte read is right.
func TestLazyStreamReadAhead(t *testing.T) {
	const ra = 4 << 20
	s, f, d := lazyFixture(t, 32<<20)
	g := &gateFetcher{data: f.data, from: 8 << 20, open: make(chan struct{})}
	b, err := s.OpenLazy(d, int64(len(g.data)), g, LazyOptions{Page: 16 << 10, ReadAhead: ra, Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := make([]byte, len(g.data))
	for off := int64(0); off < 8<<20; off += 1 << 20 {
		if err := readSpan(b, got, off, 1<<20, 64<<10); err != nil {
			t.Fatal(err)
		}
	}
	// The next span waits on the gate: the windows past it are in flight.
	done := make(chan error, 1)
	go func() { done <- readSpan(b, got, 8<<20, 1<<20, 64<<10) }()
	g.waitMaxEnd(t, 9<<20+ra/2)
	close(g.open)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	const stop = 16 << 20
	for off := int64(9 << 20); off < stop; off += 1 << 20 {
		if err := readSpan(b, got, off, 1<<20, 64<<10); err != nil {
			t.Fatal(err)
		}
	}
	waitIdle(t, b)
	if !bytes.Equal(got[:stop], g.data[:stop]) {
		t.Fatal("stream read wrong bytes")
	}
	calls, n, maxEnd := g.stats()
	if maxEnd > stop+ra || maxEnd < stop+ra/2 {
		t.Fatalf("reader stopped at %d: fetched up to %d, want within [%d, %d]", stop, maxEnd, stop+ra/2, stop+ra)
	}
	// At most two requests a span (a chunk read may claim its own pages
	// before the hint's goroutine claims the rest, on a loaded machine),
	// not one a chunk (16 a span).
	if n != maxEnd || calls > 2*int(maxEnd/minPiece)+4 {
		t.Fatalf("%d requests for %d bytes up to %d: want each byte once, in requests of about %d", calls, n, maxEnd, minPiece)
	}
	t.Logf("%d requests, %d bytes, up to %d", calls, n, maxEnd)
}
