package volume_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
)

// fileState is what a read-only open must leave as it was: a file's
// bytes and modification time.
type fileState struct {
	data  []byte
	mtime int64
}

func stateOf(t *testing.T, paths ...string) map[string]fileState {
	t.Helper()
	m := map[string]fileState{}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m[p] = fileState{b, fi.ModTime().UnixNano()}
	}
	return m
}

// OpenReadOnly reads the writable layer as it is: a torn journal tail is
// ignored, not truncated; no file (journal, data, lock, catalogue)
// changes; every change to the volume fails with ErrReadOnly.
func TestOpenReadOnlyWritesNothing(t *testing.T) {
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
	want := make([]byte, 1<<20)
	copy(want[8192:], bytes.Repeat([]byte("ro-data!"), 2048))
	if _, err := v.WriteAt(want[8192:8192+16384], 8192); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	wdir := filepath.Join(root, "volumes", "v", "w-1")
	jpath := filepath.Join(wdir, "journal")
	// A torn tail: half a record after the valid ones.
	f, err := os.OpenFile(jpath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	paths := []string{jpath, filepath.Join(wdir, "data"), filepath.Join(root, "volumes", "v", "lock"), filepath.Join(root, "catalog.db")}
	before := stateOf(t, paths...)

	m2 := newFullManager(t, root, &full)
	r, err := m2.OpenReadOnly("v")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := r.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read-only open reads other data than was written")
	}
	if _, err := r.WriteAt(make([]byte, 4096), 0); !errors.Is(err, volume.ErrReadOnly) {
		t.Errorf("WriteAt on a read-only volume = %v, want ErrReadOnly", err)
	}
	if err := r.WriteZeroes(0, 4096); !errors.Is(err, volume.ErrReadOnly) {
		t.Errorf("WriteZeroes on a read-only volume = %v, want ErrReadOnly", err)
	}
	if _, err := r.Snapshot(context.Background(), "s"); !errors.Is(err, volume.ErrReadOnly) {
		t.Errorf("Snapshot of a read-only volume = %v, want ErrReadOnly", err)
	}
	if _, err := r.Flatten(context.Background()); !errors.Is(err, volume.ErrReadOnly) {
		t.Errorf("Flatten of a read-only volume = %v, want ErrReadOnly", err)
	}
	if err := r.Flush(); err != nil {
		t.Errorf("Flush of a read-only volume = %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	after := stateOf(t, paths...)
	for _, p := range paths {
		if !bytes.Equal(before[p].data, after[p].data) || before[p].mtime != after[p].mtime {
			t.Errorf("%s changed by a read-only open", p)
		}
	}
	// The next open for writing drops the torn tail and keeps the data.
	v, err = m2.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("open for writing after a read-only open: %v / data differs", err)
	}
}

// A volume never opened has no writable layer on disk: a read-only open
// reads it as empty and creates nothing.
func TestOpenReadOnlyNeverOpened(t *testing.T) {
	root := t.TempDir()
	var full atomic.Bool
	m := newFullManager(t, root, &full)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wdir := filepath.Join(root, "volumes", "v", "w-1")
	if _, err := os.Stat(wdir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("precondition: %s after create: %v, want it absent", wdir, err)
	}
	r, err := m.OpenReadOnly("v")
	if err != nil {
		t.Fatal(err)
	}
	got := bytes.Repeat([]byte{1}, 1<<20)
	if _, err := r.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, 1<<20)) {
		t.Fatal("a volume never written reads other than zeros")
	}
	if r.WritableBytes() != 0 {
		t.Errorf("WritableBytes = %d, want 0", r.WritableBytes())
	}
	r.Close()
	if _, err := os.Stat(wdir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s after a read-only open: %v, want it absent", wdir, err)
	}
}

