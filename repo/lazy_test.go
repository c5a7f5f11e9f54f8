package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand"
	"os"
	"sync"
	"testing"
	"time"
)

// memFetcher serves ranges of one blob, counting bytes; down makes it fail.
type memFetcher struct {
	mu      sync.Mutex
	data    []byte
	bytes   int64
	calls   int
	down    bool
	corrupt bool
}

func (m *memFetcher) FetchRange(ctx context.Context, digest string, off, n int64) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls++
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
