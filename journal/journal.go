package journal

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

// Record states.
const (
	Zero = 1 // the blocks read as zeros
	Data = 2 // the blocks are in the data file
)

// Sizes of the format.
const (
	HeaderSize = 16
	RecordSize = 24
	magic      = "OBDVJRN1"
)

// ErrCorrupt is returned by Open for a journal that is damaged, not
// merely torn by a crash.
var ErrCorrupt = errors.New("journal is damaged")

// Record is one extent: count blocks from start in state Zero or Data.
type Record struct {
	Start, Count uint64
	State        uint8
}

// Options tune a Journal.
type Options struct {
	// Sync makes a file's (or a directory's) data durable; default
	// unix.Fdatasync. Tests replace it to inject failures.
	Sync func(fd int) error
}

// Journal is an open journal file. It is not safe for concurrent use: its
// owner serializes Append and Rewrite.
type Journal struct {
	path string
	bs   uint32
	opts Options
	f    *os.File
	n    int   // valid records in the file
	err  error // fail-stop: set once, returned by every later call
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// EncodeHeader returns the header of a journal for block size bs.
func EncodeHeader(bs uint32) []byte {
	h := make([]byte, HeaderSize)
	copy(h, magic)
	binary.LittleEndian.PutUint32(h[8:], bs)
	binary.LittleEndian.PutUint32(h[12:], crc32.Checksum(h[:12], crcTable))
	return h
}

// EncodeRecord writes r into b[:RecordSize].
func EncodeRecord(b []byte, r Record) {
	binary.LittleEndian.PutUint64(b[0:], r.Start)
	binary.LittleEndian.PutUint64(b[8:], r.Count)
	b[16], b[17], b[18], b[19] = r.State, 0, 0, 0
	binary.LittleEndian.PutUint32(b[20:], crc32.Checksum(b[:20], crcTable))
}

var errBad = errors.New("bad record")

// decodeRecord returns errBad for a record failing its checksum (torn or
// damaged) and an error wrapping ErrCorrupt for an impossible one.
func decodeRecord(b []byte) (Record, error) {
	if len(b) < RecordSize || binary.LittleEndian.Uint32(b[20:]) != crc32.Checksum(b[:20], crcTable) {
		return Record{}, errBad
	}
	r := Record{Start: binary.LittleEndian.Uint64(b[0:]), Count: binary.LittleEndian.Uint64(b[8:]), State: b[16]}
	if (r.State != Zero && r.State != Data) || b[17]|b[18]|b[19] != 0 || r.Count == 0 || r.Start+r.Count < r.Start {
		return Record{}, fmt.Errorf("%w: impossible record (start %d, count %d, state %d)", ErrCorrupt, r.Start, r.Count, r.State)
	}
	return r, nil
}

// Open opens (creating if needed) the journal at path for block size bs
// and calls apply for each valid record, in order, once the whole file
// was checked (nothing is applied from a damaged journal). A torn tail is
// dropped; damage fails with an error wrapping ErrCorrupt and leaves the
// file as it was.
func Open(path string, bs uint32, opts Options, apply func(Record)) (*Journal, error) {
	if opts.Sync == nil {
		opts.Sync = unix.Fdatasync
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	j := &Journal{path: path, bs: bs, opts: opts, f: f}
	if err := j.replay(apply); err != nil {
		f.Close()
		return nil, fmt.Errorf("journal %s: %w", path, err)
	}
	return j, nil
}

func (j *Journal) replay(apply func(Record)) error {
	raw, err := io.ReadAll(j.f)
	if err != nil {
		return err
	}
	if len(raw) < HeaderSize {
		// New (or torn before its header reached disk: nothing was
		// appended yet).
		if err := j.f.Truncate(0); err != nil {
			return err
		}
		if _, err := j.f.WriteAt(EncodeHeader(j.bs), 0); err != nil {
			return err
		}
		return j.opts.Sync(int(j.f.Fd()))
	}
	recs, end, err := parse(raw, j.bs)
	if err != nil {
		return err
	}
	if end != len(raw) {
		// Drop the torn tail so that new records follow valid ones.
		if err := j.f.Truncate(int64(end)); err != nil {
			return fmt.Errorf("dropping a torn tail: %w", err)
		}
	}
	for _, r := range recs {
		apply(r)
	}
	j.n = len(recs)
	return nil
}

// Read replays the journal at path for block size bs without changing
// anything: it calls apply for each valid record, in order, once the
// whole file was checked, as Open does, but opens the file read-only,
// creates nothing and truncates nothing. A missing file, or one torn
// before its header reached the disk, holds no records; a torn tail is
// ignored (left in the file for the next Open to drop); damage fails
// with an error wrapping ErrCorrupt. It is for readers that must not
// write (a read-only open, a full disk); what it read is the state as of
// the call, so a concurrent writer must be excluded by the caller.
func Read(path string, bs uint32, apply func(Record)) error {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("journal %s: %w", path, err)
	}
	if len(raw) < HeaderSize {
		return nil
	}
	recs, _, err := parse(raw, bs)
	if err != nil {
		return fmt.Errorf("journal %s: %w", path, err)
	}
	for _, r := range recs {
		apply(r)
	}
	return nil
}

// parse checks a journal file of at least HeaderSize bytes and returns
// its valid records and the offset where they end (the start of a torn
// tail, or len(raw)). A bad record followed by a valid one, an
// impossible record or a bad header is damage (ErrCorrupt).
func parse(raw []byte, bs uint32) ([]Record, int, error) {
	h := raw[:HeaderSize]
	if string(h[:8]) != magic || binary.LittleEndian.Uint32(h[12:]) != crc32.Checksum(h[:12], crcTable) {
		return nil, 0, fmt.Errorf("%w: bad header", ErrCorrupt)
	}
	if got := binary.LittleEndian.Uint32(h[8:]); got != bs {
		return nil, 0, fmt.Errorf("%w: block size %d, volume %d", ErrCorrupt, got, bs)
	}
	var recs []Record
	off := HeaderSize
	for ; off+RecordSize <= len(raw); off += RecordSize {
		r, err := decodeRecord(raw[off:])
		if errors.Is(err, errBad) {
			if next := validAfter(raw, off+RecordSize); next >= 0 {
				return nil, 0, fmt.Errorf("%w: bad record at offset %d followed by a valid one at offset %d: damaged, not torn by a crash (nothing was changed; restore the volume from a snapshot or a backup)",
					ErrCorrupt, off, next)
			}
			break // a torn tail
		}
		if err != nil {
			return nil, 0, fmt.Errorf("record at offset %d: %w", off, err)
		}
		recs = append(recs, r)
	}
	return recs, off, nil
}

// validAfter returns the offset of the first valid record at or after
// off (on record boundaries), or -1.
func validAfter(raw []byte, off int) int {
	for ; off+RecordSize <= len(raw); off += RecordSize {
		if _, err := decodeRecord(raw[off:]); !errors.Is(err, errBad) {
			return off
		}
	}
	return -1
}

// Len is the number of valid records in the file.
func (j *Journal) Len() int { return j.n }

// Err is the fail-stop error, nil while the journal works.
func (j *Journal) Err() error { return j.err }

func (j *Journal) fail(err error) error {
	if j.err == nil {
		j.err = fmt.Errorf("journal %s: %w (stopped: reopen to recover from what reached the disk)", j.path, err)
	}
	return j.err
}

// Append writes recs after the valid records and fsyncs the journal. A
// write that fails is cut back off and Append may be called again with
// the same records; a failed cut or fsync is fail-stop.
func (j *Journal) Append(recs []Record) error {
	if j.err != nil {
		return j.err
	}
	if len(recs) == 0 {
		return nil
	}
	buf := make([]byte, len(recs)*RecordSize)
	for i, r := range recs {
		EncodeRecord(buf[i*RecordSize:], r)
	}
	off := int64(HeaderSize + j.n*RecordSize)
	if _, err := j.f.WriteAt(buf, off); err != nil {
		if terr := j.f.Truncate(off); terr != nil {
			return j.fail(fmt.Errorf("append failed (%v), then cutting it off failed: %w", err, terr))
		}
		return fmt.Errorf("journal %s: append: %w", j.path, err)
	}
	if err := j.opts.Sync(int(j.f.Fd())); err != nil {
		return j.fail(fmt.Errorf("fsync: %w", err))
	}
	j.n += len(recs)
	return nil
}

// Rewrite replaces the journal with recs (compaction).
func (j *Journal) Rewrite(recs []Record) error {
	if j.err != nil {
		return j.err
	}
	tmp := j.path + ".tmp"
	buf := EncodeHeader(j.bs)
	rec := make([]byte, RecordSize)
	for _, r := range recs {
		EncodeRecord(rec, r)
		buf = append(buf, rec...)
	}
	if err := j.writeTemp(tmp, buf); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("journal %s: rewrite: %w", j.path, err)
	}
	if err := os.Rename(tmp, j.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("journal %s: rewrite: %w", j.path, err)
	}
	// From here the new file is the journal: a failure is fail-stop
	// (appends to a file whose name may not survive a crash would be
	// acknowledged and lost).
	if err := j.syncDir(); err != nil {
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

func (j *Journal) writeTemp(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := j.opts.Sync(int(f.Fd())); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (j *Journal) syncDir() error {
	d, err := os.Open(filepath.Dir(j.path))
	if err != nil {
		return err
	}
	defer d.Close()
	return j.opts.Sync(int(d.Fd()))
}

// Close closes the file.
func (j *Journal) Close() error { return j.f.Close() }
