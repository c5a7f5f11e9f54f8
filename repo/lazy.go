package repo

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"golang.org/x/sys/unix"
)

// RangeFetcher reads byte ranges of a blob from wherever it lives remotely
// (a registry, with HTTP range requests). Implementations must return
// exactly n bytes or an error.
type RangeFetcher interface {
	FetchRange(ctx context.Context, digest string, off, n int64) ([]byte, error)
}

// LazyOptions bound what a lazy blob does on its own.
type LazyOptions struct {
	// ReadAhead is how far past a sequential read's end to fetch (bytes).
	ReadAhead int64
	// RetryFor is how long a read that needs remote data keeps retrying
	// with backoff before failing with an I/O error.
	RetryFor time.Duration
	// Page is the granularity of the present-map (bytes, power of two).
	Page int64
}

func (o *LazyOptions) defaults() {
	if o.ReadAhead == 0 {
		o.ReadAhead = 1 << 20
	}
	if o.RetryFor == 0 {
		o.RetryFor = 30 * time.Second
	}
	if o.Page == 0 {
		o.Page = 16 << 10
	}
}

// LazyBlob is a blob being fetched on demand: a sparse file of the blob's
// size in Root/partial/<hex>.lazy, and a map of which pages of it are
// present (Root/partial/<hex>.map, rewritten with temp+rename at Sync).
// ReadAt serves present pages from the file and fetches missing ones
// (rounded out to pages, plus read-ahead for sequential reads), writing
// them to the file before use. The map may lag the file after a crash
// (pages are fetched again) but never claims a page that was not written:
// the file is fdatasynced before the map that names its pages.
//
// Bytes served are not verified here: layers verify each chunk's crc32c
// on every read, and Complete checks the whole blob's sha256.
type LazyBlob struct {
	digest string
	size   int64
	path   string
	f      *os.File
	fetch  RangeFetcher
	opts   LazyOptions

	mu      sync.Mutex
	present []uint64 // bitmap of pages
	dirty   bool
	lastEnd int64 // end of the previous read, to detect sequential reads
	raSize  int64 // current read-ahead window
	fetched int64 // bytes fetched remotely
}

const lazyMapMagic = "OBDVLMAP"

// OpenLazy opens (creating if needed) the lazy blob digest of size bytes.
func (s *Store) OpenLazy(digest string, size int64, fetch RangeFetcher, opts LazyOptions) (*LazyBlob, error) {
	if err := ValidateDigest(digest); err != nil {
		return nil, err
	}
	if size < 0 || size > 1<<50 {
		return nil, fmt.Errorf("lazy blob %s: size %d out of range", digest, size)
	}
	opts.defaults()
	path := filepath.Join(s.PartialDir(), digest[len("sha256:"):]+".lazy")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	pages := (size + opts.Page - 1) / opts.Page
	b := &LazyBlob{digest: digest, size: size, path: path, f: f, fetch: fetch, opts: opts,
		present: make([]uint64, (pages+63)/64), lastEnd: -1}
	b.loadMap()
	return b, nil
}

func (b *LazyBlob) mapPath() string { return b.path[:len(b.path)-len(".lazy")] + ".map" }

// loadMap reads the present-map; a missing or damaged map means nothing
// is known present (pages are fetched again).
func (b *LazyBlob) loadMap() {
	raw, err := os.ReadFile(b.mapPath())
	if err != nil || len(raw) != 20+8*len(b.present) || string(raw[:8]) != lazyMapMagic {
		return
	}
	le := binary.LittleEndian
	if int64(le.Uint64(raw[8:])) != b.opts.Page || le.Uint32(raw[16:]) != crc32.ChecksumIEEE(raw[20:]) {
		return
	}
	for i := range b.present {
		b.present[i] = le.Uint64(raw[20+8*i:])
	}
}

// Sync makes the present-map durable (after the pages it names).
func (b *LazyBlob) Sync() error {
	b.mu.Lock()
	if !b.dirty {
		b.mu.Unlock()
		return nil
	}
	raw := make([]byte, 20+8*len(b.present))
	copy(raw, lazyMapMagic)
	le := binary.LittleEndian
	le.PutUint64(raw[8:], uint64(b.opts.Page))
	for i, w := range b.present {
		le.PutUint64(raw[20+8*i:], w)
	}
	b.dirty = false
	b.mu.Unlock()
	le.PutUint32(raw[16:], crc32.ChecksumIEEE(raw[20:]))
	if err := unix.Fdatasync(int(b.f.Fd())); err != nil {
		return err
	}
	tmp := b.mapPath() + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, b.mapPath())
}

// Size is the blob's size.
func (b *LazyBlob) Size() int64 { return b.size }

// Fetched is how many bytes this LazyBlob fetched remotely.
func (b *LazyBlob) Fetched() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fetched
}

func (b *LazyBlob) has(page int64) bool { return b.present[page/64]&(1<<(page%64)) != 0 }

// missing returns the first run of missing pages within [first, last].
func (b *LazyBlob) missing(first, last int64) (int64, int64, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for p := first; p <= last; p++ {
		if !b.has(p) {
			q := p
			for q+1 <= last && !b.has(q+1) {
				q++
			}
			return p, q, true
		}
	}
	return 0, 0, false
}

