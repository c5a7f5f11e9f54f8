package volume

import (
	"bytes"
	"path/filepath"
	"testing"
)

// After the owning process dies, writes it completed but never journaled
// are found again in the data file; discards it punched are zeros.
func TestReconcileAfterProcessCrash(t *testing.T) {
	root := t.TempDir()
	m := testManager(t, root, newMemStore())
	if _, err := m.Create("v", 64*4096, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, _ := m.Open("v")
	a := bytes.Repeat([]byte{'a'}, 4096)
	v.WriteAt(a, 0)
	v.WriteAt(a, 8*4096)
	v.Flush()
	v.WriteAt(bytes.Repeat([]byte{'b'}, 4096), 4*4096) // not journaled
	v.WriteZeroes(8*4096, 4096)                        // punched, not journaled
	// "Crash": drop the in-memory state without flushing.
	v.w.pending = nil
	v.w.data.Close()
	v.w.j.Close()
	v.w = nil
	v.lock.release()

	w2, err := openWritable(filepath.Join(root, "volumes", "v", "w-1"), 64*4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := w2.run(4, 1); st != stUnset {
		t.Fatalf("precondition: block 4 state %d before reconcile", st)
	}
	w2.close()
	v2, n, err := m.OpenAfterCrash("v")
	if err != nil || n == 0 {
		t.Fatalf("OpenAfterCrash: %d changed, %v", n, err)
	}
	defer v2.Close()
	got := make([]byte, 4096)
	v2.ReadAt(got, 4*4096)
	if got[0] != 'b' {
		t.Fatal("completed but unjournaled write lost")
	}
	v2.ReadAt(got, 8*4096)
	if !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("punched block not zero")
	}
	v2.ReadAt(got, 0)
	if got[0] != 'a' {
		t.Fatal("journaled write lost")
	}
}
