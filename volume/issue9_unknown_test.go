package volume

import (
	"bytes"
	"context"
	"errors"
	"syscall"
	"testing"
)

// A snapshot whose catalogue commit fails after bbolt may have written it
// (torture seed 20261130: an EIO injected at the server's fdatasync of
// catalog.db) must not go on as if nothing had been recorded: the
// catalogue may already call the current layer frozen, so later writes
// there would land in the snapshot. The volume stops; the next open goes
// by the catalogue, and the snapshot holds exactly the data of its time.
func TestSnapshotCommitOutcomeUnknownStopsVolume(t *testing.T) {
	for _, step := range []int{1, 2} { // 1: the freeze's commit, 2: the seal's
		root := t.TempDir()
		m := testManager(t, root, newMemStore())
		if _, err := m.Create("v", 64*4096, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		v, err := m.Open("v")
		if err != nil {
			t.Fatal(err)
		}
		a := bytes.Repeat([]byte{'a'}, 4096)
		b := bytes.Repeat([]byte{'b'}, 4096)
		if _, err := v.WriteAt(a, 0); err != nil {
			t.Fatal(err)
		}
		n := 0
		testHookAfterCommit = func() error {
			if n++; n == step {
				return syscall.EIO
			}
			return nil
		}
		_, err = v.Snapshot(context.Background(), "s")
		testHookAfterCommit = nil
		if !errors.Is(err, ErrOutcomeUnknown) {
			t.Fatalf("step %d: snapshot: %v, want ErrOutcomeUnknown", step, err)
		}
		if _, err := v.WriteAt(b, 0); err == nil {
			t.Fatalf("step %d: a write after an unknown commit outcome was accepted", step)
		}
		v.Close()
		v, err = m.Open("v")
		if err != nil {
			t.Fatalf("step %d: reopen: %v", step, err)
		}
		got := make([]byte, 4096)
		if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, a) {
			t.Fatalf("step %d: volume reads %q... (%v), want the flushed a", step, got[:4], err)
		}
		v.Close()
		s, err := m.SnapshotChain("v", "s")
		if err != nil {
			t.Fatalf("step %d: the committed snapshot is gone: %v", step, err)
		}
		c, err := m.Chain(s.Layers, s.Size, 4096)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, a) {
			t.Fatalf("step %d: snapshot reads %q... (%v), want a", step, got[:4], err)
		}
	}
}