// The lock: a read-only open is refused while a writer owns the volume
// (it would read a layer being written), read-only opens share it, and a
// writer is refused while one is open.
func TestOpenReadOnlyLocking(t *testing.T) {
	root := t.TempDir()
	var full atomic.Bool
	m := newFullManager(t, root, &full)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	m2 := newFullManager(t, root, &full)
	if _, err := m2.OpenReadOnly("v"); !errors.Is(err, volume.ErrInUse) {
		t.Fatalf("OpenReadOnly while a writer owns the volume = %v, want ErrInUse", err)
	}
	w.Close()
	r1, err := m2.OpenReadOnly("v")
	if err != nil {
		t.Fatal(err)
	}
	r2, err := newFullManager(t, root, &full).OpenReadOnly("v")
	if err != nil {
		t.Fatalf("two read-only opens: %v", err)
	}
	if _, err := m.Open("v"); !errors.Is(err, volume.ErrInUse) || !strings.Contains(err.Error(), "read-only open") {
		t.Fatalf("Open while read-only opens hold the volume = %v, want ErrInUse naming a read-only open", err)
	}
	r1.Close()
	r2.Close()
	w, err = m.Open("v")
	if err != nil {
		t.Fatalf("Open after the read-only opens closed: %v", err)
	}
	w.Close()
}

// Recover, which every command runs first, writes nothing when it has
// nothing to change: no catalogue transaction, no lock file rewritten,
// even with an intent whose operation is still running (its volume held
// by a live owner).
func TestRecoverWritesNothingWhenClean(t *testing.T) {
	root := t.TempDir()
	var full atomic.Bool
	m := newFullManager(t, root, &full)
	for _, n := range []string{"a", "b"} {
		if _, err := m.Create(n, 1<<20, volume.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	v, err := m.Open("a")
	if err != nil {
		t.Fatal(err)
	}
	v.WriteAt(make([]byte, 4096), 0)
	v.Close()
	held, err := m.Open("b")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := m.Catalog().Update(func(tx *metadata.Tx) error {
		_, err := tx.AddIntent(&metadata.Intent{Op: "flatten", Volume: "b"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	paths := []string{filepath.Join(root, "catalog.db"), filepath.Join(root, "volumes", "a", "lock"), filepath.Join(root, "volumes", "b", "lock")}
	before := stateOf(t, paths...)
	m2 := newFullManager(t, root, &full)
	if rec, err := m2.Recover(); err != nil || len(rec) != 0 {
		t.Fatalf("Recover = %v, %v; want nothing to do", rec, err)
	}
	after := stateOf(t, paths...)
	for _, p := range paths {
		if !bytes.Equal(before[p].data, after[p].data) || before[p].mtime != after[p].mtime {
			t.Errorf("%s changed by a Recover with nothing to do", p)
		}
	}
}

// A frozen layer left by a seal that failed for lack of space is read
// through by a read-only open, which does not finish the seal even when
// it could (space is back): that is the next open for writing's job.
func TestOpenReadOnlyFrozenLayer(t *testing.T) {
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
	want := make([]byte, 1<<20)
	copy(want, bytes.Repeat([]byte("frozen--"), 4096))
	v.WriteAt(want[:32768], 0)
	full.Store(true)
	if _, err := v.Snapshot(context.Background(), "s1"); err == nil {
		t.Fatal("precondition: the snapshot on a full disk succeeded")
	}
	copy(want[65536:], bytes.Repeat([]byte("fresh---"), 512))
	v.WriteAt(want[65536:65536+4096], 65536)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	full.Store(false)
	frozen := func() uint64 {
		var rec *metadata.Volume
		if err := m.Catalog().View(func(tx *metadata.Tx) (err error) { rec, err = tx.Volume("v"); return }); err != nil {
			t.Fatal(err)
		}
		return rec.Frozen
	}
	if frozen() == 0 {
		t.Fatal("precondition: no frozen layer after the failed snapshot")
	}
	r, err := newFullManager(t, root, &full).OpenReadOnly("v")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SealPending(); err == nil || !strings.Contains(err.Error(), "snapshot s1 is not finished") {
		t.Errorf("SealPending = %v, want the unfinished snapshot s1", err)
	}
	got := make([]byte, len(want))
	if _, err := r.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read-only open of a frozen volume reads other data than was written")
	}
	r.Close()
	if frozen() == 0 {
		t.Fatal("a read-only open finished the seal")
	}
	if _, err := m.SnapshotChain("v", "s1"); !errors.Is(err, metadata.ErrNotFound) {
		t.Fatalf("snapshot s1 after a read-only open: %v, want it still unrecorded", err)
	}
}
