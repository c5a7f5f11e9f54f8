package volume

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// The writable layer is a directory with two files:
//
//	data     a sparse file as large as the volume; block b lives at b*bs,
//	         so overwrites happen in place and the file never outgrows the
//	         volume.
//	journal  a header then 24-byte records (start, count, state, crc32c)
//	         saying which blocks hold data here and which read as zeros.
//
// Durability (Flush): take the pending records, fdatasync data, then
// append the records to the journal and fdatasync it. A record is only
// ever written after the data it describes reached the disk, so after a
// crash (kill -9 at any moment) every write a completed Flush covered is
// there; later writes are there or not, block by block. A torn record at
// the journal's tail fails its crc and ends the replay. When the journal
// grows past its bound it is rewritten from the bitmap (temp file, fsync,
// rename), so it stays proportional to the layer's extents.
type writable struct {
	dir  string
	bs   uint64
	data *os.File
	jf   *os.File

	mu      sync.RWMutex // guards bm, pending
	bm      *bitmap
	pending []jrec

	flushMu  sync.Mutex // serializes Flush
	jrecs    int        // records in the journal file
	compactN int        // journal size that triggers a rewrite
}

type jrec struct {
	start, count uint64
	st           uint8
}

const (
	journalMagic  = "OBDVJRN1"
	journalHeader = 16
	jrecSize      = 24
)

// minCompact is the journal size (records) below which it is never
// rewritten; a variable so tests can exercise compaction.
var minCompact = 1 << 16

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func encodeJrec(b []byte, r jrec) {
	binary.LittleEndian.PutUint64(b[0:], r.start)
	binary.LittleEndian.PutUint64(b[8:], r.count)
	b[16], b[17], b[18], b[19] = r.st, 0, 0, 0
	binary.LittleEndian.PutUint32(b[20:], crc32.Checksum(b[:20], crcTable))
}

// decodeJrec returns false for a torn or corrupt record.
func decodeJrec(b []byte) (jrec, bool) {
	if len(b) < jrecSize || binary.LittleEndian.Uint32(b[20:]) != crc32.Checksum(b[:20], crcTable) {
		return jrec{}, false
	}
	r := jrec{start: binary.LittleEndian.Uint64(b[0:]), count: binary.LittleEndian.Uint64(b[8:]), st: b[16]}
	if (r.st != stZero && r.st != stData) || b[17]|b[18]|b[19] != 0 || r.count == 0 || r.start+r.count < r.start {
		return jrec{}, false
	}
	return r, true
}

func journalHeaderBytes(bs uint64) []byte {
	h := make([]byte, journalHeader)
	copy(h, journalMagic)
	binary.LittleEndian.PutUint32(h[8:], uint32(bs))
	binary.LittleEndian.PutUint32(h[12:], crc32.Checksum(h[:12], crcTable))
	return h
}

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
	if err != nil {
		w.data.Close()
		return nil, fmt.Errorf("writable layer %s: data file: %w", dir, err)
	}
	if err := w.openJournal(); err != nil {
		w.data.Close()
		return nil, err
	}
	// The names of data and journal (new ones included) are durable
	// before the layer is used, or referenced by a catalogue commit.
	if err := syncDir(dir); err != nil {
		w.data.Close()
		w.jf.Close()
		return nil, fmt.Errorf("writable layer %s: %w", dir, err)
	}
	return w, nil
}

func (w *writable) openJournal() error {
	path := filepath.Join(w.dir, "journal")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	raw, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return err
	}
	if len(raw) < journalHeader {
		// New (or torn before its header reached disk: nothing was flushed).
		err = f.Truncate(0)
		if err == nil {
			_, err = f.WriteAt(journalHeaderBytes(w.bs), 0)
		}
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			f.Close()
			return err
		}
		raw = journalHeaderBytes(w.bs)
	}
	h := raw[:journalHeader]
	if string(h[:8]) != journalMagic || binary.LittleEndian.Uint32(h[12:]) != crc32.Checksum(h[:12], crcTable) {
		f.Close()
		return fmt.Errorf("writable layer %s: journal header is corrupt", w.dir)
	}
	if got := binary.LittleEndian.Uint32(h[8:]); uint64(got) != w.bs {
		f.Close()
		return fmt.Errorf("writable layer %s: journal block size %d, volume %d", w.dir, got, w.bs)
	}
	off := journalHeader
	for ; off+jrecSize <= len(raw); off += jrecSize {
		r, ok := decodeJrec(raw[off:])
		if !ok {
			break
		}
		w.bm.set(r.start, r.count, r.st)
		w.jrecs++
	}
	if off != len(raw) {
		// Drop a torn tail so new records follow valid ones.
		if err := f.Truncate(int64(off)); err != nil {
			f.Close()
			return err
		}
	}
	if _, err := f.Seek(int64(off), io.SeekStart); err != nil {
		f.Close()
		return err
	}
	w.jf = f
	w.compactN = max(minCompact, 4*w.jrecs)
	return nil
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
	n, err := w.data.ReadAt(p, int64(off))
	if err == io.EOF {
		clear(p[n:])
		return nil
	}
	return err
}