// Present reports how many bytes of the blob are local.
func (b *LazyBlob) Present() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n int64
	pages := (b.size + b.opts.Page - 1) / b.opts.Page
	for p := int64(0); p < pages; p++ {
		if b.has(p) {
			n += min(b.opts.Page, b.size-p*b.opts.Page)
		}
	}
	return n
}

// ReadAt implements io.ReaderAt, fetching what is missing.
func (b *LazyBlob) ReadAt(p []byte, off int64) (int, error) {
	return b.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt with a context bounding the remote fetches.
func (b *LazyBlob) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 || off > b.size {
		return 0, fmt.Errorf("lazy blob %s: read at %d beyond size %d", b.digest, off, b.size)
	}
	n := min(int64(len(p)), b.size-off)
	if n == 0 {
		if len(p) > 0 {
			return 0, io.EOF
		}
		return 0, nil
	}
	end := off + n
	// Read-ahead, as the kernel does it: a random read fetches what it
	// needs; a sequential read that misses fetches a window past its end,
	// twice as large each time it misses again, up to ReadAhead. Reads
	// inside an earlier window fetch nothing.
	b.mu.Lock()
	seq := off == b.lastEnd
	b.lastEnd = end
	if !seq {
		b.raSize = 0
	}
	b.mu.Unlock()
	fetchEnd := end
	if seq {
		if _, _, miss := b.missing(off/b.opts.Page, (end-1)/b.opts.Page); miss {
			b.mu.Lock()
			b.raSize = min(b.opts.ReadAhead, max(2*n, 2*b.raSize))
			fetchEnd = min(b.size, end+b.raSize)
			b.mu.Unlock()
		}
	}
	if err := b.ensure(ctx, off, fetchEnd, end); err != nil {
		return 0, err
	}
	m, err := b.f.ReadAt(p[:n], off)
	if err == nil && int64(m) < int64(len(p)) {
		err = io.EOF
	}
	return m, err
}

// ensure makes [off, need) present, and fetches up to fetchEnd if that
// part is missing too (read-ahead failures are not errors).
func (b *LazyBlob) ensure(ctx context.Context, off, fetchEnd, need int64) error {
	pg := b.opts.Page
	first, last := off/pg, (fetchEnd-1)/pg
	for {
		p, q, ok := b.missing(first, last)
		if !ok {
			return nil
		}
		err := b.fetchPages(ctx, p, q)
		if err != nil {
			if p*pg >= need {
				return nil // only read-ahead failed
			}
			return err
		}
		first = q + 1
	}
}

