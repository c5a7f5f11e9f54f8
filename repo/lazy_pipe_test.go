package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

// proxiedBlob pushes a blob of about size random bytes to a real registry
// and returns it, its digest, a fault proxy in front of the registry and
// a fetcher through the proxy.
func proxiedBlob(t *testing.T, size int) ([]byte, string, *faultproxy.Proxy, RegistryRanges) {
	t.Helper()
	reg := regtest.Start(t)
	a := newStore(t)
	cfg := chainOf(t, a, 11, size)
	if _, err := Push(context.Background(), a, target(t, reg.Addr+"/pipe:v1", nil), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	d := cfg.Layers[0].Digest
	data, err := os.ReadFile(mustPath(a, d))
	if err != nil {
		t.Fatal(err)
	}
	p := faultproxy.Start(t, reg.Addr)
	return data, d, p, RegistryRanges{Repo: target(t, p.Addr+"/pipe:v1", nil).Repo}
}

// A sequential read through a registry 20 ms away keeps several range
// requests in flight (the background read-ahead), and reads exact bytes;
// with Concurrency 1 there is never more than one.
func TestLazySequentialReadPipelines(t *testing.T) {
	data, d, p, fetch := proxiedBlob(t, 8<<20)
	for _, conc := range []int{1, 8} {
		t.Run(fmt.Sprint("concurrency-", conc), func(t *testing.T) {
			s := newStore(t)
			b, err := s.OpenLazy(d, int64(len(data)), fetch, LazyOptions{Concurrency: conc, ReadAhead: 4 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			p.Set(faultproxy.Faults{Latency: 20 * time.Millisecond})
			p.ResetStats()
			got := make([]byte, len(data))
			for off := 0; off < len(data); off += 32 << 10 {
				if _, err := b.ReadAt(got[off:min(len(data), off+32<<10)], int64(off)); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got, data) {
				t.Fatal("sequential read returned wrong bytes")
			}
			st := p.Stats()
			if conc == 1 && st.MaxInFlight != 1 {
				t.Fatalf("one request at a time: %d in flight at most", st.MaxInFlight)
			}
			if conc > 1 && (st.MaxInFlight < 2 || st.MaxInFlight > int64(conc)) {
				t.Fatalf("pipelined with %d slots: %d requests in flight at most (%+v)", conc, st.MaxInFlight, st)
			}
			t.Logf("concurrency %d: %+v", conc, st)
		})
	}
}

// flakyFetcher serves data; requests covering failAt fail (without
// retries: ErrBadRange) while fails > 0; requests from hangFrom on wait
// for their context to end.
type flakyFetcher struct {
	data     []byte
	failAt   int64
	fails    atomic.Int32
	failed   atomic.Int32
	hangFrom int64
	hung     atomic.Int32
	released atomic.Int32
	calls    atomic.Int32
}

func (f *flakyFetcher) FetchRange(ctx context.Context, digest string, off, n int64) ([]byte, error) {
	f.calls.Add(1)
	if f.hangFrom > 0 && off >= f.hangFrom {
		f.hung.Add(1)
		<-ctx.Done()
		f.released.Add(1)
		return nil, ctx.Err()
	}
	if off <= f.failAt && f.failAt < off+n && f.fails.Add(-1) >= 0 {
		f.failed.Add(1)
		return nil, fmt.Errorf("injected: %w", ErrBadRange)
	}
	return bytes.Clone(f.data[off : off+n]), nil
}

// waitIdle waits until b has no fetch or read-ahead goroutine running.
func waitIdle(t *testing.T, b *LazyBlob) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); b.running.Load() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%d fetch goroutines still running", b.running.Load())
		}
	}
}

