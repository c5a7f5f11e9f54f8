package repo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

// brokenRangeFixture pushes a chain of layers of the given sizes to a
// real registry and puts a fault proxy in front of it. It returns the
// layers' bytes and digests, the registry and the proxy.
func brokenRangeFixture(t *testing.T, sizes ...int) ([][]byte, []string, *regtest.Registry, *faultproxy.Proxy) {
	t.Helper()
	reg := regtest.Start(t)
	a := newStore(t)
	cfg := chainOf(t, a, 11, sizes...)
	if _, err := Push(context.Background(), a, target(t, reg.Addr+"/broken:v1", nil), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	var data [][]byte
	var dgs []string
	for _, l := range cfg.Layers {
		b, err := os.ReadFile(mustPath(a, l.Digest))
		if err != nil {
			t.Fatal(err)
		}
		data, dgs = append(data, b), append(dgs, l.Digest)
	}
	return data, dgs, reg, faultproxy.Start(t, reg.Addr)
}

func proxyRanges(t *testing.T, p *faultproxy.Proxy) RegistryRanges {
	return RegistryRanges{Repo: target(t, p.Addr+"/broken:v1", nil).Repo}
}

// readAtCheck reads [off, off+n) of b and compares it with want.
func readAtCheck(b *LazyBlob, want []byte, off, n int64) error {
	got := make([]byte, n)
	if _, err := b.ReadAt(got, off); err != nil {
		return err
	}
	if !bytes.Equal(got, want[off:off+n]) {
		return errors.New("lazy read returned other bytes than the blob's")
	}
	return nil
}

// A registry that ignores Range (200 and the whole blob): the first lazy
// read streams the blob whole into the local copy, so every later read is
// local, reads stay byte-exact, and the blob fills without another
// request. The host is remembered: concurrent misses of the next blob
// send one request, not one each. Once the registry honours Range again
// (Harbor after caching the blob), lazy reads are ranges again.
func TestLazyRegistryIgnoringRangeStreamsWhole(t *testing.T) {
	data, dgs, _, p := brokenRangeFixture(t, 3<<20+12345, 2<<20+777, 2<<20)
	s := newStore(t)
	f := proxyRanges(t, p)
	p.Set(faultproxy.Faults{IgnoreRange: true})

	b := openLazy(t, s, dgs[0], f, len(data[0]))
	if err := readAtCheck(b, data[0], 1<<20+5, 1000); err != nil {
		t.Fatal(err)
	}
	if b.Present() != int64(len(data[0])) {
		t.Fatalf("after one read through a registry ignoring Range, %d of %d bytes are local", b.Present(), len(data[0]))
	}
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 50; i++ {
		off := r.Int63n(int64(len(data[0])) - 1)
		n := min(1+r.Int63n(200<<10), int64(len(data[0]))-off)
		if err := readAtCheck(b, data[0], off, n); err != nil {
			t.Fatal(err)
		}
	}
	readAll(t, b, data[0])
	if st := p.Stats(); st.BlobGets != 1 || st.BytesOut > int64(len(data[0]))+4096 {
		t.Fatalf("one blob read through a registry ignoring Range: %+v", st)
	}
	if err := b.Fill(context.Background(), s, FillOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := fileDigest(t, mustPath(s, dgs[0])); got != dgs[0] || p.Stats().BlobGets != 1 {
		t.Fatalf("fill after a whole-blob stream: %s, %+v", got, p.Stats())
	}

	// The next blob: 8 concurrent misses while the first request is slow.
	p.Set(faultproxy.Faults{IgnoreRange: true, Latency: 100 * time.Millisecond})
	p.ResetStats()
	b2 := openLazy(t, s, dgs[1], f, len(data[1]))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- readAtCheck(b2, data[1], int64(i)*(256<<10)+99, 4096)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if st := p.Stats(); st.BlobGets != 1 {
		t.Fatalf("8 concurrent misses of a blob on a host known to ignore Range: %d requests, want 1", st.BlobGets)
	}

	// The registry honours Range again.
	p.Set(faultproxy.Faults{})
	p.ResetStats()
	b3 := openLazy(t, s, dgs[2], f, len(data[2]))
	if err := readAtCheck(b3, data[2], 500<<10, 1000); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.RangeRequests != 1 || st.BytesOut > 1<<20 || b3.Present() >= int64(len(data[2])) {
		t.Fatalf("a registry honouring Range again: %+v, %d bytes local", st, b3.Present())
	}
}

// A whole-blob answer whose bytes are not the blob's (the registry's copy
// is damaged) fails the read with ErrDigestMismatch and keeps nothing.
func TestLazyWholeBlobAnswerVerified(t *testing.T) {
	data, dgs, reg, p := brokenRangeFixture(t, 1<<20)
	path := reg.BlobPath(dgs[0])
	bad := bytes.Clone(data[0])
	bad[len(bad)-100] ^= 0xff // past the range read below
	if err := os.WriteFile(path, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	p.Set(faultproxy.Faults{IgnoreRange: true})
	s := newStore(t)
	b := openLazy(t, s, dgs[0], proxyRanges(t, p), len(data[0]))
	// The read returns once its pages land (bytes are checked per chunk
	// above this layer), or, if it looks only after the stream failed its
	// sha256, fails with that.
	if err := readAtCheck(b, data[0], 0, 100); err != nil && !errors.Is(err, ErrDigestMismatch) {
		t.Fatal(err)
	}
	err := waitStreamEnd(t, b)
	if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), "ignores Range") {
		t.Fatalf("stream of a damaged whole-blob answer: %v", err)
	}
	if b.Present() != 0 {
		t.Fatalf("%d bytes of a damaged whole-blob answer were kept", b.Present())
	}
}

// waitStreamEnd waits until b's whole-blob stream has ended and returns
// how it ended.
func waitStreamEnd(t *testing.T, b *LazyBlob) error {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b.whole.mu.Lock()
		running, err := b.whole.running, b.whole.err
		b.whole.mu.Unlock()
		if !running {
			return err
		}
	}
	t.Fatal("the whole-blob stream did not end") // liveness only
	return nil
}

