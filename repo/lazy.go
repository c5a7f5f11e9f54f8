package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// RangeFetcher reads byte ranges of a blob from wherever it lives remotely
// (a registry, with HTTP range requests). Implementations must return
// exactly n bytes or an error.
type RangeFetcher interface {
	FetchRange(ctx context.Context, digest string, off, n int64) ([]byte, error)
}

// rangeTotaler is a RangeFetcher that also says the blob's total size when
// the remote states it (the total of a Content-Range), or -1. A lazy blob
// checks it against the size the manifest claims.
type rangeTotaler interface {
	fetchRangeTotal(ctx context.Context, digest string, off, n int64) ([]byte, int64, error)
}

// LazyOptions bound what a lazy blob does on its own.
type LazyOptions struct {
	// ReadAhead is the largest read-ahead window (bytes): how far past a
	// sequential read's end to fetch. The window starts at twice the
	// read and doubles as sequential reads go on. Default 32 MiB (1 MiB
	// with Concurrency 1).
	ReadAhead int64
	// Concurrency is how many range requests one LazyBlob has in flight
	// at most: reads, read-ahead, prefetch and fill together. A read
	// needing several missing runs fetches them at once, a large span in
	// pieces, and the read-ahead runs in the background. Default 16. 1 is
	// one request at a time with the read-ahead fetched inside the read
	// that starts it (the behaviour before pipelining: a baseline).
	Concurrency int
	// RetryFor is how long a read that needs remote data keeps retrying
	// with backoff before failing with an error wrapping ErrUnavailable.
	// The read's context ends the retries sooner.
	RetryFor time.Duration
	// Page is the granularity of the present-map (bytes, a power of two
	// from 512 B to 1 GiB) of a new lazy blob; one that exists keeps the
	// page size of its map.
	Page int64
}

func (o *LazyOptions) defaults() {
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.ReadAhead == 0 {
		o.ReadAhead = 32 << 20
		if o.Concurrency == 1 {
			o.ReadAhead = 1 << 20
		}
	}
	if o.RetryFor == 0 {
		o.RetryFor = 30 * time.Second
	}
	if o.Page == 0 {
		o.Page = 16 << 10
	}
}

// maxLazySize bounds the size a manifest may claim for a lazy blob. The
// present-map is sparse (it grows with what was fetched), so the bound is
// about the sparse file, not memory.
const maxLazySize = 1 << 50

// maxFetchSpan bounds one range request (and so the buffer it needs):
// reads, read-ahead and fills ask for at most this much at a time, however
// large the read (a layer's index can be up to 1 GiB).
const maxFetchSpan = 8 << 20

// maxEvictedRereads bounds how often one read starts over because pages
// it read were evicted under it by another LazyBlob or process.
const maxEvictedRereads = 16

// LazyBlob is a blob being fetched on demand, shared by every process on
// the store:
//
//   - Root/partial/<hex>.lazy: a sparse file of the blob's size;
//   - Root/partial/<hex>.map: which pages of it are present (lazy_map.go);
//   - Root/partial/<hex>.lock: the blob's lock and removal counter
//     (lazy_lock.go).
//
// ReadAt serves present pages from the file and fetches missing ones
// (rounded out to pages, several requests at once, with a background
// read-ahead for sequential reads: lazy_pipe.go). One fetch per page is
// in flight in a LazyBlob at a time: concurrent misses of a page wait for
// it. A fetch runs without any lock; then, under the blob's
// lock, the pages still missing on disk are written, fdatasynced, and
// merged into the on-disk map (read, add, write temp, rename), so that
// the map never names a page that was not written and no process undoes
// another's update. Eviction and invalidation remove pages from the
// on-disk map under the same lock before any hole is punched; adoption
// (Fill) renames the verified file into the store under it, and nothing
// writes or punches the file after that.
//
// Bytes served are not verified here: layers verify each chunk's crc32c
// on every read, and Fill checks the whole blob's sha256.
type LazyBlob struct {
	digest   string
	size     int64
	page     int64
	path     string // partial/<hex>.lazy
	mapPath  string // partial/<hex>.map
	blobPath string // where adoption puts the file
	f        *os.File
	lk       *blobLock
	fetch    RangeFetcher
	opts     LazyOptions

	sizeChecked atomic.Bool  // the remote stated the blob's size, and it is size
	noMirrors   atomic.Bool  // bytes of this blob failed a check: fetch from the origin only
	streamRate  atomic.Int64 // bytes a second a whole-blob stream may take, 0: any (a Fill's Rate)
	filling     atomic.Int32 // Fills running on this LazyBlob (they hold the pin)
	whole       wholeStream  // a whole-blob answer being streamed in (lazy_whole.go)

	// Pipelining (lazy_pipe.go): slots bounds the range requests in
	// flight; every fetch and background read-ahead goroutine is counted
	// in wg and running and ends when closing does (Close cancels it).
	slots   chan struct{}
	closing context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	running atomic.Int64

	// Group fdatasync (syncData): syncs started and finished, and the
	// first failure, which every later commit returns.
	syncMu                    sync.Mutex
	syncCond                  *sync.Cond
	syncing                   bool
	syncStarted, syncFinished uint64
	syncErr                   error

	mu       sync.Mutex
	present  pageSet // the on-disk map as last read or written
	seen     uint64  // removal counter present was read at
	complete bool    // f is the adopted blob: every byte is local for good
	closed   bool    // Close began: no new fetch starts
	inflight map[int64]*fetchCall
	lastEnd  int64 // end of the previous read, to detect sequential reads
	raSize   int64 // current read-ahead window
	raStart  int64 // start of the last read-ahead window (background)
	raIssued int64 // its end
	raLive   int   // background read-aheads running
	raWaited bool  // a read waited for the read-ahead since the last window
	raRun    int64 // bytes read in this sequential run
	raStream bool  // the run is a stream: its read-ahead is topped up (stream)
	// hintStart, hintEnd: the span last announced by WillRead.
	hintStart, hintEnd int64
	fetched            int64 // bytes fetched remotely
}