// writeBlocks writes whole blocks at blk.
func (w *writable) writeBlocks(p []byte, blk uint64) error {
	if _, err := w.data.WriteAt(p, int64(blk*w.bs)); err != nil {
		return fmt.Errorf("writable layer: %w", err)
	}
	n := uint64(len(p)) / w.bs
	w.mu.Lock()
	if st, m := w.bm.run(blk, n); st != stData || m < n {
		w.bm.set(blk, n, stData)
		w.pending = append(w.pending, jrec{blk, n, stData})
	}
	w.mu.Unlock()
	return nil
}

// zeroBlocks records count blocks at blk as zeros and frees their space.
func (w *writable) zeroBlocks(blk, count uint64) error {
	w.mu.Lock()
	w.bm.set(blk, count, stZero)
	w.pending = append(w.pending, jrec{blk, count, stZero})
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
	w.setBlocks(newSize)
	first := oldSize / w.bs
	w.mu.Lock()
	w.bm.set(first, (newSize-oldSize)/w.bs, stZero)
	w.pending = append(w.pending, jrec{first, (newSize - oldSize) / w.bs, stZero})
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
	w.setBlocks(size)
	if err := w.data.Truncate(int64(size)); err != nil {
		return fmt.Errorf("writable layer: resize data file: %w", err)
	}
	return nil
}

// flush makes every write that completed before it durable.
func (w *writable) flush() error {
	w.flushMu.Lock()
	defer w.flushMu.Unlock()
	w.mu.Lock()
	recs := w.pending
	w.pending = nil
	var snap []jrec
	if w.jrecs+len(recs) > w.compactN {
		w.bm.runs(func(s, c uint64, st uint8) error { snap = append(snap, jrec{s, c, st}); return nil })
	}
	w.mu.Unlock()
	if err := unix.Fdatasync(int(w.data.Fd())); err != nil {
		w.requeue(recs)
		return fmt.Errorf("writable layer: fsync data: %w", err)
	}
	if snap != nil {
		if err := w.rewriteJournal(snap); err != nil {
			w.requeue(recs)
			return err
		}
		return nil
	}
	if len(recs) == 0 {
		return nil
	}
	buf := make([]byte, len(recs)*jrecSize)
	for i, r := range recs {
		encodeJrec(buf[i*jrecSize:], r)
	}
	if _, err := w.jf.Write(buf); err != nil {
		// Cut a partial append back off, so later records do not follow
		// a torn one (replay stops at the first bad record).
		good := int64(journalHeader + w.jrecs*jrecSize)
		w.jf.Truncate(good)
		w.jf.Seek(good, io.SeekStart)
		w.requeue(recs)
		return fmt.Errorf("writable layer: journal: %w", err)
	}
	if err := unix.Fdatasync(int(w.jf.Fd())); err != nil {
		w.requeue(recs)
		return fmt.Errorf("writable layer: fsync journal: %w", err)
	}
	w.jrecs += len(recs)
	return nil
}

// requeue puts records back after a failed flush so a later flush
// retries them (before any newer ones).
func (w *writable) requeue(recs []jrec) {
	w.mu.Lock()
	w.pending = append(recs, w.pending...)
	w.mu.Unlock()
}

// rewriteJournal replaces the journal with the minimal records for snap.
func (w *writable) rewriteJournal(snap []jrec) error {
	path := filepath.Join(w.dir, "journal")
	tmp := path + ".tmp"
	buf := journalHeaderBytes(w.bs)
	rec := make([]byte, jrecSize)
	for _, r := range snap {
		encodeJrec(rec, r)
		buf = append(buf, rec...)
	}
	if err := writeFileSync(tmp, buf); err != nil {
		return fmt.Errorf("writable layer: rewrite journal: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if err := syncDir(w.dir); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return err
	}
	w.jf.Close()
	w.jf = f
	w.jrecs = len(snap)
	w.compactN = max(minCompact, 4*len(snap))
	return nil
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
	var st unix.Stat_t
	if err := unix.Fstat(int(w.data.Fd()), &st); err != nil {
		return 0
	}
	return uint64(st.Blocks) * 512
}

func (w *writable) close() error {
	err := w.flush()
	if e := w.data.Close(); err == nil {
		err = e
	}
	if e := w.jf.Close(); err == nil {
		err = e
	}
	return err
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
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
				w.pending = append(w.pending, jrec{b, n, state})
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
