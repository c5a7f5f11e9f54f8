package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/tests/regtest"
	"oras.land/oras-go/v2/registry/remote"
)

// memFetcher serves ranges of one blob, counting bytes; down makes it
// fail; hang makes it wait for the caller's context to end.
type memFetcher struct {
	mu      sync.Mutex
	data    []byte
	bytes   int64
	calls   int
	maxN    int64
	down    bool
	corrupt bool
	hang    bool
}

func (m *memFetcher) FetchRange(ctx context.Context, digest string, off, n int64) ([]byte, error) {
	m.mu.Lock()
	if m.hang {
		m.calls++
		m.mu.Unlock()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	defer m.mu.Unlock()
	m.calls++
	m.maxN = max(m.maxN, n)
	if m.down {
		return nil, errors.New("connection refused")
	}
	m.bytes += n
	out := bytes.Clone(m.data[off : off+n])
	if m.corrupt {
		out[0] ^= 1
	}
	return out, nil
}

func lazyFixture(t *testing.T, size int) (*Store, *memFetcher, string) {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	rand.New(rand.NewSource(1)).Read(data)
	sum := sha256.Sum256(data)
	return s, &memFetcher{data: data}, "sha256:" + hex.EncodeToString(sum[:])
}

func TestLazyReadFetchesOnlyWhatIsRead(t *testing.T) {
	s, f, d := lazyFixture(t, 10<<20)
	b, err := s.OpenLazy(d, int64(len(f.data)), f, LazyOptions{Page: 64 << 10, ReadAhead: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	if _, err := b.ReadAt(p, 5<<20+100); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, f.data[5<<20+100:5<<20+100+4096]) {
		t.Fatal("wrong bytes")
	}
	if f.bytes != 64<<10 {
		t.Fatalf("a 4K read fetched %d bytes, want one 64K page", f.bytes)
	}
	b.ReadAt(p, 5<<20+100) // present now
	if f.calls != 1 {
		t.Fatalf("second read of the same range fetched again (%d calls)", f.calls)
	}
	// Sequential reads trigger a growing read-ahead: fewer requests than
	// pages, and not much fetched past what was read.
	calls := f.calls
	for off := int64(5<<20 + 100 + 4096); off < 5<<20+100+(1<<20); off += 4096 {
		b.ReadAt(p, off)
	}
	waitIdle(t, b) // the read-ahead runs in the background
	if f.calls-calls >= 15 || f.bytes > (1<<20)+(256<<10)+(64<<10) {
		t.Fatalf("1 MiB read sequentially: %d requests, %d bytes fetched", f.calls-calls, f.bytes)
	}
	// The present-map survives a reopen.
	b.Close()
	before := f.bytes
	b, _ = s.OpenLazy(d, int64(len(f.data)), f, LazyOptions{Page: 64 << 10})
	b.ReadAt(p, 5<<20+100)
	if f.bytes != before {
		t.Fatal("reopened lazy blob fetched a page it had")
	}
	// Fill completes it, checks the digest, and adopts it into the store.
	if err := b.Fill(context.Background(), s, FillOptions{}); err != nil {
		t.Fatal(err)
	}
	if !s.Has(d) || f.bytes != int64(len(f.data)) {
		t.Fatalf("after fill: in store %v, fetched %d of %d (each byte once)", s.Has(d), f.bytes, len(f.data))
	}
	b.Close()
}

func TestLazyUnavailableFailsInBoundedTime(t *testing.T) {
	s, f, d := lazyFixture(t, 1<<20)
	b, _ := s.OpenLazy(d, int64(len(f.data)), f, LazyOptions{RetryFor: 300 * time.Millisecond})
	defer b.Close()
	p := make([]byte, 4096)
	b.ReadAt(p, 0) // present
	f.down = true
	start := time.Now()
	if _, err := b.ReadAt(p, 512<<10); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("read with registry down: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("failed after %v, want about 300ms", el)
	}
	if _, err := b.ReadAt(p, 0); err != nil {
		t.Fatalf("local data must keep serving: %v", err)
	}
	f.down = false
	if _, err := b.ReadAt(p, 512<<10); err != nil {
		t.Fatalf("after the registry came back: %v", err)
	}
}

func TestLazyFillRejectsCorruptData(t *testing.T) {
	s, f, d := lazyFixture(t, 1<<20)
	f.corrupt = true
	b, _ := s.OpenLazy(d, int64(len(f.data)), f, LazyOptions{})
	defer b.Close()
	if err := b.Fill(context.Background(), s, FillOptions{}); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("fill of corrupt data: %v", err)
	}
	if s.Has(d) || b.Present() != 0 {
		t.Fatal("corrupt blob entered the store or stayed present")
	}
}

func TestLazyEvict(t *testing.T) {
	s, f, d := lazyFixture(t, 4<<20)
	b, _ := s.OpenLazy(d, int64(len(f.data)), f, LazyOptions{Page: 64 << 10})
	defer b.Close()
	p := make([]byte, 2<<20)
	b.ReadAt(p, 1<<20)
	freed, err := b.Evict(512 << 10)
	if err != nil || freed == 0 || b.Present() > 512<<10 {
		t.Fatalf("Evict: freed %d, present %d, %v", freed, b.Present(), err)
	}
	q := make([]byte, 4096)
	if _, err := b.ReadAt(q, 1<<20+8192); err != nil || !bytes.Equal(q, f.data[1<<20+8192:1<<20+8192+4096]) {
		t.Fatalf("read after evict: %v", err)
	}
	if fi, _ := os.Stat(b.path); fi == nil {
		t.Fatal("lazy file vanished")
	}
}

// fileDigest is the sha256 of the file at path.
func fileDigest(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func openLazy(t *testing.T, s *Store, d string, f RangeFetcher, size int) *LazyBlob {
	t.Helper()
	b, err := s.OpenLazy(d, int64(size), f, LazyOptions{Page: 64 << 10, RetryFor: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func readAll(t *testing.T, b *LazyBlob, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := b.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("byte %d (page %d) differs from the blob", i, i/(64<<10))
			}
		}
	}
}

// Two LazyBlobs on one store stand for two processes. After one adopts
// the blob, the other's eviction, invalidation and fetches never change
// the complete, verified file.
func TestLazyAdoptedBlobNeverChanges(t *testing.T) {
	s, f, d := lazyFixture(t, 2<<20)
	a := openLazy(t, s, d, f, len(f.data))
	b := openLazy(t, s, d, &memFetcher{data: f.data}, len(f.data))
	p := make([]byte, 1<<20)
	if _, err := b.ReadAt(p, 512<<10); err != nil { // b holds pages too
		t.Fatal(err)
	}
	if err := a.Fill(context.Background(), s, FillOptions{}); err != nil {
		t.Fatal(err)
	}
	path := mustPath(s, d)
	if !s.Has(d) || fileDigest(t, path) != d {
		t.Fatal("fill did not adopt the verified blob")
	}
	if freed, err := b.Evict(0); err != nil || freed != 0 {
		t.Fatalf("eviction of an adopted blob through a stale LazyBlob: freed %d, %v", freed, err)
	}
	b.Invalidate(0, int64(len(f.data)))
	if _, err := b.ReadAt(p, 0); err != nil || !bytes.Equal(p, f.data[:len(p)]) {
		t.Fatalf("read of the adopted blob: %v", err)
	}
	if freed, err := s.EvictLazy(d, 0); err != nil || freed != 0 {
		t.Fatalf("EvictLazy after adoption: freed %d, %v", freed, err)
	}
	if freed, err := a.Evict(0); err != nil || freed != 0 { // the LazyBlob that adopted it
		t.Fatalf("eviction by the adopter: freed %d, %v", freed, err)
	}
	a.Close()
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("blobs/ holds %v: a lazy file's map followed it there", names)
	}
	if got := fileDigest(t, path); got != d {
		t.Fatalf("the adopted blob changed: now %s", got)
	}
	if b.Present() != int64(len(f.data)) {
		t.Fatalf("a stale LazyBlob sees %d of %d bytes of the adopted blob", b.Present(), len(f.data))
	}
	if ents := partials(t, s); len(ents) != 0 {
		t.Fatalf("partial/ holds %v after adoption", ents)
	}
}

// A page evicted by one LazyBlob is never claimed again by the map that
// another writes, nor served from a hole by a LazyBlob that had it.
func TestLazyMapNeverClaimsEvictedPage(t *testing.T) {
	s, f, d := lazyFixture(t, 2<<20)
	a := openLazy(t, s, d, f, len(f.data))
	readAll(t, a, f.data) // every page present, as far as a knows
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	b := openLazy(t, s, d, f, len(f.data))
	freed, err := b.Evict(0)
	if err != nil || freed < 1<<20 {
		t.Fatalf("evict: freed %d, %v", freed, err)
	}
	// a fetches something else and writes its map.
	a.Invalidate(0, 1)
	p := make([]byte, 100)
	if _, err := a.ReadAt(p, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	c := openLazy(t, s, d, &memFetcher{data: f.data}, len(f.data))
	readAll(t, c, f.data) // a page the map wrongly claims reads as a hole
	// A LazyBlob that had the pages before they were evicted.
	e := openLazy(t, s, d, f, len(f.data))
	readAll(t, e, f.data)
	if _, err := s.EvictLazy(d, 0); err != nil {
		t.Fatal(err)
	}
	readAll(t, e, f.data)
}

// The same through a real second process (the test binary, re-executed).
func TestLazyEvictByAnotherProcess(t *testing.T) {
	s, f, d := lazyFixture(t, 2<<20)
	a := openLazy(t, s, d, f, len(f.data))
	readAll(t, a, f.data)
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	lazyHelper(t, s, d, "evict")
	if n := s.LocalBytes(d); n >= int64(len(f.data)) {
		t.Fatalf("precondition: the other process evicted nothing (%d bytes local)", n)
	}
	readAll(t, a, f.data)
	lazyHelper(t, s, d, "fill")
	if fileDigest(t, mustPath(s, d)) != d {
		t.Fatal("the other process did not adopt the blob")
	}
	if freed, err := a.Evict(0); err != nil || freed != 0 {
		t.Fatalf("eviction after another process adopted: freed %d, %v", freed, err)
	}
	readAll(t, a, f.data)
	if got := fileDigest(t, mustPath(s, d)); got != d {
		t.Fatalf("the adopted blob changed: now %s", got)
	}
}

// lazyHelper runs TestLazyHelperProcess in a child process on s's blob d.
func lazyHelper(t *testing.T, s *Store, d, op string) {
	t.Helper()
	if out, err := lazyHelperCmd(s, d, op).CombinedOutput(); err != nil {
		t.Fatalf("helper process %s: %v\n%s", op, err, out)
	}
}

func lazyHelperCmd(s *Store, d, op string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestLazyHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "OBDVOL_LAZY_HELPER="+op, "OBDVOL_LAZY_ROOT="+s.Root, "OBDVOL_LAZY_DIGEST="+d)
	return cmd
}

// Another process reads and evicts in a loop while this one reads and
// then fills: every read returns the blob's bytes, the fill adopts the
// right blob, and the other process's evictions never touch it.
func TestLazyTwoProcessesChurn(t *testing.T) {
	s, f, d := lazyFixture(t, 2<<20)
	a := openLazy(t, s, d, f, len(f.data))
	cmd := lazyHelperCmd(s, d, "churn")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 192<<10)
	for i := 0; i < 100; i++ {
		off := int64(i*37%10) * (192 << 10)
		if _, err := a.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, f.data[off:off+int64(len(p))]) {
			t.Fatalf("read %d at %d: wrong bytes", i, off)
		}
		if i%10 == 0 {
			a.Evict(256 << 10)
		}
	}
	if err := a.Fill(context.Background(), s, FillOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper process: %v\n%s", err, out.String())
	}
	if got := fileDigest(t, mustPath(s, d)); got != d {
		t.Fatalf("the adopted blob is %s", got)
	}
}

