package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// fetchPages fetches pages [p, q] (at most maxFetchSpan bytes) with
// retries and backoff for at most RetryFor or until ctx ends, then
// commits them. No lock is held while fetching.
func (b *LazyBlob) fetchPages(ctx context.Context, p, q int64) error {
	if b.fetch == nil {
		return fmt.Errorf("lazy blob %s: no remote to fetch missing bytes from: %w", b.digest, ErrUnavailable)
	}
	pg := b.page
	start := p * pg
	n := min((q+1)*pg, b.size) - start
	deadline := time.Now().Add(b.opts.RetryFor)
	delay := 50 * time.Millisecond
	for {
		data, err := b.fetchSpan(ctx, p, q, start, n) // lazy_whole.go
		if err == nil {
			if data == nil {
				return nil // landed from a whole-blob stream
			}
			return b.commit(p, q, data)
		}
		if errors.Is(err, ErrBadRange) || errors.Is(err, ErrDigestMismatch) {
			return fmt.Errorf("lazy blob %s: fetch [%d,+%d): %w", b.digest, start, n, err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("lazy blob %s: fetch [%d,+%d): %w", b.digest, start, n, ctx.Err())
		}
		// A range past the blob's real end fails in ways that look like a
		// network fault: ask for the first byte, whose answer states the
		// real size, before retrying.
		if !b.sizeChecked.Load() && start > 0 {
			if _, perr := b.fetchOnce(ctx, 0, 1); errors.Is(perr, ErrDigestMismatch) {
				return fmt.Errorf("lazy blob %s: fetch [%d,+%d): %w", b.digest, start, n, perr)
			}
		}
		if time.Now().Add(delay).After(deadline) {
			return fmt.Errorf("lazy blob %s: fetch [%d,+%d): %w: %w", b.digest, start, n, ErrUnavailable, err)
		}
		t := time.NewTimer(delay + time.Duration(rand.Int63n(int64(delay)/2)))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("lazy blob %s: fetch [%d,+%d): %w", b.digest, start, n, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// fetchOnce asks the remote for [start, +n) once and checks what came
// back: n bytes, and the blob's total size, when the remote says it,
// equal to the size the manifest claimed.
func (b *LazyBlob) fetchOnce(ctx context.Context, start, n int64) ([]byte, error) {
	var data []byte
	total := int64(-1)
	var err error
	if b.noMirrors.Load() {
		ctx = withoutMirrors(ctx)
	}
	if rt, ok := b.fetch.(rangeTotaler); ok {
		data, total, err = rt.fetchRangeTotal(ctx, b.digest, start, n)
	} else {
		data, err = b.fetch.FetchRange(ctx, b.digest, start, n)
	}
	if total >= 0 && total != b.size {
		return nil, fmt.Errorf("the registry has %d bytes, the manifest claims %d: %w", total, b.size, ErrDigestMismatch)
	}
	if total >= 0 {
		b.sizeChecked.Store(true)
	}
	if err != nil {
		return nil, err
	}
	if int64(len(data)) != n {
		return nil, fmt.Errorf("got %d bytes, want %d", len(data), n)
	}
	return data, nil
}

// commit stores fetched pages [p, q]:
//
//  1. under the blob's lock, unless the file was adopted meanwhile (then
//     it is complete and left alone), write the pages the on-disk map
//     lacks (pages in the map are never rewritten: their bytes may be
//     read at any moment, and a full map freezes the file for adoption);
//  2. without the lock, fdatasync them (syncData: one fdatasync that
//     starts after the write, shared by the commits waiting for one);
//  3. under the lock, merge [p, q] into the on-disk map, unless pages were
//     removed since step 1 (another process may have merged and evicted
//     the same pages in between: they are fetched again).
func (b *LazyBlob) commit(p, q int64, data []byte) error {
	if err := b.lk.lock(); err != nil {
		return b.lost(err)
	}
	if !samePath(b.f, b.path) {
		b.lk.unlock()
		return b.lost(errLockGone)
	}
	pg := b.page
	disk := readLazyMap(b.mapPath, pg, b.size)
	wrote := false
	var err error
	for a := p; a <= q && err == nil; {
		if disk.has(a) {
			a++
			continue
		}
		c := a
		for c+1 <= q && !disk.has(c+1) {
			c++
		}
		lo, hi := (a-p)*pg, min((c+1-p)*pg, int64(len(data)))
		_, err = b.f.WriteAt(data[lo:hi], a*pg)
		wrote = true
		a = c + 1
	}
	e := b.lk.epoch()
	b.lk.unlock()
	if err != nil {
		return fmt.Errorf("lazy blob %s: %w", b.digest, err)
	}
	if wrote {
		if err := b.syncData(); err != nil {
			return fmt.Errorf("lazy blob %s: fdatasync: %w", b.digest, err)
		}
	}
	if err := b.lk.lock(); err != nil {
		return b.lost(err)
	}
	defer b.lk.unlock()
	if !samePath(b.f, b.path) {
		return b.lost(errLockGone)
	}
	disk = readLazyMap(b.mapPath, pg, b.size)
	if b.lk.epoch() == e {
		disk.add(p, q+1)
		if err := writeLazyMap(b.mapPath, pg, b.size, &disk, false); err != nil {
			return fmt.Errorf("lazy blob %s: %w", b.digest, err)
		}
	}
	b.mu.Lock()
	b.present = disk
	b.seen = b.lk.epoch()
	b.fetched += int64(len(data))
	b.mu.Unlock()
	return nil
}

// lost handles a lock or data file that is no longer the partial blob's:
// adopted into the store (every byte is local now: not an error) or
// removed.
func (b *LazyBlob) lost(err error) error {
	if !errors.Is(err, errLockGone) {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.complete || samePath(b.f, b.blobPath) {
		b.complete = true
		return nil
	}
	return fmt.Errorf("lazy blob %s was removed while in use: %w", b.digest, ErrNotFound)
}

// Invalidate forgets pages overlapping [off, off+n) (a chunk that failed
// its checksum), here and in the on-disk map, so the next read fetches
// them again. An adopted blob is verified and keeps its bytes.
func (b *LazyBlob) Invalidate(off, n int64) {
	pg := b.page
	if n <= 0 || off < 0 || off >= b.size {
		return
	}
	first, end := off/pg, min((off+n-1)/pg, lazyPages(b.size, pg)-1)+1
	if b.lk.lock() != nil {
		return
	}
	defer b.lk.unlock()
	if !samePath(b.f, b.path) {
		return
	}
	b.noMirrors.Store(true) // a mirror may have served them: the origin only from now on
	disk := readLazyMap(b.mapPath, pg, b.size)
	disk.remove(first, end)
	werr := writeLazyMap(b.mapPath, pg, b.size, &disk, false)
	b.lk.bump()
	b.mu.Lock()
	b.present = disk
	if werr != nil { // keep the map's view out of memory too
		b.present.remove(first, end)
	}
	b.seen = b.lk.epoch()
	b.mu.Unlock()
}

// FillOptions bound a background fill.
type FillOptions struct {
	Rate int64 // bytes per second, 0 = unlimited
	Span int64 // bytes per request; default 4 MiB, at most 8 MiB
	// Concurrency is how many requests run at once; default 2.
	Concurrency int
	Progress    func(present, size int64)
}

// errNotFull is returned by adoptLazy when pages went missing (evicted by
// another process) after the fill fetched them.
var errNotFull = errors.New("lazy blob lost pages before adoption")

// Fill fetches every missing page, in order, at most opts.Rate bytes a
// second, then checks the whole file against the digest and moves it
// into the store as an ordinary complete blob. It returns ErrDigestMismatch
// (and forgets every page) if the assembled blob is wrong; when mirrors may
// have served it, it first fills once more from the origin only. While it
// runs, eviction (by any process) leaves the blob alone.
func (b *LazyBlob) Fill(ctx context.Context, s *Store, opts FillOptions) error {
	if opts.Span <= 0 {
		opts.Span = 4 << 20
	}
	opts.Span = min(opts.Span, maxFetchSpan)
	if opts.Concurrency <= 0 {
		opts.Concurrency = 2
	}
	// Pinned, the blob is not evicted while it fills (see blobLock.pin).
	b.lk.mu.Lock()
	if err := b.lk.pin(); err != nil {
		b.lk.mu.Unlock()
		return fmt.Errorf("lazy blob %s: pin: %w", b.digest, err)
	}
	b.filling.Add(1)
	b.lk.mu.Unlock()
	// A registry that ignores Range sends the blob as one stream
	// (lazy_whole.go): the fill's rate bounds it too.
	b.streamRate.Store(max(opts.Rate, 0))
	defer b.streamRate.Store(0)
	defer func() {
		b.lk.mu.Lock()
		if b.filling.Add(-1) == 0 && !b.lk.closed {
			b.lk.unpin()
		}
		b.lk.mu.Unlock()
	}()
	for tries := 0; ; tries++ {
		if err := b.fillPages(ctx, opts); err != nil {
			return err
		}
		err := s.adoptLazy(b)
		if errors.Is(err, ErrDigestMismatch) && hasMirrors(b.fetch) && !b.noMirrors.Swap(true) {
			continue // a mirror may have served the bad bytes: again from the origin only
		}
		if !errors.Is(err, errNotFull) || tries == 3 {
			return err
		}
	}
}

func (b *LazyBlob) fillPages(ctx context.Context, opts FillOptions) error {
	pg := b.page
	pages := lazyPages(b.size, pg)
	per := max(1, opts.Span/pg)
	start := time.Now()
	var moved atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Concurrency)
	for first := int64(0); first < pages && gctx.Err() == nil; first += per {
		b.refresh()
		b.mu.Lock()
		_, miss := b.present.firstMissing(first, min(first+per, pages)-1)
		done := b.complete
		b.mu.Unlock()
		if done {
			break
		}
		if !miss {
			continue
		}
		if opts.Rate > 0 {
			if ahead := time.Duration(float64(moved.Load())/float64(opts.Rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
				select {
				case <-gctx.Done():
				case <-time.After(ahead):
				}
			}
		}
		g.Go(func() error {
			lo, hi := first*pg, min((first+per)*pg, b.size)
			before := b.Fetched()
			if err := b.ensure(gctx, lo, hi, hi, opts.Span); err != nil {
				return err
			}
			moved.Add(b.Fetched() - before)
			if opts.Progress != nil {
				opts.Progress(b.Present(), b.size)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

// adoptLazy verifies a fully present lazy blob and renames it into place.
// The sha256 is taken without the lock; the rename happens under it, only
// if no page was removed meanwhile (pages are only ever written while
// missing from the map, so a full map that lost nothing means the bytes
// hashed are the bytes renamed).
func (s *Store) adoptLazy(b *LazyBlob) error {
	if b.isComplete() {
		return nil
	}
	e0 := b.lk.epoch()
	pages := lazyPages(b.size, b.page)
	if m := readLazyMap(b.mapPath, b.page, b.size); !m.full(pages) {
		if !samePath(b.f, b.path) {
			return b.lost(errLockGone)
		}
		return errNotFull
	}
	h := newHasher()
	if _, err := io.Copy(h, io.NewSectionReader(b.f, 0, b.size)); err != nil {
		return fmt.Errorf("lazy blob %s: %w", b.digest, err)
	}
	got := h.digest()
	if err := b.lk.lock(); err != nil {
		return b.lost(err)
	}
	defer b.lk.unlock()
	if !samePath(b.f, b.path) {
		return b.lost(errLockGone)
	}
	if m := readLazyMap(b.mapPath, b.page, b.size); b.lk.epoch() != e0 || !m.full(pages) {
		return errNotFull
	}
	if got != b.digest {
		empty := pageSet{}
		werr := writeLazyMap(b.mapPath, b.page, b.size, &empty, false)
		b.lk.bump()
		b.mu.Lock()
		b.present, b.seen = empty, b.lk.epoch()
		b.mu.Unlock()
		if werr != nil {
			return werr
		}
		return fmt.Errorf("lazy blob %s assembled to %s: %w", b.digest, got, ErrDigestMismatch)
	}
	if err := b.f.Sync(); err != nil {
		return fmt.Errorf("lazy blob %s: fsync: %w", b.digest, err)
	}
	if err := os.Rename(b.path, b.blobPath); err != nil {
		return fmt.Errorf("lazy blob %s: %w", b.digest, err)
	}
	if err := syncDirOf(b.blobPath); err != nil {
		return err
	}
	// The file is the store's now: whoever still has it open finds it
	// adopted (the counter moved, the lock file is gone) and only reads.
	b.mu.Lock()
	b.complete = true
	b.mu.Unlock()
	b.lk.bump()
	os.Remove(b.mapPath)
	os.Remove(b.lk.path)
	return nil
}