// A registry answering 206 with another Content-Range fails the read at
// once with an error naming what it did; one sending short 206 bodies
// fails after RetryFor with an error naming that. Neither keeps a byte.
func TestLazyRegistryBreakingRangeFails(t *testing.T) {
	data, dgs, _, p := brokenRangeFixture(t, 1<<20)
	s := newStore(t)
	f := proxyRanges(t, p)

	p.Set(faultproxy.Faults{ShiftContentRange: 4096})
	b := openLazy(t, s, dgs[0], f, len(data[0]))
	_, err := b.ReadAt(make([]byte, 100), 300<<10)
	if !errors.Is(err, ErrBadRange) || !strings.Contains(err.Error(), "serves other bytes than asked") {
		t.Fatalf("read through a registry shifting Content-Range: %v", err)
	}
	if st := p.Stats(); st.RangeRequests != 1 || b.Present() != 0 {
		t.Fatalf("a wrong Content-Range was retried or kept: %+v, %d bytes", st, b.Present())
	}

	p.Set(faultproxy.Faults{ShortBody: true})
	p.ResetStats()
	_, err = b.ReadAt(make([]byte, 100), 300<<10)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "short bodies") {
		t.Fatalf("read through a registry sending short 206 bodies: %v", err)
	}
	if st := p.Stats(); st.RangeRequests < 2 || b.Present() != 0 {
		t.Fatalf("short bodies: %+v, %d bytes kept", st, b.Present())
	}

	p.Set(faultproxy.Faults{})
	if err := readAtCheck(b, data[0], 300<<10, 100); err != nil {
		t.Fatal(err)
	}
}

// gateTransport holds every whole-blob answer (a 200 to a blob GET) after
// its first open bytes until release is closed (or the request ends).
type gateTransport struct {
	open    int64
	release chan struct{}
}

type gateBody struct {
	io.ReadCloser
	ctx     context.Context
	left    int64
	release chan struct{}
}

