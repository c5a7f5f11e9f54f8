package volume

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/obdvol/obdvol/journal"
)

// failSync makes fdatasync fail with EIO for the descriptors match
// accepts while *on is true.
func failSync(t *testing.T, match func(fd int) bool, on *bool) {
	t.Helper()
	old := fdatasync
	fdatasync = func(f int) error {
		if *on && match(f) {
			return syscall.EIO
		}
		return old(f)
	}
	t.Cleanup(func() { fdatasync = old })
}

func blockOf(b byte) []byte { return bytes.Repeat([]byte{b}, 4096) }

// Issue 9 #9: a failed fdatasync of the data file or of the journal is
// fail-stop: every later write, zeroing and flush fails (a retried fsync
// could report success after the kernel dropped the dirty pages), and a
// reopen recovers exactly what the journal had.
func TestFailedFsyncIsFailStop(t *testing.T) {
	for _, which := range []string{"data", "journal"} {
		t.Run(which, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "w-1")
			w, err := openWritable(dir, 64*4096, 4096)
			if err != nil {
				t.Fatal(err)
			}
			if err := w.writeBlocks(blockOf(1), 1); err != nil {
				t.Fatal(err)
			}
			if err := w.flush(); err != nil {
				t.Fatal(err)
			}
			dataFd, on := int(w.data.Fd()), true
			failSync(t, func(fd int) bool { return (fd == dataFd) == (which == "data") }, &on)
			w.writeBlocks(blockOf(2), 2)
			if err := w.flush(); !errors.Is(err, syscall.EIO) {
				t.Fatalf("flush with a failing fsync = %v, want EIO", err)
			}
			on = false // the device "recovers": a retry would now succeed
			if err := w.flush(); err == nil {
				t.Fatal("flush after a failed fsync succeeded: not fail-stop")
			}
			if err := w.writeBlocks(blockOf(3), 3); err == nil {
				t.Fatal("write after a failed fsync succeeded")
			}
			if err := w.zeroBlocks(4, 1); err == nil {
				t.Fatal("zeroing after a failed fsync succeeded")
			}
			w.close()
			w2, err := openWritable(dir, 64*4096, 4096)
			if err != nil {
				t.Fatalf("reopen after a failed fsync: %v", err)
			}
			defer w2.close()
			if st, _ := w2.run(1, 1); st != stData {
				t.Fatalf("block 1, flushed before the failure: state %d after reopen", st)
			}
			if st, _ := w2.run(3, 1); st != stUnset {
				t.Fatalf("block 3, refused after the failure: state %d after reopen", st)
			}
			// The journal holds whole records only: new ones replay.
			w2.writeBlocks(blockOf(5), 5)
			if err := w2.flush(); err != nil {
				t.Fatal(err)
			}
			w2.close()
			w3, err := openWritable(dir, 64*4096, 4096)
			if err != nil {
				t.Fatal(err)
			}
			defer w3.close()
			if st, _ := w3.run(5, 1); st != stData {
				t.Fatalf("block 5 flushed after reopen: state %d", st)
			}
		})
	}
}

// The same through the volume: after a failed fsync, reads, writes and
// flushes fail; reopening the volume serves the flushed data.
func TestVolumeFailStopAfterFsyncError(t *testing.T) {
	root := t.TempDir()
	m := testManager(t, root, newMemStore())
	if _, err := m.Create("v", 1<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	v.WriteAt(blockOf(9), 0)
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	on := true
	failSync(t, func(int) bool { return true }, &on)
	v.WriteAt(blockOf(8), 4096)
	if err := v.Flush(); err == nil {
		t.Fatal("flush with failing fsync succeeded")
	}
	on = false
	if err := v.Flush(); err == nil {
		t.Fatal("second flush succeeded after a failed fsync")
	}
	if _, err := v.WriteAt(blockOf(7), 8192); err == nil {
		t.Fatal("write succeeded after a failed fsync")
	}
	if _, err := v.ReadAt(make([]byte, 4096), 0); err == nil {
		t.Fatal("read succeeded after a failed fsync")
	}
	v.Close()
	v, err = m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	got := make([]byte, 4096)
	if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, blockOf(9)) {
		t.Fatalf("flushed block after reopen: %v", err)
	}
}