// TestLazyHelperProcess is the second process of the tests above.
func TestLazyHelperProcess(t *testing.T) {
	op := os.Getenv("OBDVOL_LAZY_HELPER")
	if op == "" {
		t.Skip("helper process only")
	}
	s := &Store{Root: os.Getenv("OBDVOL_LAZY_ROOT")}
	_, f, d := lazyFixture(t, 2<<20)
	if d != os.Getenv("OBDVOL_LAZY_DIGEST") {
		t.Fatal("helper has another blob")
	}
	b := openLazy(t, s, d, f, len(f.data))
	switch op {
	case "evict":
		if freed, err := b.Evict(64 << 10); err != nil || freed == 0 {
			t.Fatalf("evict: %d, %v", freed, err)
		}
	case "fill":
		if err := b.Fill(context.Background(), s, FillOptions{}); err != nil {
			t.Fatal(err)
		}
	case "churn": // read everything and evict it, until the blob is adopted
		for i := 0; !b.isComplete(); i++ {
			p := make([]byte, 256<<10)
			off := int64(i%8) * (256 << 10)
			if _, err := b.ReadAt(p, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p, f.data[off:off+int64(len(p))]) {
				t.Fatalf("churn read %d at %d: wrong bytes", i, off)
			}
			if _, err := b.Evict(int64(i%3) * (512 << 10)); err != nil {
				t.Fatal(err)
			}
		}
		if freed, err := b.Evict(0); err != nil || freed != 0 {
			t.Fatalf("evict after adoption: %d, %v", freed, err)
		}
	}
}

