package volume_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
	bolt "go.etcd.io/bbolt"
)

// Issue 9 #1: a volume whose catalogue record cannot be read is not a
// deleted volume. Recover must keep its directory (flushed, acknowledged
// data) and report the error; only a positive ErrNotFound removes it.
func TestRecoverKeepsDirectoryOnCatalogueError(t *testing.T) {
	root := t.TempDir()
	m := newManager(t, root)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("acknowledged"), 400)
	if _, err := v.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	v.Close()
	// A second volume that really was deleted: its leftover directory goes.
	if err := os.MkdirAll(filepath.Join(root, "volumes", "gone", "w-1"), 0o700); err != nil {
		t.Fatal(err)
	}

	// The record of v no longer decodes.
	db, err := bolt.Open(filepath.Join(root, "catalog.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	var good []byte
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("volumes"))
		good = append([]byte(nil), b.Get([]byte("v"))...)
		return b.Put([]byte("v"), []byte("{not json"))
	})
	db.Close()
	if err != nil || good == nil {
		t.Fatalf("corrupting the record: %v (record %q)", err, good)
	}
	var verr error
	m.Catalog().View(func(tx *metadata.Tx) error { _, verr = tx.Volume("v"); return nil })
	if !errors.Is(verr, metadata.ErrCorrupt) {
		t.Fatalf("precondition: lookup of the corrupted record = %v, want ErrCorrupt", verr)
	}

	_, err = m.Recover()
	if err == nil || !errors.Is(err, metadata.ErrCorrupt) {
		t.Fatalf("Recover = %v, want an error wrapping ErrCorrupt", err)
	}
	if _, err := os.Stat(filepath.Join(root, "volumes", "v", "w-1", "data")); err != nil {
		t.Fatalf("Recover removed the writable layer of a volume it could not read: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "volumes", "gone")); !os.IsNotExist(err) {
		t.Fatalf("leftover directory of a deleted volume: %v, want removed", err)
	}

	// Repaired, the volume has every flushed byte.
	db, err = bolt.Open(filepath.Join(root, "catalog.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("volumes")).Put([]byte("v"), good) })
	db.Close()
	if _, err := m.Recover(); err != nil {
		t.Fatal(err)
	}
	v, err = m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	got := make([]byte, len(data))
	if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("flushed data after recovery: %v, equal %v", err, bytes.Equal(got, data))
	}
}