// OpenLazy opens (creating if needed) the lazy blob digest of size bytes.
func (s *Store) OpenLazy(digest string, size int64, fetch RangeFetcher, opts LazyOptions) (*LazyBlob, error) {
	b, err := s.openLazy(digest, size, fetch, opts, true)
	if err == nil && b == nil {
		err = fmt.Errorf("lazy blob %s: %w", digest, ErrNotFound)
	}
	return b, err
}

// openLazy opens lazy blob digest. Without create it opens only an
// existing partial file (returning nil, nil when there is none) and takes
// its size from the file when size < 0.
func (s *Store) openLazy(digest string, size int64, fetch RangeFetcher, opts LazyOptions, create bool) (*LazyBlob, error) {
	if err := ValidateDigest(digest); err != nil {
		return nil, err
	}
	if size > maxLazySize || (create && size < 0) {
		return nil, fmt.Errorf("lazy blob %s: size %d out of range (at most %d)", digest, size, int64(maxLazySize))
	}
	opts.defaults()
	if opts.Page < minLazyPage || opts.Page > maxLazyPage || opts.Page&(opts.Page-1) != 0 {
		return nil, fmt.Errorf("lazy blob %s: page size %d is not a power of two from %d to %d", digest, opts.Page, minLazyPage, maxLazyPage)
	}
	base := filepath.Join(s.PartialDir(), digest[len("sha256:"):])
	if !create {
		if _, err := os.Stat(base + ".lazy"); errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
	}
	blobPath, _ := s.Path(digest)
	b := &LazyBlob{digest: digest, size: size, page: opts.Page, path: base + ".lazy", mapPath: base + ".map",
		blobPath: blobPath, fetch: fetch, opts: opts, lastEnd: -1, inflight: map[int64]*fetchCall{},
		slots: make(chan struct{}, opts.Concurrency)}
	b.closing, b.cancel = context.WithCancel(context.Background())
	b.syncCond = sync.NewCond(&b.syncMu)
	var err error
	for tries := 0; ; tries++ {
		if b.lk, err = openBlobLock(base+".lock", true); err != nil {
			return nil, err
		}
		if err = b.lk.lock(); !errors.Is(err, errLockGone) || tries == 3 {
			break
		}
		b.lk.close() // removed by its holder: a fresh lock file
	}
	if err != nil {
		b.lk.close()
		return nil, err
	}
	err = b.openFile(create)
	if err == nil && b.f == nil { // adopted or removed since the Stat: take our lock file back
		os.Remove(b.lk.path)
	}
	b.lk.unlock()
	if err != nil || b.f == nil {
		b.cancel()
		b.lk.close()
		return nil, err
	}
	return b, nil
}