// Reads of one page, evicted and fetched again in a loop by another
// LazyBlob, always return the blob's bytes.
func TestLazyReadsDuringEviction(t *testing.T) {
	s, f, d := lazyFixture(t, 1<<20)
	a := openLazy(t, s, d, f, len(f.data))
	b := openLazy(t, s, d, f, len(f.data))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		q := make([]byte, len(f.data))
		for {
			select {
			case <-stop:
				return
			default:
			}
			b.ReadAt(q, 0)
			b.Evict(0)
		}
	}()
	p := make([]byte, 256<<10)
	for i := 0; i < 200; i++ {
		off := int64(64<<10 + (i%8)*(64<<10))
		if _, err := a.ReadAt(p, off); err != nil && !errors.Is(err, ErrUnavailable) {
			t.Fatal(err)
		} else if err == nil && !bytes.Equal(p, f.data[off:off+int64(len(p))]) {
			t.Fatalf("read %d at %d returned bytes of an evicted page", i, off)
		}
	}
	close(stop)
	wg.Wait()
}

// A read that needs remote data stops when its context ends, and so
// does one waiting for another reader's fetch of the same page.
func TestLazyReadHonoursContext(t *testing.T) {
	s, f, d := lazyFixture(t, 1<<20)
	f.hang = true
	b, err := s.OpenLazy(d, int64(len(f.data)), f, LazyOptions{RetryFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	owner := make(chan error, 1)
	go func() {
		_, err := b.ReadAtContext(ctx, make([]byte, 10), 0)
		owner <- err
	}()
	wctx, wcancel := context.WithCancel(context.Background())
	waiter := make(chan error, 1)
	go func() {
		_, err := b.ReadAtContext(wctx, make([]byte, 10), 5)
		waiter <- err
	}()
	wcancel()
	if err := <-waiter; !errors.Is(err, context.Canceled) {
		t.Fatalf("waiting read after its context ended: %v", err)
	}
	cancel()
	if err := <-owner; !errors.Is(err, context.Canceled) {
		t.Fatalf("fetching read after its context ended: %v", err)
	}
	// A registry that is down: the backoff ends with the context too.
	f.mu.Lock()
	f.hang, f.down = false, true
	f.mu.Unlock()
	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := b.ReadAtContext(ctx, make([]byte, 10), 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read with the registry down after its deadline: %v", err)
	}
}

// A manifest may claim any size: nothing is sized by the claim before a
// byte arrives, and a large read asks for bounded ranges.
func TestLazyClaimedSizeBoundsNothing(t *testing.T) {
	s, f, d := lazyFixture(t, 20<<20)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	huge, err := s.OpenLazy(d, 1<<43, zeroFetcher{}, LazyOptions{})
	if errors.Is(err, syscall.EFBIG) {
		t.Skipf("the test directory's filesystem cannot hold an 8 TiB sparse file: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 64)
	if _, err := huge.ReadAt(p, 1<<43-64); err != nil {
		t.Fatal(err)
	}
	if huge.Present() != 16<<10 {
		t.Fatalf("present %d after one page", huge.Present())
	}
	huge.Close()
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 32<<20 { // a bitmap would take 64 MiB
		t.Fatalf("a lazy blob claiming 8 TiB allocated %d bytes", n)
	}
	if _, err := s.OpenLazy(d, 1<<60, zeroFetcher{}, LazyOptions{}); err == nil {
		t.Fatal("a claim of 2^60 bytes was accepted")
	}
	s.RemoveLazy(d)
	b := openLazy(t, s, d, f, len(f.data))
	readAll(t, b, f.data)
	if f.maxN > maxFetchSpan {
		t.Fatalf("a 20 MiB read asked for %d bytes at once", f.maxN)
	}
}

type zeroFetcher struct{}

func (zeroFetcher) FetchRange(ctx context.Context, digest string, off, n int64) ([]byte, error) {
	return make([]byte, n), nil
}

// registryBlob pushes a random blob of size bytes to a real registry and
// returns it, its digest, and a counting proxy in front of the registry.
func registryBlob(t *testing.T, size int) ([]byte, string, *rangeProxy) {
	t.Helper()
	reg := regtest.Start(t)
	a := newStore(t)
	cfg := chainOf(t, a, 7, size)
	if _, err := Push(context.Background(), a, target(t, reg.Addr+"/lazy:v1", nil), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	d := cfg.Layers[0].Digest
	data, err := os.ReadFile(mustPath(a, d))
	if err != nil {
		t.Fatal(err)
	}
	up, _ := url.Parse("http://" + reg.Addr)
	rp := &rangeProxy{proxy: httputil.NewSingleHostReverseProxy(up)}
	rp.srv = httptest.NewServer(rp)
	t.Cleanup(rp.srv.Close)
	return data, d, rp
}

// rangeProxy counts the Range requests a registry receives; slow holds
// each one a moment, so that concurrent readers overlap.
type rangeProxy struct {
	srv    *httptest.Server
	proxy  *httputil.ReverseProxy
	ranges atomic.Int32
	slow   atomic.Bool
}

func (rp *rangeProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Range") != "" {
		rp.ranges.Add(1)
		if rp.slow.Load() {
			time.Sleep(100 * time.Millisecond)
		}
	}
	rp.proxy.ServeHTTP(w, r)
}

func (rp *rangeProxy) fetcher(t *testing.T) RegistryRanges {
	tg := target(t, strings.TrimPrefix(rp.srv.URL, "http://")+"/lazy:v1", nil)
	return RegistryRanges{Repo: tg.Repo}
}

// N concurrent readers of a missing page cause one range request.
func TestLazyConcurrentMissesFetchOnce(t *testing.T) {
	data, d, rp := registryBlob(t, 1<<20)
	s := newStore(t)
	b := openLazy(t, s, d, rp.fetcher(t), len(data))
	rp.slow.Store(true)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 4096)
			off := int64(300<<10 + i*512)
			if _, err := b.ReadAt(p, off); err != nil {
				errs <- err
			} else if !bytes.Equal(p, data[off:off+4096]) {
				errs <- errors.New("wrong bytes")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := rp.ranges.Load(); n != 1 {
		t.Fatalf("8 concurrent readers of one missing page: %d range requests", n)
	}
}

// The registry states the blob's real size; a manifest claiming another
// fails the read clearly.
func TestLazyClaimedSizeCheckedAgainstRegistry(t *testing.T) {
	data, d, rp := registryBlob(t, 1<<20)
	s := newStore(t)
	b := openLazy(t, s, d, rp.fetcher(t), 2*len(data))
	if _, err := b.ReadAt(make([]byte, 100), 0); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("read of a blob whose manifest doubles its size: %v", err)
	}
	if rp.ranges.Load() != 1 {
		t.Fatalf("a size mismatch was retried: %d range requests", rp.ranges.Load())
	}
	// Reading where the manifest puts the trailer: past the blob's end.
	if _, err := b.ReadAt(make([]byte, 64), int64(2*len(data)-64)); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("read of the claimed trailer past the blob's end: %v", err)
	}
	if rp.ranges.Load() > 5 { // a retried GET may count twice
		t.Fatalf("a size mismatch was retried: %d range requests", rp.ranges.Load())
	}
	s.RemoveLazy(d)
	b = openLazy(t, s, d, rp.fetcher(t), len(data))
	readAll(t, b, data)
}

// faultRegistry serves one blob and answers range requests as told: a
// fault a real registry does not produce.
func faultRegistry(t *testing.T, data []byte, answer func(w http.ResponseWriter, first, last int64)) RegistryRanges {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var first, last int64
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err != nil {
			http.Error(w, "want a range", http.StatusBadRequest)
			return
		}
		answer(w, first, last)
	}))
	t.Cleanup(srv.Close)
	repo, err := remote.NewRepository(strings.TrimPrefix(srv.URL, "http://") + "/x")
	if err != nil {
		t.Fatal(err)
	}
	repo.PlainHTTP = true
	repo.Client = http.DefaultClient
	return RegistryRanges{Repo: repo}
}

