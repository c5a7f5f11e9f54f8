package volume

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/obdvol/obdvol/journal"
)

// A flush whose journal compaction fails loses its records: they were
// taken from pending and never requeued, so the next Flush (nothing
// pending, journal under its bound) reports success while the writes are
// in no journal. After a crash they are gone.
func TestReviewFlushAfterFailedCompactionLosesRecords(t *testing.T) {
	old := minCompact
	minCompact = 4
	defer func() { minCompact = old }()
	dir := filepath.Join(t.TempDir(), "w-1")
	w, err := openWritable(dir, 64*4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	blk := make([]byte, 4096)
	blk[0] = 1
	for b := uint64(0); b < 10; b += 2 { // 5 separate runs, 5 records > 4
		if err := w.writeBlocks(blk, b); err != nil {
			t.Fatal(err)
		}
	}
	// Make the compaction's temp file fail (as ENOSPC or EIO would).
	tmp := filepath.Join(dir, "journal.tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := w.flush(); err == nil {
		t.Fatal("flush should fail")
	}
	os.Remove(tmp)
	if err := w.flush(); err != nil { // the retry succeeds...
		t.Fatal(err)
	}
	// ..."crash" now: drop the process state and replay the journal.
	w.data.Close()
	w.j.Close()
	w2, err := openWritable(dir, 64*4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer w2.close()
	for b := uint64(0); b < 10; b += 2 {
		if st, _ := w2.run(b, 1); st != stData {
			t.Fatalf("block %d written and flushed (retry returned nil) but lost after crash: state %d", b, st)
		}
	}
}

// A journal append that fails half-way (EFBIG/ENOSPC after a short write)
// leaves a torn record at the tail; the records are requeued and the next
// flush appends them after it. Replay stops at the torn record, so every
// later successfully flushed write is lost after a crash.
func TestReviewJournalShortWriteLosesLaterFlushes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "w-1")
	w, err := openWritable(dir, 64*4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	blk := make([]byte, 4096)
	blk[0] = 1
	w.writeBlocks(blk, 0)
	w.writeBlocks(blk, 2)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	// Room for the header and 1.5 records: the second record tears.
	small := syscall.Rlimit{Cur: journal.HeaderSize + journal.RecordSize + journal.RecordSize/2, Max: lim.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &small); err != nil {
		t.Skip(err)
	}
	ferr := w.flush()
	syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim)
	if ferr == nil {
		t.Fatal("flush should fail under the file size limit")
	}
	if err := w.flush(); err != nil { // retry succeeds
		t.Fatal(err)
	}
	w.writeBlocks(blk, 4)
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	w.data.Close()
	w.j.Close()
	w2, err := openWritable(dir, 64*4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer w2.close()
	for _, b := range []uint64{0, 2, 4} {
		if st, _ := w2.run(b, 1); st != stData {
			t.Errorf("block %d flushed successfully but lost after replay: state %d", b, st)
		}
	}
}