// openFile opens the data file and loads the map, holding the lock.
func (b *LazyBlob) openFile(create bool) error {
	f, err := os.OpenFile(b.path, os.O_RDWR, 0)
	fresh := false
	if errors.Is(err, os.ErrNotExist) && create {
		f, err = os.OpenFile(b.path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		fresh = true
	}
	if errors.Is(err, os.ErrNotExist) && !create {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lazy blob %s: %w", b.digest, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("lazy blob %s: %w", b.digest, err)
	}
	if b.size < 0 {
		b.size = fi.Size()
	}
	if raw, err := os.ReadFile(b.mapPath); err == nil {
		if pg, sz, _, err := decodeLazyMap(raw); err == nil && sz == b.size {
			b.page = pg // the blob keeps its page size
		}
	}
	// A new data file, or one of another size (another manifest's claim),
	// has no present page, whatever a map left behind says.
	if fresh || fi.Size() != b.size {
		if err := f.Truncate(b.size); err != nil {
			f.Close()
			return fmt.Errorf("lazy blob %s: %w", b.digest, err)
		}
		if err := os.Remove(b.mapPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			f.Close()
			return fmt.Errorf("lazy blob %s: %w", b.digest, err)
		}
		b.lk.bump()
	}
	b.f = f
	b.present = readLazyMap(b.mapPath, b.page, b.size)
	b.seen = b.lk.epoch()
	return nil
}

// Size is the blob's size.
func (b *LazyBlob) Size() int64 { return b.size }

// Fetched is how many bytes this LazyBlob fetched remotely.
func (b *LazyBlob) Fetched() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fetched
}

// Present reports how many bytes of the blob are local.
func (b *LazyBlob) Present() int64 {
	b.refresh()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.complete {
		return b.size
	}
	return b.present.bytes(b.page, b.size)
}

// refresh rereads the on-disk map when pages were removed since it was
// read (or the blob was adopted) and returns the removal counter.
func (b *LazyBlob) refresh() uint64 {
	e := b.lk.epoch()
	b.mu.Lock()
	defer b.mu.Unlock()
	if e != b.seen && !b.complete {
		b.reloadLocked()
		b.seen = e
	}
	return e
}

func (b *LazyBlob) reloadLocked() {
	if samePath(b.f, b.blobPath) {
		b.complete = true
		return
	}
	b.present = readLazyMap(b.mapPath, b.page, b.size)
}

func (b *LazyBlob) isComplete() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.complete
}

// ReadAt implements io.ReaderAt, fetching what is missing. Remote
// fetches retry with backoff for at most LazyOptions.RetryFor (30 s by
// default), then fail with an error wrapping ErrUnavailable; use
// ReadAtContext to end them sooner.
func (b *LazyBlob) ReadAt(p []byte, off int64) (int, error) {
	return b.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt with a context: when it ends, remote fetches
// and their retries stop and the read fails with its error.
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
	fetchEnd := b.readAhead(off, end)
	for attempt := 0; ; attempt++ {
		e0 := b.refresh()
		complete := b.isComplete()
		if !complete {
			if err := b.ensure(ctx, off, fetchEnd, end, b.readPiece(fetchEnd-off)); err != nil {
				if noSpace(err) {
					return b.readThrough(ctx, p[:n], off, len(p), err)
				}
				return 0, err
			}
		}
		m, err := b.f.ReadAt(p[:n], off)
		if err != nil {
			return m, fmt.Errorf("lazy blob %s: %w", b.digest, err)
		}
		// Pages removed while we read them may have read as holes.
		if complete || b.lk.epoch() == e0 {
			if int64(m) < int64(len(p)) {
				return m, io.EOF
			}
			return m, nil
		}
		if attempt == maxEvictedRereads {
			return 0, fmt.Errorf("lazy blob %s: pages evicted under %d reads in a row: %w", b.digest, attempt, ErrUnavailable)
		}
		fetchEnd = end
	}
}

// noSpace reports whether err is a full disk (or quota) under the store.
func noSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// readThrough serves a read whose pages could not be cached because the
// disk is full: straight from the remote, without caching, so data stays
// readable (exported, copied off) on a full disk. The chunks read are
// still checked by their crc32c above this layer; nothing is recorded as
// present. cause is returned if the remote fails too.
func (b *LazyBlob) readThrough(ctx context.Context, p []byte, off int64, want int, cause error) (int, error) {
	data, err := b.fetchOnce(ctx, off, int64(len(p)))
	if err != nil {
		return 0, fmt.Errorf("%w (and reading through without caching: %w)", cause, err)
	}
	m := copy(p, data)
	if m < want {
		return m, io.EOF
	}
	return m, nil
}

// ErrUnavailable is wrapped when remote data could not be fetched in time.
var ErrUnavailable = errors.New("remote data unavailable")

// Sync makes the present-map durable. (Every fetch merges its pages into
// the map as it lands; a map lost in a crash only costs fetching again.)
func (b *LazyBlob) Sync() error {
	if b.isComplete() {
		return nil
	}
	f, err := os.Open(b.mapPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Fdatasync(int(f.Fd()))
}

// Close cancels the fetches in flight (reads waiting for them fail),
// waits for them and the background read-ahead to end, then closes the
// file and the lock.
func (b *LazyBlob) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cancel()
	b.wg.Wait()
	b.endWhole() // lazy_whole.go
	err := b.f.Close()
	b.lk.mu.Lock()
	b.lk.close()
	b.lk.mu.Unlock()
	return err
}