// A background read-ahead that fails does not fail any read: the reader
// fetches the pages itself when it gets there.
func TestLazyFailedReadAheadDoesNotFailReads(t *testing.T) {
	s, m, d := lazyFixture(t, 4<<20)
	f := &flakyFetcher{data: m.data, failAt: 1 << 20}
	f.fails.Store(1)
	b, err := s.OpenLazy(d, int64(len(f.data)), f, LazyOptions{Page: 16 << 10, ReadAhead: 2 << 20, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p := make([]byte, 64<<10)
	// Sequential reads up to 768 KiB: the read-ahead reaches 1 MiB
	// (windows of 256 KiB, 512 KiB, 1 MiB).
	off := int64(0)
	for ; off < 768<<10; off += int64(len(p)) {
		if _, err := b.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	waitIdle(t, b)
	if f.failed.Load() != 1 {
		t.Fatalf("the read-ahead did not reach the failing range (%d failures, %d calls)", f.failed.Load(), f.calls.Load())
	}
	for ; off < int64(len(f.data)); off += int64(len(p)) {
		if _, err := b.ReadAt(p, off); err != nil {
			t.Fatalf("read at %d after a failed read-ahead: %v", off, err)
		}
		if !bytes.Equal(p, f.data[off:off+int64(len(p))]) {
			t.Fatalf("read at %d: wrong bytes", off)
		}
	}
}

// Close cancels the read-ahead in flight and returns when every fetch
// goroutine has ended.
func TestLazyCloseCancelsReadAhead(t *testing.T) {
	s, m, d := lazyFixture(t, 8<<20)
	f := &flakyFetcher{data: m.data, failAt: -1, hangFrom: 1 << 20}
	b, err := s.OpenLazy(d, int64(len(f.data)), f, LazyOptions{Page: 16 << 10, ReadAhead: 4 << 20, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 64<<10)
	for off := int64(0); off < 1<<20; off += int64(len(p)) {
		if _, err := b.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	for end := time.Now().Add(20 * time.Second); f.hung.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("no read-ahead past 1 MiB started")
		}
	}
	// A reader waiting on the hung read-ahead fails when the blob closes.
	readErr := make(chan error, 1)
	go func() {
		_, err := b.ReadAt(p, 3<<20)
		readErr <- err
	}()
	if b.running.Load() == 0 {
		t.Fatal("no fetch goroutine running before Close")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := b.running.Load(); n != 0 {
		t.Fatalf("%d fetch goroutines outlive Close", n)
	}
	if f.released.Load() != f.hung.Load() {
		t.Fatalf("%d of %d hung fetches ended", f.released.Load(), f.hung.Load())
	}
	if err := <-readErr; err == nil {
		t.Fatal("a read of pages that never came succeeded")
	}
}

// Concurrent sequential readers of one blob, another LazyBlob on it
// evicting pages all along (another process): every read is exact or
// fails with ErrUnavailable, never returns an evicted page's hole.
func TestLazyPipelinedReadersDuringEviction(t *testing.T) {
	s, m, d := lazyFixture(t, 4<<20)
	a, err := s.OpenLazy(d, int64(len(m.data)), m, LazyOptions{Page: 16 << 10, ReadAhead: 1 << 20, Concurrency: 8, RetryFor: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ev := openLazy(t, s, d, m, len(m.data))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			ev.Evict(256 << 10)
			time.Sleep(time.Millisecond)
		}
	}()
	errs := make(chan error, 4)
	var readers sync.WaitGroup
	for r := 0; r < 4; r++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			p := make([]byte, 32<<10)
			for pass := 0; pass < 3; pass++ {
				for off := int64(r) << 20; off < int64(r+1)<<20; off += int64(len(p)) {
					_, err := a.ReadAt(p, off)
					if err != nil && !errors.Is(err, ErrUnavailable) {
						errs <- err
						return
					}
					if err == nil && !bytes.Equal(p, m.data[off:off+int64(len(p))]) {
						errs <- fmt.Errorf("reader %d at %d: wrong bytes", r, off)
						return
					}
				}
			}
		}()
	}
	readers.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// Prefetch fetches a list of ranges with requests in flight together,
// merging close ranges, and the bytes are exact.
func TestLazyPrefetchRanges(t *testing.T) {
	data, d, p, fetch := proxiedBlob(t, 8<<20)
	s := newStore(t)
	b, err := s.OpenLazy(d, int64(len(data)), fetch, LazyOptions{Page: 16 << 10, Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var ranges [][2]int64
	for i := int64(0); i < 7; i++ {
		off := (i * 5 % 7) << 20 // 1 MiB apart (not merged), out of order
		ranges = append(ranges, [2]int64{off, 40 << 10}, [2]int64{off + 64<<10, 4 << 10})
	}
	ranges = append(ranges, [2]int64{-1, 5}, [2]int64{int64(len(data)) - 10, 1 << 40}, [2]int64{0, 0})
	p.Set(faultproxy.Faults{Latency: 20 * time.Millisecond})
	p.ResetStats()
	if err := b.Prefetch(context.Background(), ranges); err != nil {
		t.Fatal(err)
	}
	st := p.Stats()
	if st.RangeRequests >= int64(len(ranges)) || st.MaxInFlight < 2 {
		t.Fatalf("prefetch of %d ranges: %+v", len(ranges), st)
	}
	p.Set(faultproxy.Faults{})
	before := p.Stats().RangeRequests
	for _, r := range ranges[:14] {
		got := make([]byte, r[1])
		if _, err := b.ReadAt(got, r[0]); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data[r[0]:r[0]+r[1]]) {
			t.Fatalf("range %v: wrong bytes", r)
		}
	}
	if n := p.Stats().RangeRequests - before; n != 0 {
		t.Fatalf("reads of prefetched ranges made %d requests", n)
	}
}

// Concurrent commits share fdatasyncs, each returns after one that
// started after its call; a failed one fails every later call.
func TestLazyGroupSync(t *testing.T) {
	s, m, d := lazyFixture(t, 1<<20)
	b, err := s.OpenLazy(d, int64(len(m.data)), m, LazyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.syncMu.Lock()
			need := b.syncStarted + 1
			b.syncMu.Unlock()
			if err := b.syncData(); err != nil {
				t.Error(err)
			}
			b.syncMu.Lock()
			defer b.syncMu.Unlock()
			if b.syncFinished < need {
				t.Errorf("returned after sync %d, needed %d", b.syncFinished, need)
			}
		}()
	}
	wg.Wait()
	t.Logf("32 calls, %d fdatasyncs", b.syncStarted)
	b.f.Close() // the next fdatasync fails
	if err := b.syncData(); err == nil {
		t.Fatal("fdatasync of a closed file succeeded")
	}
	if err := b.syncData(); err == nil {
		t.Fatal("a failed fdatasync was forgotten")
	}
	b.cancel()
	b.lk.close()
}