func TestFetchRangeChecksContentRange(t *testing.T) {
	data := make([]byte, 100000)
	rand.New(rand.NewSource(3)).Read(data)
	sum := sha256.Sum256(data)
	d := "sha256:" + hex.EncodeToString(sum[:])
	partial := func(shift int64, total string) RegistryRanges {
		return faultRegistry(t, data, func(w http.ResponseWriter, first, last int64) {
			first, last = first+shift, last+shift
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%s", first, last, total))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(data[first : last+1])
		})
	}
	ctx := context.Background()
	if got, err := partial(0, "100000").FetchRange(ctx, d, 5000, 1000); err != nil || !bytes.Equal(got, data[5000:6000]) {
		t.Fatalf("honest 206: %v", err)
	}
	if got, err := partial(0, "*").FetchRange(ctx, d, 5000, 1000); err != nil || !bytes.Equal(got, data[5000:6000]) {
		t.Fatalf("honest 206 with unknown total: %v", err)
	}
	if _, err := partial(7, "100000").FetchRange(ctx, d, 5000, 1000); !errors.Is(err, ErrBadRange) {
		t.Fatalf("206 with another range: %v", err)
	}
	short := faultRegistry(t, data, func(w http.ResponseWriter, first, last int64) {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/100000", first, last-10))
		w.WriteHeader(http.StatusPartialContent)
		w.Write(data[first : last-9])
	})
	if _, err := short.FetchRange(ctx, d, 5000, 1000); !errors.Is(err, ErrBadRange) {
		t.Fatalf("206 with a shorter range: %v", err)
	}
	if _, total, err := partial(0, "200000").fetchRangeTotal(ctx, d, 5000, 1000); err != nil || total != 200000 {
		t.Fatalf("total: %d, %v", total, err)
	}
	whole := faultRegistry(t, data, func(w http.ResponseWriter, first, last int64) {
		w.Header().Set("Content-Length", fmt.Sprint(len(data)))
		w.Write(data) // ignores Range
	})
	if got, err := whole.FetchRange(ctx, d, 5000, 1000); err != nil || !bytes.Equal(got, data[5000:6000]) {
		t.Fatalf("200 with the whole blob: %v", err)
	}
	if _, err := whole.FetchRange(ctx, d, 99500, 1000); !errors.Is(err, ErrBadRange) {
		t.Fatalf("200 with a blob shorter than the range: %v", err)
	}
	// Through a lazy blob: the wrong range is not retried and not stored.
	s := newStore(t)
	b := openLazy(t, s, d, partial(7, "100000"), len(data))
	if _, err := b.ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrBadRange) {
		t.Fatalf("lazy read through a registry answering another range: %v", err)
	}
	if b.Present() != 0 {
		t.Fatal("bytes of the wrong range were kept")
	}
}

