package volume

import (
	"bytes"
	"context"
	"testing"
)

// reconcile marks every block of an allocated file range as data. With a
// volume block smaller than the filesystem block (bs 512 on a 4 KiB ext4),
// one 512-byte write allocates a 4 KiB extent, and the 7 neighbouring
// blocks, never written here, become "data" reading zeros: they hide what
// the chain holds there.
func TestReviewReconcileSmallBlocksHidesChain(t *testing.T) {
	root := t.TempDir()
	m := testManager(t, root, newMemStore())
	if _, err := m.Create("v", 64*4096, CreateOptions{BlockSize: 512, ChunkSize: 4096}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	a := bytes.Repeat([]byte{'a'}, 4096)
	v.WriteAt(a, 0)
	if _, err := v.Snapshot(context.Background(), "s"); err != nil {
		t.Fatal(err)
	}
	v.WriteAt(bytes.Repeat([]byte{'b'}, 512), 0) // completed, not journaled
	// "Crash" of the owning process.
	v.w.pending = nil
	v.w.data.Close()
	v.w.j.Close()
	v.w = nil
	v.lock.release()

	v2, _, err := m.OpenAfterCrash("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	got := make([]byte, 4096)
	v2.ReadAt(got, 0)
	// With blocks smaller than the filesystem's, allocation cannot tell
	// written blocks from their neighbours, so reconcile keeps only what
	// the journal says (the unjournaled write is lost, like an unflushed
	// write at a host crash) rather than hiding the chain.
	if got[0] != 'a' && got[0] != 'b' {
		t.Fatalf("block 0 reads %q, want the chain's or the write's", got[0])
	}
	if !bytes.Equal(got[512:], a[512:]) {
		t.Fatalf("blocks 1..7 (never written in the writable layer) now read %q..., want the chain's 'a'", got[512:520])
	}
}
