package volume_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/volume"
)

// fullBlobs is the real content store whose new blobs fail to write with
// ENOSPC while full is set (a disk that filled up during a seal).
type fullBlobs struct {
	repo.Blobs
	full *atomic.Bool
}

func (b fullBlobs) NewBlob() (volume.BlobWriter, error) {
	w, err := b.Blobs.NewBlob()
	if err != nil {
		return nil, err
	}
	return fullWriter{w, b.full}, nil
}

type fullWriter struct {
	volume.BlobWriter
	full *atomic.Bool
}

func (w fullWriter) Write(p []byte) (int, error) {
	if w.full.Load() {
		return 0, &os.PathError{Op: "write", Path: "tmp/blob", Err: syscall.ENOSPC}
	}
	return w.BlobWriter.Write(p)
}

func newFullManager(t *testing.T, root string, full *atomic.Bool) *volume.Manager {
	t.Helper()
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := repo.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	m := volume.NewManager(root, cat, fullBlobs{repo.Blobs{Store: st}, full}, volume.Options{CacheBytes: 4 << 20})
	t.Cleanup(func() { m.Close() })
	return m
}

// Issue 9 #7: a snapshot that fails for lack of space leaves the volume
// openable and usable: every later open works (the frozen layer is read
// through), all data reads back, and once there is space the next
// snapshot finishes the interrupted one.
func TestSealOutOfSpaceKeepsVolumeOpenable(t *testing.T) {
	root := t.TempDir()
	var full atomic.Bool
	m := newFullManager(t, root, &full)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	before := bytes.Repeat([]byte("frozen--"), 8192) // 64 KiB at 0
	v.WriteAt(before, 0)
	full.Store(true)
	if _, err := v.Snapshot(context.Background(), "s1"); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("precondition: snapshot on a full disk = %v, want ENOSPC", err)
	}
	after := bytes.Repeat([]byte("fresh---"), 4096) // 32 KiB at 512 KiB
	if _, err := v.WriteAt(after, 512<<10); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<20)
	copy(want, before)
	copy(want[512<<10:], after)

	check := func(v *volume.Volume, when string) {
		t.Helper()
		got := make([]byte, len(want))
		if _, err := v.ReadAt(got, 0); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: data differs", when)
		}
	}
	// Still full: a new process opens, reads, writes.
	m2 := newFullManager(t, root, &full)
	v2, err := m2.Open("v")
	if err != nil {
		t.Fatalf("open after a seal failed for lack of space: %v", err)
	}
	if err := v2.SealPending(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("SealPending = %v, want the ENOSPC of the unfinished seal", err)
	}
	check(v2, "open with the seal pending")
	more := bytes.Repeat([]byte{7}, 4096)
	if _, err := v2.WriteAt(more, 4096); err != nil {
		t.Fatal(err)
	}
	copy(want[4096:], more)
	if err := v2.Flush(); err != nil {
		t.Fatal(err)
	}
	v2.Close()

	// Space again: open finishes the seal, the snapshot holds what the
	// frozen layer held, the volume everything.
	full.Store(false)
	m3 := newFullManager(t, root, &full)
	v3, err := m3.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v3.Close()
	if err := v3.SealPending(); err != nil {
		t.Fatalf("SealPending after a successful open = %v", err)
	}
	check(v3, "after the seal finished")
	snap, err := m3.SnapshotChain("v", "s1")
	if err != nil {
		t.Fatalf("snapshot s1 after the seal finished: %v", err)
	}
	if len(snap.Layers) != 1 {
		t.Fatalf("snapshot s1 has %d layers, want 1", len(snap.Layers))
	}
	chain, err := m3.Chain(snap.Layers, snap.Size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	if _, err := chain.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(before)], before) || !bytes.Equal(got[len(before):], make([]byte, len(got)-len(before))) {
		t.Fatal("snapshot s1 does not hold what was written before it")
	}
}
