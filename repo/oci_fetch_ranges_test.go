package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obdvol/obdvol/tests/faultproxy"
)

// segTransport counts the range requests in flight (the most at once)
// and fails those starting at or past failFrom (when > 0).
type segTransport struct {
	inflight, most, ranges atomic.Int64
	failFrom               int64
}

type doneBody struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *doneBody) Close() error {
	b.once.Do(b.done)
	return b.ReadCloser.Close()
}

func (s *segTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rng := r.Header.Get("Range")
	if rng == "" {
		return http.DefaultTransport.RoundTrip(r)
	}
	s.ranges.Add(1)
	var first, last int64
	fmt.Sscanf(rng, "bytes=%d-%d", &first, &last)
	if s.failFrom > 0 && first >= s.failFrom {
		return nil, errors.New("segTransport: connection refused")
	}
	n := s.inflight.Add(1)
	for {
		m := s.most.Load()
		if n <= m || s.most.CompareAndSwap(m, n) {
			break
		}
	}
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err != nil {
		s.inflight.Add(-1)
		return nil, err
	}
	resp.Body = &doneBody{ReadCloser: resp.Body, done: func() { s.inflight.Add(-1) }}
	return resp, nil
}

// One large blob pulls over several range requests at once, byte-exact,
// and leaves no partial or segment file.
func TestPullBlobInRanges(t *testing.T) {
	ctx := context.Background()
	data, dgs, _, p := brokenRangeFixture(t, 5<<20+4321)
	p.Set(faultproxy.Faults{Latency: 20 * time.Millisecond})
	st := &segTransport{}
	b := newStore(t)
	res, err := Pull(ctx, b, target(t, p.Addr+"/broken:v1", st), PullOptions{RangeConcurrency: 4, RangeMin: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	seg := rangeOptions{min: 1 << 20}.segment()
	want := (int64(len(data[0])) + seg - 1) / seg
	if st.ranges.Load() != want || st.most.Load() < 2 || st.most.Load() > 4 {
		t.Fatalf("%d range requests (want %d), at most %d at once (want 2 to 4)", st.ranges.Load(), want, st.most.Load())
	}
	if got, _ := os.ReadFile(mustPath(b, dgs[0])); string(got) != string(data[0]) || res.Layers[0].Fetched != int64(len(data[0])) {
		t.Fatalf("blob pulled in ranges differs (%+v)", res.Layers[0])
	}
	if left := partials(t, b); len(left) != 0 {
		t.Fatalf("partial files left: %v", left)
	}
}

// A pull cut after some segments keeps them; the next pull fetches only
// the missing ones.
func TestPullRangesResume(t *testing.T) {
	ctx := context.Background()
	data, dgs, _, p := brokenRangeFixture(t, 5<<20+4321)
	size := int64(len(data[0]))
	seg := rangeOptions{min: 1 << 20}.segment()
	b := newStore(t)
	opts := PullOptions{RangeConcurrency: 3, RangeMin: 1 << 20}
	cut := &segTransport{failFrom: 3 * seg}
	if _, err := Pull(ctx, b, target(t, p.Addr+"/broken:v1", cut), opts); err == nil {
		t.Fatal("a pull whose later segments fail succeeded")
	}
	if left := strings.Join(partials(t, b), " "); !strings.Contains(left, ".segs") || !strings.Contains(left, ".part") {
		t.Fatalf("after a cut pull: %s", left)
	}
	st := &segTransport{}
	res, err := Pull(ctx, b, target(t, p.Addr+"/broken:v1", st), opts)
	if err != nil {
		t.Fatal(err)
	}
	missing := (size+seg-1)/seg - 3
	if l := res.Layers[0]; st.ranges.Load() != missing || l.Resumed != 3*seg || l.Fetched != size-3*seg {
		t.Fatalf("resumed pull: %+v, %d range requests (want %d)", l, st.ranges.Load(), missing)
	}
	if got, _ := os.ReadFile(mustPath(b, dgs[0])); string(got) != string(data[0]) {
		t.Fatal("resumed blob differs")
	}
	if left := partials(t, b); len(left) != 0 {
		t.Fatalf("partial files left: %v", left)
	}
}

// Segments recorded in a .segs file whose bytes are wrong (a crash before
// the data reached the disk) fail the final check; the blob is fetched
// again from zero and pulled byte-exact.
func TestPullRangesBadSegmentsRefetched(t *testing.T) {
	ctx := context.Background()
	data, dgs, _, p := brokenRangeFixture(t, 2<<20+99)
	b := newStore(t)
	opts := PullOptions{RangeConcurrency: 2, RangeMin: 1 << 20}
	cut := &segTransport{failFrom: 2 << 20} // the last segment
	if _, err := Pull(ctx, b, target(t, p.Addr+"/broken:v1", cut), opts); err == nil {
		t.Fatal("a pull whose later segments fail succeeded")
	}
	part := b.PartialDir() + "/" + dgs[0][7:] + ".part"
	f, err := os.OpenFile(part, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("garbage"), 100) // in segment 0, which is recorded
	f.Close()
	res, err := Pull(ctx, b, target(t, p.Addr+"/broken:v1", nil), opts)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(mustPath(b, dgs[0])); string(got) != string(data[0]) || res.Layers[0].Fetched <= int64(len(data[0])) {
		t.Fatalf("blob after a bad recorded segment: %+v", res.Layers[0])
	}
}

// A registry that ignores Range: the blob falls back to one stream.
func TestPullRangesIgnored(t *testing.T) {
	ctx := context.Background()
	data, dgs, _, p := brokenRangeFixture(t, 3<<20)
	p.Set(faultproxy.Faults{IgnoreRange: true})
	b := newStore(t)
	if _, err := Pull(ctx, b, target(t, p.Addr+"/broken:v1", nil), PullOptions{RangeConcurrency: 4, RangeMin: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(mustPath(b, dgs[0])); string(got) != string(data[0]) {
		t.Fatal("blob differs")
	}
	if st := p.Stats(); st.RangeRequests != 1 || st.BytesOut > int64(len(data[0]))+64<<10 {
		t.Fatalf("a registry ignoring Range: %+v", st)
	}
	if left := partials(t, b); len(left) != 0 {
		t.Fatalf("partial files left: %v", left)
	}
	// A registry shifting Content-Range fails the pull naming that.
	p.Set(faultproxy.Faults{ShiftContentRange: 10})
	rangeIgnoredHosts.Delete(p.Addr)
	_, err := Pull(ctx, newStore(t), target(t, p.Addr+"/broken:v1", nil), PullOptions{RangeConcurrency: 4, RangeMin: 1 << 20})
	if !errors.Is(err, ErrBadRange) || !strings.Contains(err.Error(), "serves other bytes than asked") {
		t.Fatalf("pull through a registry shifting Content-Range: %v", err)
	}
	// Short 206 bodies fail the pull (after retries) naming that, and
	// leave nothing in the store.
	p.Set(faultproxy.Faults{ShortBody: true})
	c := newStore(t)
	_, err = Pull(ctx, c, target(t, p.Addr+"/broken:v1", nil), PullOptions{RangeConcurrency: 4, RangeMin: 1 << 20})
	if err == nil || !strings.Contains(err.Error(), "the answer ended after") || c.Has(dgs[0]) {
		t.Fatalf("pull through a registry sending short 206 bodies: %v", err)
	}
}
