package repo

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// rangeLog is a FetchObserver that keeps what it is told.
type rangeLog struct {
	mu    sync.Mutex
	hosts map[string]int
	bytes int64
	errs  int
}

func (l *rangeLog) RangeRequest(registry string, n int64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hosts[registry]++
	l.bytes += n
	if err != nil {
		l.errs++
	}
}

func observeRanges(t *testing.T) *rangeLog {
	l := &rangeLog{hosts: map[string]int{}}
	prev := SetFetchObserver(l)
	t.Cleanup(func() { SetFetchObserver(prev) })
	return l
}

// Every range request a lazy read sends to a real registry is reported
// once, with the registry's host and the bytes it delivered.
func TestFetchObserverCountsRangeRequests(t *testing.T) {
	data, d, rp := registryBlob(t, 1<<20)
	s := newStore(t)
	b := openLazy(t, s, d, rp.fetcher(t), len(data))
	log := observeRanges(t)
	readAll(t, b, data)
	host := strings.TrimPrefix(rp.srv.URL, "http://")
	sent := int(rp.ranges.Load())
	if sent == 0 {
		t.Fatal("a lazy read of a missing blob sent no range request")
	}
	if len(log.hosts) != 1 || log.hosts[host] != sent {
		t.Fatalf("observer saw %v, the registry received %d range requests from %s", log.hosts, sent, host)
	}
	if log.bytes != int64(len(data)) || log.errs != 0 {
		t.Fatalf("observer saw %d bytes and %d errors, want %d bytes and none", log.bytes, log.errs, len(data))
	}
}

// A failed range request is reported with its error and no bytes.
func TestFetchObserverCountsErrors(t *testing.T) {
	data := make([]byte, 4096)
	rr := faultRegistry(t, data, func(w http.ResponseWriter, first, last int64) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	})
	log := observeRanges(t)
	_, err := rr.FetchRange(context.Background(), "sha256:"+strings.Repeat("a", 64), 0, 100)
	if err == nil {
		t.Fatal("a 503 answer fetched a range")
	}
	if log.errs != 1 || log.bytes != 0 || log.hosts[rr.Repo.Reference.Host()] != 1 {
		t.Fatalf("observer saw %v, %d bytes, %d errors", log.hosts, log.bytes, log.errs)
	}
	// An invalid request is refused before anything is sent: not reported.
	if _, err := rr.FetchRange(context.Background(), "sha256:bad", 0, 100); err == nil || errors.Is(err, ErrBadRange) {
		t.Fatalf("bad digest: %v", err)
	}
	if log.hosts[rr.Repo.Reference.Host()] != 1 {
		t.Fatalf("a request refused before sending was reported: %v", log.hosts)
	}
}