// fetchPages fetches pages [p, q] with retries and backoff for at most
// RetryFor, writes them to the file and marks them present.
func (b *LazyBlob) fetchPages(ctx context.Context, p, q int64) error {
	pg := b.opts.Page
	start := p * pg
	n := min((q+1)*pg, b.size) - start
	deadline := time.Now().Add(b.opts.RetryFor)
	delay := 50 * time.Millisecond
	for {
		data, err := b.fetch.FetchRange(ctx, b.digest, start, n)
		if err == nil && int64(len(data)) != n {
			err = fmt.Errorf("got %d bytes, want %d", len(data), n)
		}
		if err == nil {
			if _, err := b.f.WriteAt(data, start); err != nil {
				return fmt.Errorf("lazy blob %s: %w", b.digest, err)
			}
			b.mu.Lock()
			for i := p; i <= q; i++ {
				b.present[i/64] |= 1 << (i % 64)
			}
			b.dirty = true
			b.fetched += n
			b.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil || time.Now().Add(delay).After(deadline) {
			return fmt.Errorf("lazy blob %s: fetch [%d,+%d): %w: %w", b.digest, start, n, ErrUnavailable, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay + time.Duration(rand.Int63n(int64(delay)/2))):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// ErrUnavailable is wrapped when remote data could not be fetched in time.
var ErrUnavailable = errors.New("remote data unavailable")

// Invalidate forgets pages overlapping [off, off+n) (a chunk that failed
// its checksum), so the next read fetches them again.
func (b *LazyBlob) Invalidate(off, n int64) {
	pg := b.opts.Page
	b.mu.Lock()
	defer b.mu.Unlock()
	for p := off / pg; p <= (off+n-1)/pg && p*pg < b.size; p++ {
		b.present[p/64] &^= 1 << (p % 64)
	}
	b.dirty = true
}

// Close syncs the map and closes the file.
func (b *LazyBlob) Close() error {
	err := b.Sync()
	if e := b.f.Close(); err == nil {
		err = e
	}
	return err
}

// FillOptions bound a background fill.
type FillOptions struct {
	Rate int64 // bytes per second, 0 = unlimited
	Span int64 // bytes per request; default 4 MiB
	// Concurrency is how many requests run at once; default 2.
	Concurrency int
	Progress    func(present, size int64)
}

// Fill fetches every missing page, in order, at most opts.Rate bytes a
// second, then checks the whole file against the digest and moves it
// into the store as an ordinary complete blob. It returns ErrDigestMismatch
// (and forgets every page) if the assembled blob is wrong.
func (b *LazyBlob) Fill(ctx context.Context, s *Store, opts FillOptions) error {
	if opts.Span == 0 {
		opts.Span = 4 << 20
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 2
	}
	pg := b.opts.Page
	pages := (b.size + pg - 1) / pg
	per := max(1, opts.Span/pg)
	start := time.Now()
	var moved atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Concurrency)
	for first := int64(0); first < pages && gctx.Err() == nil; {
		p, q, ok := b.missing(first, pages-1)
		if !ok {
			break
		}
		q = min(q, p+per-1)
		if opts.Rate > 0 {
			if ahead := time.Duration(float64(moved.Load())/float64(opts.Rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
				select {
				case <-gctx.Done():
				case <-time.After(ahead):
				}
			}
		}
		g.Go(func() error {
			if err := b.fetchPages(gctx, p, q); err != nil {
				return err
			}
			moved.Add(min((q+1)*pg, b.size) - p*pg)
			if opts.Progress != nil {
				opts.Progress(b.Present(), b.size)
			}
			return nil
		})
		first = q + 1
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := b.Sync(); err != nil {
		return err
	}
	return s.adoptLazy(b)
}

// adoptLazy verifies a fully present lazy blob and renames it into place.
func (s *Store) adoptLazy(b *LazyBlob) error {
	h := newHasher()
	if _, err := io.Copy(h, io.NewSectionReader(b.f, 0, b.size)); err != nil {
		return err
	}
	if got := h.digest(); got != b.digest {
		b.Invalidate(0, b.size)
		b.Sync()
		return fmt.Errorf("lazy blob %s assembled to %s: %w", b.digest, got, ErrDigestMismatch)
	}
	if err := b.f.Sync(); err != nil {
		return err
	}
	dst, err := s.Path(b.digest)
	if err != nil {
		return err
	}
	if err := os.Rename(b.path, dst); err != nil {
		if errors.Is(err, os.ErrNotExist) && s.Has(b.digest) {
			return nil // another process (a background fill) finished first
		}
		return err
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return err
	}
	os.Remove(b.mapPath())
	b.path = dst
	return nil
}

// Evict drops present pages (punching holes in the file) until at most
// keep bytes stay local, skipping the first and last pages (trailer and
// index live at the end; the header at the start). Only call it on blobs
// that can be fetched again. It returns the bytes freed.
func (b *LazyBlob) Evict(keep int64) (int64, error) {
	pg := b.opts.Page
	pages := (b.size + pg - 1) / pg
	var freed int64
	local := b.Present()
	for p := int64(1); p < pages-1 && local-freed > keep; p++ {
		b.mu.Lock()
		had := b.has(p)
		if had {
			b.present[p/64] &^= 1 << (p % 64)
			b.dirty = true
		}
		b.mu.Unlock()
		if !had {
			continue
		}
		if err := unix.Fallocate(int(b.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, p*pg, pg); err != nil {
			return freed, err
		}
		freed += pg
	}
	return freed, b.Sync()
}

// LocalBytes is how many bytes of blob digest this host has: all of a
// complete blob, the present pages of a lazy one, else 0.
func (s *Store) LocalBytes(digest string) int64 {
	if n, err := s.Size(digest); err == nil {
		return n
	}
	if ValidateDigest(digest) != nil {
		return 0
	}
	fi, err := os.Stat(filepath.Join(s.PartialDir(), digest[len("sha256:"):]+".lazy"))
	if err != nil {
		return 0
	}
	b, err := s.OpenLazy(digest, fi.Size(), nil, LazyOptions{})
	if err != nil {
		return 0
	}
	defer b.Close()
	return b.Present()
}

// LazyDigests lists the blobs that have a lazy partial file.
func (s *Store) LazyDigests() ([]string, error) {
	ents, err := os.ReadDir(s.PartialDir())
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if hex, ok := strings.CutSuffix(e.Name(), ".lazy"); ok && ValidateDigest("sha256:"+hex) == nil {
			out = append(out, "sha256:"+hex)
		}
	}
	return out, nil
}

// RemoveLazy deletes a lazy blob's partial file and map.
func (s *Store) RemoveLazy(digest string) error {
	if err := ValidateDigest(digest); err != nil {
		return err
	}
	base := filepath.Join(s.PartialDir(), digest[len("sha256:"):])
	os.Remove(base + ".map")
	if err := os.Remove(base + ".lazy"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// EvictLazy shrinks lazy blob digest to at most keep local bytes (its
// pages can be fetched again) and returns the bytes freed.
func (s *Store) EvictLazy(digest string, keep int64) (int64, error) {
	if ValidateDigest(digest) != nil {
		return 0, fmt.Errorf("invalid digest %q", digest)
	}
	fi, err := os.Stat(filepath.Join(s.PartialDir(), digest[len("sha256:"):]+".lazy"))
	if err != nil {
		return 0, err
	}
	b, err := s.OpenLazy(digest, fi.Size(), nil, LazyOptions{})
	if err != nil {
		return 0, err
	}
	defer b.Close()
	return b.Evict(keep)
}