// writeJournal writes a journal file of the given records to dir.
func writeJournal(t *testing.T, dir string, recs []jrec) []byte {
	t.Helper()
	b := journal.EncodeHeader(4096)
	r := make([]byte, journal.RecordSize)
	for _, x := range recs {
		journal.EncodeRecord(r, x)
		b = append(b, r...)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "journal"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// The compaction bound is derived from the live extents at open, not
// from the journal's length: a long journal of few extents is compacted
// by the next flush instead of raising the bound fourfold per restart.
func TestCompactionBoundFromLiveExtents(t *testing.T) {
	defer func(old int) { minCompact = old }(minCompact)
	minCompact = 8
	dir := filepath.Join(t.TempDir(), "w-1")
	var recs []jrec
	for i := range 100 {
		recs = append(recs, jrec{Start: uint64(i % 2), Count: 1, State: stData})
	}
	writeJournal(t, dir, recs)
	w, err := openWritable(dir, 64*4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if w.compactN > 4*8 {
		t.Fatalf("compaction bound %d after opening a 100-record journal of 1 extent", w.compactN)
	}
	w.writeBlocks(blockOf(1), 10)
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	if n := (fi.Size() - journal.HeaderSize) / journal.RecordSize; n > 8 {
		t.Fatalf("journal has %d records after a flush, want it compacted to the live extents", n)
	}
}

// Issue 9 #6: only a torn tail may be dropped. A bad record followed by a
// valid one is damage: the layer refuses to open with ErrJournalCorrupt
// and the journal is left byte for byte as it was.
func TestJournalDamageIsNotATornTail(t *testing.T) {
	recs := []jrec{
		{Start: 0, Count: 1, State: stData}, {Start: 2, Count: 1, State: stData},
		{Start: 4, Count: 1, State: stData}, {Start: 6, Count: 1, State: stZero},
	}
	dir := filepath.Join(t.TempDir(), "w-1")
	raw := writeJournal(t, dir, recs)
	raw[journal.HeaderSize+journal.RecordSize+3] ^= 0x10 // one bit in the second record
	jp := filepath.Join(dir, "journal")
	os.WriteFile(jp, raw, 0o600)
	_, err := openWritable(dir, 64*4096, 4096)
	if !errors.Is(err, ErrJournalCorrupt) || !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open of a journal with a damaged middle record = %v, want ErrJournalCorrupt", err)
	}
	if got, _ := os.ReadFile(jp); !bytes.Equal(got, raw) {
		t.Fatal("a refused journal was rewritten")
	}

	// The volume refuses to open too (nothing served as zeros).
	root := t.TempDir()
	m := testManager(t, root, newMemStore())
	m.Create("v", 1<<20, CreateOptions{})
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	for b := int64(0); b < 4; b++ {
		v.WriteAt(blockOf(byte(b+1)), b*8192)
		v.Flush()
	}
	v.Close()
	vjp := filepath.Join(root, "volumes", "v", "w-1", "journal")
	vraw, _ := os.ReadFile(vjp)
	if len(vraw) != journal.HeaderSize+4*journal.RecordSize {
		t.Fatalf("precondition: journal of %d bytes, want 4 records", len(vraw))
	}
	vraw[journal.HeaderSize+8] ^= 1
	os.WriteFile(vjp, vraw, 0o600)
	if _, err := m.Open("v"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("volume open with a damaged journal = %v, want ErrCorrupt", err)
	}
	if got, _ := os.ReadFile(vjp); !bytes.Equal(got, vraw) {
		t.Fatal("a refused journal was rewritten by the volume open")
	}
}

// Torn tails (a bad last record, a bad record followed by a partial one,
// bad records to the end) are dropped; the valid records before them
// replay and later appends follow them.
func TestJournalTornTails(t *testing.T) {
	recs := []jrec{
		{Start: 0, Count: 1, State: stData}, {Start: 2, Count: 1, State: stData}, {Start: 4, Count: 1, State: stData},
	}
	for name, mangle := range map[string]func([]byte) []byte{
		"bad last record":  func(b []byte) []byte { b[len(b)-5] ^= 1; return b },
		"bad then partial": func(b []byte) []byte { b[len(b)-5] ^= 1; return append(b, 1, 2, 3) },
		"zeroed tail": func(b []byte) []byte {
			clear(b[journal.HeaderSize+2*journal.RecordSize:])
			return append(b, make([]byte, 3*journal.RecordSize)...)
		},
		"partial record":           func(b []byte) []byte { return append(b, 9, 9, 9, 9, 9) },
		"bad last of many appends": func(b []byte) []byte { return append(b, bytes.Repeat([]byte{0xff}, journal.RecordSize)...) },
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "w-1")
			raw := mangle(writeJournal(t, dir, recs))
			os.WriteFile(filepath.Join(dir, "journal"), raw, 0o600)
			w, err := openWritable(dir, 64*4096, 4096)
			if err != nil {
				t.Fatalf("open with a torn tail: %v", err)
			}
			if st, _ := w.run(0, 1); st != stData {
				t.Fatalf("block 0 lost: state %d", st)
			}
			w.writeBlocks(blockOf(1), 8)
			if err := w.flush(); err != nil {
				t.Fatal(err)
			}
			w.close()
			w, err = openWritable(dir, 64*4096, 4096)
			if err != nil {
				t.Fatalf("reopen after appending past a dropped tail: %v", err)
			}
			defer w.close()
			if st, _ := w.run(8, 1); st != stData {
				t.Fatalf("block 8 appended after the dropped tail: state %d", st)
			}
		})
	}
}
