package volume

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/obdvol/obdvol/journal"
	"golang.org/x/sys/unix"
)

// The writable layer is a directory with two files:
//
//	data     a sparse file as large as the volume; block b lives at b*bs,
//	         so overwrites happen in place and the file never outgrows the
//	         volume.
//	journal  which blocks hold data here and which read as zeros
//	         (package journal has its format and invariants).
//
// Durability (Flush): take the pending records, fdatasync data, then
// append the records to the journal and fdatasync it. A record is only
// ever written after the data it describes reached the disk, so after a
// crash (kill -9 at any moment) every write a completed Flush covered is
// there; later writes are there or not, block by block. When the journal
// grows past its bound it is rewritten from the bitmap (temp file, fsync,
// rename), so it stays proportional to the layer's extents.
//
// A failed fdatasync (of data or journal) is fail-stop: the layer
// refuses every later read, write and flush with that error, because
// the kernel may have dropped the dirty pages and a retried fsync would
// report success without them. Reopening replays what reached the disk.
type writable struct {
	dir  string
	bs   uint64
	data *os.File
	j    *journal.Journal

	mu      sync.RWMutex // guards bm, pending
	bm      *bitmap
	pending []jrec

	flushMu  sync.Mutex // serializes Flush; guards j and compactN
	compactN int        // journal size that triggers a rewrite

	failed atomic.Pointer[error] // fail-stop: set once by a failed fsync

	// readOnly: opened by openWritableReadOnly. data is opened O_RDONLY
	// (nil when the layer has no data file), j is nil, and every method
	// that would change the layer or its files fails with ErrReadOnly.
	readOnly bool
}

// jrec is a journal record: (start, count, state).
type jrec = journal.Record

// ErrJournalCorrupt is returned when a writable layer's journal is
// damaged, not merely torn by a crash; such an error also wraps
// ErrCorrupt.
var ErrJournalCorrupt = journal.ErrCorrupt

// fdatasync is unix.Fdatasync; tests replace it to inject failures.
var fdatasync = unix.Fdatasync

// minCompact is the journal size (records) below which it is never
// rewritten; a variable so tests can exercise compaction.
var minCompact = 1 << 16

