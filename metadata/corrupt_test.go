package metadata

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// damagedCatalog builds a catalogue with enough volumes for branch and
// leaf pages and returns its bytes and the size its pages need.
func damagedCatalog(t *testing.T) (good []byte, pages int64) {
	t.Helper()
	c := newCatalog(t)
	if err := c.Update(func(tx *Tx) error {
		for i := range 300 {
			if err := tx.CreateVolume(testVolume(fmt.Sprintf("volume-%03d", i))); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(c.Path(), 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error { pages = tx.Size(); return nil })
	db.Close()
	good, err = os.ReadFile(c.Path())
	if err != nil {
		t.Fatal(err)
	}
	return good, pages
}

// useCatalog opens the file and reads and writes every record; it
// returns the first error. A panic or a fault fails the whole test.
func useCatalog(path string) error {
	c, err := open(path, testTimeout)
	if err != nil {
		return err
	}
	if err := c.View(func(tx *Tx) error {
		vols, err := tx.Volumes()
		if err != nil {
			return err
		}
		for _, v := range vols {
			if _, err := tx.Snapshots(v.Name); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	return c.Update(func(tx *Tx) error {
		for i := range 50 {
			if err := tx.PutVolume(testVolume(fmt.Sprintf("new-%03d", i))); err != nil {
				return err
			}
		}
		return nil
	})
}

// A truncated catalogue is reported as corrupt, never a fault (SIGBUS on
// pages past the end of the file).
func TestCatalogTruncated(t *testing.T) {
	good, pages := damagedCatalog(t)
	if pages < 8*4096 {
		t.Fatalf("precondition: the catalogue has only %d bytes of pages", pages)
	}
	dir := t.TempDir()
	for i, n := range []int64{100, 5000, 8192, 16384, 20000, pages / 2, pages - 4096, pages - 1} {
		// A fresh file each time: a panic inside bolt.Open leaves the
		// damaged file locked by this process (see Catalog.guard).
		path := filepath.Join(dir, fmt.Sprintf("catalog-%d.db", i))
		if err := os.WriteFile(path, good[:n], 0o600); err != nil {
			t.Fatal(err)
		}
		if err := useCatalog(path); !errors.Is(err, ErrCorrupt) {
			t.Errorf("truncated to %d of %d bytes: %v, want ErrCorrupt", n, pages, err)
		}
	}
}

// Bytes flipped in the page headers and contents of a catalogue give
// errors wrapping ErrCorrupt (or, where bbolt cannot tell, records that
// still decode), never a panic.
func TestCatalogBitFlips(t *testing.T) {
	good, pages := damagedCatalog(t)
	dir := t.TempDir()
	corrupt := 0
	for off := int64(2 * 4096); off < pages; off += 4096 {
		for _, d := range []int64{8, 9, 10, 12, 16, 24, 40, 200, 1000} {
			bad := append([]byte(nil), good...)
			bad[off+d] ^= 0xa5
			path := filepath.Join(dir, fmt.Sprintf("catalog-%d.db", off+d))
			if err := os.WriteFile(path, bad, 0o600); err != nil {
				t.Fatal(err)
			}
			switch err := useCatalog(path); {
			case errors.Is(err, ErrCorrupt):
				corrupt++
			case err != nil:
				t.Errorf("byte %d flipped: %v, want ErrCorrupt or success", off+d, err)
			}
		}
	}
	if corrupt < 5 {
		t.Errorf("only %d flips were found corrupt: the test damages nothing that matters", corrupt)
	}
	t.Logf("%d flips reported corrupt", corrupt)
}
