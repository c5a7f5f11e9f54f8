package volume

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The journal of a writable layer records which blocks hold data in its
// data file and which read as zeros.
//
// Format: a 16-byte header ("OBDVJRN1", block size uint32 LE, crc32c of
// the first 12 bytes uint32 LE), then 24-byte records: start uint64 LE,
// count uint64 LE, state byte (1 zero, 2 data), three zero bytes, crc32c
// of the first 20 bytes uint32 LE. Records apply in order; a later one
// overrides an earlier one where they overlap. Records past the volume's
// recorded size are ignored.
//
// Invariants:
//   - a record is appended only after the data it describes was
//     fdatasynced, and an append is acknowledged only after the journal was
//     fdatasynced: every record before the last acknowledged one is valid;
//   - only the tail can be torn: a crash during an append leaves a
//     partial record, or bad records, after the last valid one. Replay
//     drops such a tail (and only at that point truncates the file). A bad
//     record followed by a valid one cannot come from a crash: replay
//     refuses the layer with ErrJournalCorrupt (wrapping ErrCorrupt) and rewrites
//     nothing;
//   - records are always written at offset header+24*n, n the records
//     known to be in the file: a failed append is cut back off before
//     anything else is appended;
//   - a failed fdatasync is fail-stop: the kernel may have dropped the
//     dirty pages and cleared the error, so a retry could "succeed"
//     without them. The journal (and its writable layer) refuse every
//     later call; reopening replays what reached the disk;
//   - compaction writes the live extents to journal.tmp, fsyncs it,
//     renames it over the journal and fsyncs the directory; a failure
//     before the rename leaves the old journal in force (retryable), one
//     after it is fail-stop.
//
// ErrJournalCorrupt is returned when a writable layer's journal is
// damaged (not merely torn by a crash). It wraps ErrCorrupt.
var ErrJournalCorrupt = fmt.Errorf("writable layer journal is damaged: %w", ErrCorrupt)

type journal struct {
	path string
	bs   uint64
	f    *os.File
	n    int   // valid records in the file, after the header
	err  error // fail-stop: set once, returned by every later call
}

