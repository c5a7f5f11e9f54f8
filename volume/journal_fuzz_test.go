package volume

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/obdvol/obdvol/journal"
)

// FuzzJournal feeds arbitrary journal bytes to the writable layer's
// replay: it must open (replaying the valid prefix) or fail with an
// error, never panic, and reads must stay within the volume.
func FuzzJournal(f *testing.F) {
	hdr := journal.EncodeHeader(4096)
	rec := make([]byte, journal.RecordSize)
	journal.EncodeRecord(rec, jrec{Start: 3, Count: 5, State: stData})
	f.Add(append(append([]byte{}, hdr...), rec...))
	journal.EncodeRecord(rec, jrec{Start: 1 << 62, Count: 1 << 62, State: stZero})
	f.Add(append(append([]byte{}, hdr...), rec...))
	f.Add(hdr[:10])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "journal"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		const size = 64 * 4096
		w, err := openWritable(dir, size, 4096)
		if err != nil {
			return
		}
		defer w.close()
		for blk := uint64(0); blk < size/4096; {
			st, n := w.run(blk, size/4096-blk)
			if n == 0 || st > stData {
				t.Fatalf("run(%d) = %d, %d", blk, st, n)
			}
			blk += n
		}
	})
}

// A torn record at the tail is dropped and new records follow the valid
// ones, so a later replay sees them.
func TestJournalTornTail(t *testing.T) {
	dir := t.TempDir()
	w, err := openWritable(dir, 16*4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	w.writeBlocks(make([]byte, 4096), 2)
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	jp := filepath.Join(dir, "journal")
	fh, _ := os.OpenFile(jp, os.O_WRONLY|os.O_APPEND, 0)
	fh.Write([]byte{1, 2, 3, 4, 5, 6, 7}) // a torn record
	fh.Close()
	w, err = openWritable(dir, 16*4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := w.run(2, 1); st != stData {
		t.Fatalf("block 2 state %d after replay, want data", st)
	}
	w.zeroBlocks(5, 2)
	w.close()
	w, err = openWritable(dir, 16*4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	if st, n := w.run(5, 4); st != stZero || n != 2 {
		t.Fatalf("blocks 5-6: state %d for %d blocks, want zero for 2", st, n)
	}
}

// The journal is rewritten from the bitmap once it outgrows its bound,
// and the rewritten journal replays to the same state.
func TestJournalCompaction(t *testing.T) {
	dir := t.TempDir()
	const blocks = 64
	w, err := openWritable(dir, blocks*4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer func(old int) { minCompact = old }(minCompact)
	minCompact = 100
	w.compactN = 100
	p := make([]byte, 4096)
	for i := 0; i < 1000; i++ {
		blk := uint64(i*7) % blocks
		if i%3 == 0 {
			w.zeroBlocks(blk, 1)
		} else {
			w.writeBlocks(p, blk)
		}
		if i%10 == 0 {
			if err := w.flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := make([]uint8, blocks)
	for b := range want {
		want[b], _ = w.run(uint64(b), 1)
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(dir, "journal"))
	if fi.Size() > journal.HeaderSize+int64(4*100+blocks)*journal.RecordSize {
		t.Fatalf("journal is %d bytes after 1000 ops on %d blocks: not compacted", fi.Size(), blocks)
	}
	w, err = openWritable(dir, blocks*4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	for b := range want {
		if st, _ := w.run(uint64(b), 1); st != want[b] {
			t.Fatalf("block %d: state %d after replay of compacted journal, want %d", b, st, want[b])
		}
	}
}
