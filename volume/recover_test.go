package volume_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/volume"
)

// A seal that crashed after writing its blob but before its catalogue
// transaction leaves an intent and an orphan blob: Recover drops the
// intent, the volume still has its writes, gc removes the orphan.
func TestRecoverInterruptedSeal(t *testing.T) {
	root := t.TempDir()
	m := newManager(t, root)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("obdvol"), 10000)
	v.WriteAt(data, 4096)
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	v.Close()
	// The crash: intent recorded, blob written, no transaction.
	if err := m.Catalog().Update(func(tx *metadata.Tx) error {
		_, err := tx.AddIntent(&metadata.Intent{Op: "snapshot", Volume: "v", Args: map[string]string{"snapshot": "s1"}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	st, _ := repo.NewStore(root)
	orphan, _, err := st.Ingest(bytes.NewReader([]byte("half a layer")), "")
	if err != nil {
		t.Fatal(err)
	}
	m.Close()

	m2 := newManager(t, root)
	rec, err := m2.Recover()
	if err != nil || len(rec) != 1 {
		t.Fatalf("Recover = %v, %v; want one rolled-back intent", rec, err)
	}
	var intents []*metadata.Intent
	m2.Catalog().View(func(tx *metadata.Tx) (err error) { intents, err = tx.Intents(); return })
	if len(intents) != 0 {
		t.Fatalf("%d intents left after Recover", len(intents))
	}
	v2, err := m2.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	v2.ReadAt(got, 4096)
	if !bytes.Equal(got, data) {
		t.Fatal("flushed writes lost by recovery")
	}
	if _, err := v2.Snapshot(context.Background(), "s1"); err != nil {
		t.Fatalf("snapshot after recovery: %v", err)
	}
	v2.Close()
	res, err := m2.GC(context.Background(), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Blobs) != 1 || res.Blobs[0] != orphan || st.Has(orphan) {
		t.Fatalf("gc removed %v, want only the orphan %s", res.Blobs, orphan)
	}
}

// One process owns a volume at a time; the second opener gets ErrInUse
// and nothing changes; the lock goes with the owner.
func TestVolumeLock(t *testing.T) {
	root := t.TempDir()
	m := newManager(t, root)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	other := newManager(t, root)
	if _, err := other.Open("v"); !errors.Is(err, volume.ErrInUse) {
		t.Fatalf("second Open = %v, want ErrInUse", err)
	}
	if _, err := other.Rollback("v", "x", false); !errors.Is(err, volume.ErrInUse) {
		t.Fatalf("Rollback of an open volume = %v, want ErrInUse", err)
	}
	if err := other.Delete("v", true); !errors.Is(err, volume.ErrInUse) {
		t.Fatalf("Delete of an open volume = %v, want ErrInUse", err)
	}
	v.Close()
	v2, err := other.Open("v")
	if err != nil {
		t.Fatalf("Open after close: %v", err)
	}
	v2.Close()
}

// Leftover writable directories (a seal that committed but crashed before
// cleaning up) and trash are removed on open and recover.
func TestLeftoversRemoved(t *testing.T) {
	root := t.TempDir()
	m := newManager(t, root)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(root, "volumes", "v", "w-0")
	trash := filepath.Join(root, "trash", "d-1", "x")
	gone := filepath.Join(root, "volumes", "deleted-long-ago")
	for _, d := range []string{stale, trash, gone} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Recover(); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	for _, d := range []string{stale, trash, gone} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s survived recovery", d)
		}
	}
}