const (
	journalMagic  = "OBDVJRN1"
	journalHeader = 16
	jrecSize      = 24
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// fdatasync is unix.Fdatasync; tests replace it to inject failures.
var fdatasync = unix.Fdatasync

type jrec struct {
	start, count uint64
	st           uint8
}

func encodeJrec(b []byte, r jrec) {
	binary.LittleEndian.PutUint64(b[0:], r.start)
	binary.LittleEndian.PutUint64(b[8:], r.count)
	b[16], b[17], b[18], b[19] = r.st, 0, 0, 0
	binary.LittleEndian.PutUint32(b[20:], crc32.Checksum(b[:20], crcTable))
}

var errBadRecord = errors.New("bad record")

// decodeJrec returns errBadRecord for a record failing its crc (torn or
// damaged) and an error wrapping ErrCorrupt for one whose crc holds but
// whose content is impossible.
func decodeJrec(b []byte) (jrec, error) {
	if len(b) < jrecSize || binary.LittleEndian.Uint32(b[20:]) != crc32.Checksum(b[:20], crcTable) {
		return jrec{}, errBadRecord
	}
	r := jrec{start: binary.LittleEndian.Uint64(b[0:]), count: binary.LittleEndian.Uint64(b[8:]), st: b[16]}
	if (r.st != stZero && r.st != stData) || b[17]|b[18]|b[19] != 0 || r.count == 0 || r.start+r.count < r.start {
		return jrec{}, fmt.Errorf("%w: impossible record (start %d, count %d, state %d)", ErrJournalCorrupt, r.start, r.count, r.st)
	}
	return r, nil
}

func journalHeaderBytes(bs uint64) []byte {
	h := make([]byte, journalHeader)
	copy(h, journalMagic)
	binary.LittleEndian.PutUint32(h[8:], uint32(bs))
	binary.LittleEndian.PutUint32(h[12:], crc32.Checksum(h[:12], crcTable))
	return h
}

// openJournal opens (creating if needed) the journal at path and calls
// apply for each valid record in order.
func openJournal(path string, bs uint64, apply func(jrec)) (*journal, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	j := &journal{path: path, bs: bs, f: f}
	if err := j.replay(apply); err != nil {
		f.Close()
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	return j, nil
}

func (j *journal) replay(apply func(jrec)) error {
	raw, err := io.ReadAll(j.f)
	if err != nil {
		return err
	}
	if len(raw) < journalHeader {
		// New (or torn before its header reached disk: nothing was flushed).
		if err := j.f.Truncate(0); err != nil {
			return err
		}
		if _, err := j.f.WriteAt(journalHeaderBytes(j.bs), 0); err != nil {
			return err
		}
		return fdatasync(int(j.f.Fd()))
	}
	h := raw[:journalHeader]
	if string(h[:8]) != journalMagic || binary.LittleEndian.Uint32(h[12:]) != crc32.Checksum(h[:12], crcTable) {
		return fmt.Errorf("%w: bad journal header", ErrJournalCorrupt)
	}
	if got := binary.LittleEndian.Uint32(h[8:]); uint64(got) != j.bs {
		return fmt.Errorf("%w: journal block size %d, volume %d", ErrJournalCorrupt, got, j.bs)
	}
	// Decode everything first: nothing is applied or rewritten unless
	// the whole journal is valid up to a torn tail.
	var recs []jrec
	off := journalHeader
	for ; off+jrecSize <= len(raw); off += jrecSize {
		r, err := decodeJrec(raw[off:])
		if errors.Is(err, errBadRecord) {
			if next := validRecordAfter(raw, off+jrecSize); next >= 0 {
				return fmt.Errorf("%w: bad record at offset %d followed by a valid one at offset %d: the journal is damaged, not torn (nothing was changed; restore the volume from a snapshot or a backup)",
					ErrJournalCorrupt, off, next)
			}
			break // a torn tail
		}
		if err != nil {
			return fmt.Errorf("record at offset %d: %w", off, err)
		}
		recs = append(recs, r)
	}
	for _, r := range recs {
		apply(r)
	}
	j.n = len(recs)
	if off != len(raw) {
		// Drop the torn tail so that new records follow valid ones.
		if err := j.f.Truncate(int64(off)); err != nil {
			return fmt.Errorf("dropping a torn tail: %w", err)
		}
	}
	return nil
}

// validRecordAfter returns the offset of the first valid record at or
// after off (on record boundaries), or -1.
func validRecordAfter(raw []byte, off int) int {
	for ; off+jrecSize <= len(raw); off += jrecSize {
		if _, err := decodeJrec(raw[off:]); !errors.Is(err, errBadRecord) {
			return off
		}
	}
	return -1
}

// records is the number of valid records in the file.
func (j *journal) records() int { return j.n }

// fail makes the journal fail-stop with err and returns it.
func (j *journal) fail(err error) error {
	if j.err == nil {
		j.err = fmt.Errorf("journal %s: %w (the writable layer is stopped: reopen the volume to recover from its journal)", j.path, err)
	}
	return j.err
}

// append writes recs after the valid records and fdatasyncs the journal.
// A write that fails is cut back off and may be retried; a failed cut or
// fdatasync is fail-stop.
func (j *journal) append(recs []jrec) error {
	if j.err != nil {
		return j.err
	}
	if len(recs) == 0 {
		return nil
	}
	buf := make([]byte, len(recs)*jrecSize)
	for i, r := range recs {
		encodeJrec(buf[i*jrecSize:], r)
	}
	off := int64(journalHeader + j.n*jrecSize)
	if _, err := j.f.WriteAt(buf, off); err != nil {
		// Cut a partial append back off (valid records end at off), so
		// that a retry does not follow a torn record.
		if terr := j.f.Truncate(off); terr != nil {
			return j.fail(fmt.Errorf("append failed (%v), then cutting it off failed: %w", err, terr))
		}
		return fmt.Errorf("journal %s: append: %w", j.path, err)
	}
	if err := fdatasync(int(j.f.Fd())); err != nil {
		return j.fail(fmt.Errorf("fsync: %w", err))
	}
	j.n += len(recs)
	return nil
}

// rewrite replaces the journal with recs (compaction).
func (j *journal) rewrite(recs []jrec) error {
	if j.err != nil {
		return j.err
	}
	tmp := j.path + ".tmp"
	buf := journalHeaderBytes(j.bs)
	rec := make([]byte, jrecSize)
	for _, r := range recs {
		encodeJrec(rec, r)
		buf = append(buf, rec...)
	}
	if err := writeFileSync(tmp, buf); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("journal %s: rewrite: %w", j.path, err)
	}
	if err := os.Rename(tmp, j.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("journal %s: rewrite: %w", j.path, err)
	}
	// From here the new file is the journal: any failure is fail-stop
	// (appends to a file whose name may not survive a crash would be
	// acknowledged and lost).
	if err := syncDir(filepath.Dir(j.path)); err != nil {
		return j.fail(fmt.Errorf("rewrite: fsync directory: %w", err))
	}
	f, err := os.OpenFile(j.path, os.O_RDWR, 0)
	if err != nil {
		return j.fail(fmt.Errorf("rewrite: reopen: %w", err))
	}
	j.f.Close()
	j.f, j.n = f, len(recs)
	return nil
}

func (j *journal) close() error { return j.f.Close() }

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := fdatasync(int(f.Fd())); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