func (g *gateBody) Read(p []byte) (int, error) {
	if g.left <= 0 {
		select {
		case <-g.release:
		case <-g.ctx.Done():
			return 0, g.ctx.Err()
		}
		return g.ReadCloser.Read(p)
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n, err := g.ReadCloser.Read(p)
	g.left -= int64(n)
	return n, err
}

func (g *gateTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil && resp.StatusCode == http.StatusOK && strings.Contains(r.URL.Path, "/blobs/") {
		resp.Body = &gateBody{ReadCloser: resp.Body, ctx: r.Context(), left: g.open, release: g.release}
	}
	return resp, err
}

// A whole-blob stream runs on its own: the read that started it returns
// once its pages land, its context ending does not end the stream, and
// Close ends a stream that is still running.
func TestLazyWholeStreamDetached(t *testing.T) {
	data, dgs, _, p := brokenRangeFixture(t, 12<<20, 12<<20)
	p.Set(faultproxy.Faults{IgnoreRange: true})
	gate := &gateTransport{open: 5 << 20, release: make(chan struct{})}
	f := RegistryRanges{Repo: target(t, p.Addr+"/broken:v1", gate).Repo}
	s := newStore(t)
	b := openLazy(t, s, dgs[0], f, len(data[0]))
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 1000)
		_, err := b.ReadAtContext(ctx, buf, 100<<10)
		if err == nil && !bytes.Equal(buf, data[0][100<<10:100<<10+1000]) {
			err = errors.New("wrong bytes")
		}
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second): // liveness only: the read must not wait for the held rest
		t.Fatal("the read that started a whole-blob stream waits for the whole blob")
	}
	if b.Present() >= int64(len(data[0])) {
		t.Fatal("the whole blob is local although its answer is held")
	}
	cancel()
	close(gate.release)
	if err := readAtCheck(b, data[0], int64(len(data[0]))-1000, 1000); err != nil {
		t.Fatal(err)
	}
	readAll(t, b, data[0])
	if st := p.Stats(); st.BlobGets != 1 {
		t.Fatalf("the stream did not outlive its reader's context: %+v", st)
	}

	// Close ends a running stream; what landed stays.
	gate2 := &gateTransport{open: 5 << 20, release: make(chan struct{})}
	defer close(gate2.release)
	f2 := RegistryRanges{Repo: target(t, p.Addr+"/broken:v1", gate2).Repo}
	b2, err := s.OpenLazy(dgs[1], int64(len(data[1])), f2, LazyOptions{Page: 64 << 10, RetryFor: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := readAtCheck(b2, data[1], 0, 1000); err != nil {
		t.Fatal(err)
	}
	if err := b2.Close(); err != nil {
		t.Fatal(err)
	}
	b3 := openLazy(t, s, dgs[1], f, len(data[1]))
	if pr := b3.Present(); pr < 4<<20 || pr >= int64(len(data[1])) {
		t.Fatalf("after Close during a stream: %d bytes local", pr)
	}
	readAll(t, b3, data[1])
}

// A fill with a rate bounds a whole-blob stream too (a registry ignoring
// Range sends the blob in one answer): a 12 MiB blob filled at 8 MiB/s
// takes at least the 8 MiB past its first span's second, costs about one
// copy of the blob (the fill's two first requests go out together, before
// the host is known to ignore Range: the second is dropped), and comes out
// whole.
func TestLazyWholeStreamFillRate(t *testing.T) {
	data, dgs, _, p := brokenRangeFixture(t, 12<<20)
	s := newStore(t)
	p.Set(faultproxy.Faults{IgnoreRange: true})
	b := openLazy(t, s, dgs[0], proxyRanges(t, p), len(data[0]))
	const rate = 8 << 20
	start := time.Now()
	if err := b.Fill(context.Background(), s, FillOptions{Rate: rate}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if min := time.Duration(float64(len(data[0])-wholeSpan) / rate * 0.8 * float64(time.Second)); took < min {
		t.Fatalf("a %d-byte whole-blob stream at %d B/s took %v, want at least %v", len(data[0]), rate, took, min)
	}
	if got := fileDigest(t, mustPath(s, dgs[0])); got != dgs[0] || p.Stats().BytesOut > int64(len(data[0]))*3/2 {
		t.Fatalf("paced whole-blob fill: %s, %+v", got, p.Stats())
	}
	if b.streamRate.Load() != 0 {
		t.Fatal("the fill's rate outlived it")
	}
}