// openWritable opens (creating if needed) the writable layer in dir for a
// volume of size bytes and replays its journal.
func openWritable(dir string, size uint64, bs uint32) (*writable, error) {
	if err := mkdirAllSync(dir); err != nil {
		return nil, err
	}
	w := &writable{dir: dir, bs: uint64(bs), bm: newBitmap(size / uint64(bs)), compactN: minCompact}
	var err error
	if w.data, err = os.OpenFile(filepath.Join(dir, "data"), os.O_RDWR|os.O_CREATE, 0o600); err != nil {
		return nil, err
	}
	// The catalogue's size is the truth: a resize that committed before
	// its data file was extended or truncated is finished here, and data
	// past the end is dropped (journal records past it are ignored).
	fi, err := w.data.Stat()
	if err == nil && uint64(fi.Size()) != size {
		err = w.data.Truncate(int64(size))
	}
	if errors.Is(err, unix.EFBIG) {
		err = fmt.Errorf("the filesystem under the root cannot hold a %d-byte sparse data file (ext4: at most 16 TiB - 4 KiB; XFS or btrfs can): %w", size, err)
	}
	if err != nil {
		w.data.Close()
		return nil, fmt.Errorf("writable layer %s: data file: %w", dir, err)
	}
	w.j, err = journal.Open(filepath.Join(dir, "journal"), bs, journal.Options{Sync: func(fd int) error { return fdatasync(fd) }},
		func(r jrec) { w.bm.set(r.Start, r.Count, r.State) })
	if errors.Is(err, journal.ErrCorrupt) {
		err = fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if err != nil {
		w.data.Close()
		return nil, fmt.Errorf("writable layer %s: %w", dir, err)
	}
	// The compaction bound follows the live extents (not the journal's
	// length, which would let it grow geometrically across restarts).
	live := 0
	w.bm.runs(func(uint64, uint64, uint8) error { live++; return nil })
	w.compactN = max(minCompact, 4*live)
	// The names of data and journal (new ones included) are durable
	// before the layer is used, or referenced by a catalogue commit.
	if err := syncDir(dir); err != nil {
		w.data.Close()
		w.j.Close()
		return nil, fmt.Errorf("writable layer %s: %w", dir, err)
	}
	return w, nil
}

// openWritableReadOnly opens the writable layer in dir for reading only:
// it creates, truncates, repairs and fsyncs nothing, so that it works on
// a full (or read-only) filesystem. A missing directory or data file (a
// layer never opened for writing) is an empty layer; the journal is read
// as it is (journal.Read: a torn tail is ignored in memory, left in the
// file); a data file shorter than the volume reads as zeros past its end
// and one longer is read only up to size. The caller keeps writers out
// (the volume's lock, shared) for as long as it reads.
func openWritableReadOnly(dir string, size uint64, bs uint32) (*writable, error) {
	w := &writable{dir: dir, bs: uint64(bs), bm: newBitmap(size / uint64(bs)), readOnly: true}
	f, err := os.Open(filepath.Join(dir, "data"))
	switch {
	case err == nil:
		w.data = f
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("writable layer %s: data file: %w", dir, err)
	}
	err = journal.Read(filepath.Join(dir, "journal"), bs, func(r jrec) { w.bm.set(r.Start, r.Count, r.State) })
	if errors.Is(err, journal.ErrCorrupt) {
		err = fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if err == nil && w.data == nil {
		// Records of data with no data file: the file was lost.
		w.bm.runs(func(s, c uint64, st uint8) error {
			if st == stData && err == nil {
				err = fmt.Errorf("%w: journal records data at block %d but there is no data file", ErrCorrupt, s)
			}
			return nil
		})
	}
	if err != nil {
		w.close()
		return nil, fmt.Errorf("writable layer %s: %w", dir, err)
	}
	return w, nil
}

// run reports the state of blk and how many following blocks (at most
// max) share it.
func (w *writable) run(blk, max uint64) (uint8, uint64) {
	w.mu.RLock()
	st, n := w.bm.run(blk, max)
	w.mu.RUnlock()
	return st, n
}

// readData reads data-state bytes at byte offset off.
func (w *writable) readData(p []byte, off uint64) error {
	if w.data == nil { // a read-only layer without a data file has no data-state blocks
		return fmt.Errorf("writable layer %s: no data file", w.dir)
	}
	n, err := w.data.ReadAt(p, int64(off))
	if err == io.EOF {
		clear(p[n:])
		return nil
	}
	return err
}

// writeBlocks writes whole blocks at blk.
func (w *writable) writeBlocks(p []byte, blk uint64) error {
	if err := w.writeErr(); err != nil {
		return err
	}
	if _, err := w.data.WriteAt(p, int64(blk*w.bs)); err != nil {
		return fmt.Errorf("writable layer: %w", err)
	}
	n := uint64(len(p)) / w.bs
	w.mu.Lock()
	if st, m := w.bm.run(blk, n); st != stData || m < n {
		w.bm.set(blk, n, stData)
		w.pending = append(w.pending, jrec{Start: blk, Count: n, State: stData})
	}
	w.mu.Unlock()
	return nil
}

// zeroBlocks records count blocks at blk as zeros and frees their space.
func (w *writable) zeroBlocks(blk, count uint64) error {
	if err := w.writeErr(); err != nil {
		return err
	}
	w.mu.Lock()
	w.bm.set(blk, count, stZero)
	w.pending = append(w.pending, jrec{Start: blk, Count: count, State: stZero})
	w.mu.Unlock()
	err := unix.Fallocate(int(w.data.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE,
		int64(blk*w.bs), int64(count*w.bs))
	if err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("writable layer: punch hole: %w", err)
	}
	return nil
}

// growZero is the first step of growing the layer from oldSize to
// newSize: the bitmap takes the new size and the new blocks are journaled
// as a zero extent, durably, so that nothing a lower layer (or this one,
// before a shrink) had there reappears once the new size is committed.
// The data file is not extended yet (setSize does it).
func (w *writable) growZero(oldSize, newSize uint64) error {
	if w.readOnly {
		return ErrReadOnly
	}
	w.setBlocks(newSize)
	first := oldSize / w.bs
	w.mu.Lock()
	w.bm.set(first, (newSize-oldSize)/w.bs, stZero)
	w.pending = append(w.pending, jrec{Start: first, Count: (newSize - oldSize) / w.bs, State: stZero})
	w.mu.Unlock()
	return w.flush()
}

// setBlocks sets the bitmap's size (blocks past it are forgotten).
func (w *writable) setBlocks(size uint64) {
	w.mu.Lock()
	w.bm.resize(size / w.bs)
	w.mu.Unlock()
}

// setSize makes the layer size bytes large once that size is committed:
// the bitmap forgets blocks past it and the data file is truncated or
// extended to it. Journal records past the end stay; they are ignored at
// open and overridden by the zero extent of any later grow.
func (w *writable) setSize(size uint64) error {
	if w.readOnly {
		return ErrReadOnly
	}
	w.setBlocks(size)
	if err := w.data.Truncate(int64(size)); err != nil {
		return fmt.Errorf("writable layer: resize data file: %w", err)
	}
	return nil
}

// err is the fail-stop error, nil while the layer works.
func (w *writable) err() error {
	if e := w.failed.Load(); e != nil {
		return *e
	}
	return nil
}

// writeErr is why the layer cannot be written: fail-stop, or read-only.
func (w *writable) writeErr() error {
	if w.readOnly {
		return ErrReadOnly
	}
	return w.err()
}

// fail makes the layer fail-stop with err (the first error sticks) and
// returns the error in force.
func (w *writable) fail(err error) error {
	w.failed.CompareAndSwap(nil, &err)
	return w.err()
}

// flush makes every write that completed before it durable. A read-only
// layer has none: it does nothing.
func (w *writable) flush() error {
	if w.readOnly {
		return nil
	}
	w.flushMu.Lock()
	defer w.flushMu.Unlock()
	if err := w.err(); err != nil {
		return err
	}
	w.mu.Lock()
	recs := w.pending
	w.pending = nil
	var snap []jrec
	if w.j.Len()+len(recs) > w.compactN {
		w.bm.runs(func(s, c uint64, st uint8) error {
			snap = append(snap, jrec{Start: s, Count: c, State: st})
			return nil
		})
	}
	w.mu.Unlock()
	if err := fdatasync(int(w.data.Fd())); err != nil {
		return w.fail(fmt.Errorf("writable layer %s: fsync data: %w (the layer is stopped: reopen the volume to recover from its journal)", w.dir, err))
	}
	var err error
	if snap != nil {
		if err = w.j.Rewrite(snap); err == nil {
			w.compactN = max(minCompact, 4*len(snap))
		}
	} else {
		err = w.j.Append(recs)
	}
	if err != nil {
		if w.j.Err() != nil {
			return w.fail(err)
		}
		w.requeue(recs) // nothing of them is in the journal: retry later
		return fmt.Errorf("writable layer: %w", err)
	}
	return nil
}

// requeue puts records back after a failed flush so a later flush
// retries them (before any newer ones).
func (w *writable) requeue(recs []jrec) {
	w.mu.Lock()
	w.pending = append(recs, w.pending...)
	w.mu.Unlock()
}

// runs calls fn for each run of zero or data blocks, in block order. The
// layer must not change meanwhile.
func (w *writable) runs(fn func(start, count uint64, st uint8) error) error {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.bm.runs(fn)
}

// allocated is the disk space the data file uses.
func (w *writable) allocated() uint64 {
	if w.data == nil {
		return 0
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(w.data.Fd()), &st); err != nil {
		return 0
	}
	return uint64(st.Blocks) * 512
}

func (w *writable) close() error {
	err := w.flush()
	if w.data != nil {
		if e := w.data.Close(); err == nil {
			err = e
		}
	}
	if w.j != nil {
		if e := w.j.Close(); err == nil {
			err = e
		}
	}
	return err
}

// mkdirAllSync is os.MkdirAll(dir, 0o700) that also fsyncs the parent of
// every directory it creates, so that after a power cut a directory whose
// contents were made durable is still reachable.
func mkdirAllSync(dir string) error {
	dir = filepath.Clean(dir)
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s: not a directory", dir)
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirAllSync(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return syncDir(parent)
}

// syncDir fsyncs a directory (a variable so tests can see which).
var syncDir = func(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// reconcile brings the bitmap in line with the data file after the
// process that owned the layer died (its page cache survived it, its
// unflushed journal records did not): allocated ranges hold data written
// since (a punched hole is never re-allocated but by a write), and
// data-state blocks that are holes were discarded since. Only valid after
// a process crash, not a host crash. The changes are journaled by the
// next flush.
func (w *writable) reconcile() (changed uint64, err error) {
	if w.readOnly {
		return 0, ErrReadOnly
	}
	fd := int(w.data.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	size := st.Size
	// Allocation is tracked in filesystem blocks: with smaller volume
	// blocks an allocated range may cover blocks never written here, so
	// only discards (holes) can be trusted then.
	trustData := int64(w.bs) >= int64(st.Blksize)
	w.mu.Lock()
	defer w.mu.Unlock()
	mark := func(start, end int64, state uint8) {
		first, last := uint64(start)/w.bs, uint64(end)/w.bs // whole blocks only for holes
		if state == stData {
			first, last = uint64(start)/w.bs, (uint64(end)+w.bs-1)/w.bs
		}
		last = min(last, w.bm.blocks)
		for b := first; b < last; {
			cur, n := w.bm.run(b, last-b)
			if (state == stData && cur != stData) || (state == stZero && cur == stData) {
				w.bm.set(b, n, state)
				w.pending = append(w.pending, jrec{Start: b, Count: n, State: state})
				changed += n
			}
			b += n
		}
	}
	for pos := int64(0); pos < size; {
		d, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if err != nil {
			d = size // ENXIO: no more data
		}
		if hs := (pos + int64(w.bs) - 1) / int64(w.bs) * int64(w.bs); d > hs {
			mark(hs, d, stZero)
		}
		if d >= size {
			break
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			h = size
		}
		if trustData {
			mark(d, h, stData)
		}
		pos = h
	}
	return changed, nil
}