// A blob assembled from pages two LazyBlobs fetched is verified as a
// whole: a page one of them got wrong fails the fill and is forgotten by
// both; the next fill fetches again and adopts.
func TestLazyFillVerifiesSharedPages(t *testing.T) {
	s, f, d := lazyFixture(t, 2<<20)
	a := openLazy(t, s, d, f, len(f.data))
	b := openLazy(t, s, d, &memFetcher{data: f.data, corrupt: true}, len(f.data))
	if _, err := b.ReadAt(make([]byte, 1<<20), 512<<10); err != nil {
		t.Fatal(err)
	}
	if err := a.Fill(context.Background(), s, FillOptions{}); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("fill with another LazyBlob's corrupt pages: %v", err)
	}
	if s.Has(d) || b.Present() != 0 {
		t.Fatalf("after a failed fill: in store %v, %d bytes present", s.Has(d), b.Present())
	}
	if err := a.Fill(context.Background(), s, FillOptions{}); err != nil {
		t.Fatal(err)
	}
	if fileDigest(t, mustPath(s, d)) != d {
		t.Fatal("adopted blob is wrong")
	}
}

// A map left without its data file never claims pages of a new one, and
// RemoveLazy clears every lazy file of a blob.
func TestLazyOrphanMap(t *testing.T) {
	s, f, d := lazyFixture(t, 1<<20)
	a := openLazy(t, s, d, f, len(f.data))
	readAll(t, a, f.data)
	a.Close()
	base := filepath.Join(s.PartialDir(), d[len("sha256:"):])
	if err := os.Remove(base + ".lazy"); err != nil { // as a crashed removal or gc leaves it
		t.Fatal(err)
	}
	b := openLazy(t, s, d, f, len(f.data))
	readAll(t, b, f.data)
	b.Close()
	os.Remove(base + ".lazy")
	if ds, err := s.LazyDigests(); err != nil || len(ds) != 1 || ds[0] != d {
		t.Fatalf("LazyDigests with an orphan map: %v, %v", ds, err)
	}
	if err := s.RemoveLazy(d); err != nil {
		t.Fatal(err)
	}
	if ents := partials(t, s); len(ents) != 0 {
		t.Fatalf("partial/ holds %v after RemoveLazy", ents)
	}
}

