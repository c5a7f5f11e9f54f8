package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// The on-disk format of dm-log-writes (drivers/md/dm-log-writes.c): a
// super block in the first sector of the log device, then one entry per
// logged bio in the order the target logged them: a header sector
// (log_write_entry, followed by the mark's text for a mark) and, unless
// the entry is a discard, nr_sectors sectors of the bio's data. Sectors
// are the data device's logical block size (sectorsize in the super).
//
// The target logs a write when it completes, but holds completed writes
// back until the next flush: a flush's entry follows every write that
// completed before the flush was issued. So replaying the log up to a
// flush (or FUA) entry gives a state the disk could be in after a power
// cut at that moment, and replaying up to a mark gives exactly what was
// durable when the mark was made.
const (
	lwMagic   = 0x6A736677736872
	lwVersion = 1

	lwFlush   = 1 << 0
	lwFUA     = 1 << 1
	lwDiscard = 1 << 2
	lwMark    = 1 << 3
)

// lwEntry is one logged bio.
type lwEntry struct {
	Sector, NrSectors, Flags uint64
	Mark                     string // a mark's text
	dataOff                  int64  // where its data starts in the log
}

// lwLog is a parsed log.
type lwLog struct {
	f          *os.File
	SectorSize int64
	Entries    []lwEntry
}

// readLog parses the log device (or a copy of it) at path.
func readLog(path string) (*lwLog, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	var sb [28]byte
	if _, err := f.ReadAt(sb[:], 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("read the log's super block: %w", err)
	}
	if m := binary.LittleEndian.Uint64(sb[0:]); m != lwMagic {
		f.Close()
		return nil, fmt.Errorf("the log's super block has magic %#x, not %#x", m, lwMagic)
	}
	if v := binary.LittleEndian.Uint64(sb[8:]); v != lwVersion {
		f.Close()
		return nil, fmt.Errorf("log version %d, not %d", v, lwVersion)
	}
	n := binary.LittleEndian.Uint64(sb[16:])
	ss := int64(binary.LittleEndian.Uint32(sb[24:]))
	if ss < 512 || ss > 65536 || ss&(ss-1) != 0 {
		f.Close()
		return nil, fmt.Errorf("log sector size %d", ss)
	}
	l := &lwLog{f: f, SectorSize: ss}
	hdr := make([]byte, ss)
	pos := ss
	for i := uint64(0); i < n; i++ {
		if _, err := f.ReadAt(hdr, pos); err != nil {
			f.Close()
			return nil, fmt.Errorf("entry %d at %d: %w", i, pos, err)
		}
		e := lwEntry{
			Sector:    binary.LittleEndian.Uint64(hdr[0:]),
			NrSectors: binary.LittleEndian.Uint64(hdr[8:]),
			Flags:     binary.LittleEndian.Uint64(hdr[16:]),
		}
		dataLen := binary.LittleEndian.Uint64(hdr[24:])
		pos += ss
		if e.Flags&lwMark != 0 {
			if dataLen > uint64(ss-32) {
				f.Close()
				return nil, fmt.Errorf("entry %d: mark of %d bytes", i, dataLen)
			}
			e.Mark = string(hdr[32 : 32+dataLen])
		}
		e.dataOff = pos
		if e.Flags&lwDiscard == 0 {
			pos += int64(e.NrSectors) * ss
		}
		l.Entries = append(l.Entries, e)
	}
	return l, nil
}

// apply replays entry e onto img (a discard reads back as zeros).
func (l *lwLog) apply(img []byte, e *lwEntry) error {
	if e.NrSectors == 0 || e.Flags&lwMark != 0 {
		return nil
	}
	off, n := int64(e.Sector)*l.SectorSize, int64(e.NrSectors)*l.SectorSize
	if off < 0 || off+n > int64(len(img)) {
		return fmt.Errorf("logged write at %d+%d past the image's %d bytes", off, n, len(img))
	}
	if e.Flags&lwDiscard != 0 {
		clear(img[off : off+n])
		return nil
	}
	_, err := l.f.ReadAt(img[off:off+n], e.dataOff)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func (l *lwLog) Close() error { return l.f.Close() }