// A real layer whose index spans many pages: after another LazyBlob
// evicts them and a third writes its map, the layer still opens (its index
// is fetched again, never read from holes), lazily and through the stale
// LazyBlob that had it.
func TestLazyLayerIndexSurvivesEviction(t *testing.T) {
	var buf bytes.Buffer
	w, err := snapshot.NewWriter(&buf, snapshot.WriterOptions{Codec: snapshot.CodecNone, VirtualSize: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	blk := make([]byte, 4096)
	for i := uint64(0); i < 2000; i++ { // 2000 extents: an index of about 50 KiB
		blk[0] = byte(i)
		if err := w.AddData(2*i, blk); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	sum := sha256.Sum256(data)
	d := "sha256:" + hex.EncodeToString(sum[:])
	s := newStore(t)
	f := &memFetcher{data: data}
	lazy := func() *LazyBlob {
		b, err := s.OpenLazy(d, int64(len(data)), f, LazyOptions{Page: 4096})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	a := lazy()
	if _, err := snapshot.Open(a); err != nil {
		t.Fatal(err)
	}
	a.Sync()
	b := lazy()
	if freed, err := b.Evict(0); err != nil || freed < 40<<10 {
		t.Fatalf("evict: freed %d, %v", freed, err)
	}
	if _, err := a.ReadAt(make([]byte, 10), 4096); err != nil { // a fetches, and writes its map
		t.Fatal(err)
	}
	a.Close()
	l, err := snapshot.Open(lazy())
	if err != nil {
		t.Fatalf("open after eviction: %v", err)
	}
	ref, err := snapshot.Open(snapshot.BytesSource(data))
	if err != nil {
		t.Fatal(err)
	}
	p, q := make([]byte, 1<<20), make([]byte, 1<<20)
	if err := l.ReadData(p, 3<<20, nil); err != nil {
		t.Fatalf("read after eviction: %v", err)
	}
	if ref.ReadData(q, 3<<20, nil); !bytes.Equal(p, q) {
		t.Fatal("read after eviction: wrong bytes")
	}
	e := lazy()
	if _, err := snapshot.Open(e); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EvictLazy(d, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := snapshot.Open(e); err != nil {
		t.Fatalf("open through a LazyBlob whose pages were evicted: %v", err)
	}
}

// A read after Close fails; it does not crash.
func TestLazyReadAfterClose(t *testing.T) {
	s, f, d := lazyFixture(t, 1<<20)
	b, err := s.OpenLazy(d, int64(len(f.data)), f, LazyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := b.ReadAt(make([]byte, 10), 0); err == nil {
		t.Fatal("read after Close succeeded")
	}
}
