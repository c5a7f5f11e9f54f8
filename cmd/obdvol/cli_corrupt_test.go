package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// A damaged catalog.db (truncated, or bytes flipped in its pages) makes
// obdvol exit 1 with one line naming the catalogue as corrupt (JSON kind
// "corrupt"), never a crash with stack traces.
func TestCLICorruptCatalogue(t *testing.T) {
	t.Parallel()
	h := newCLI(t)
	for i := range 40 {
		h.ok("create", fmt.Sprintf("volume-%02d", i), "--size", "1M")
	}
	db := filepath.Join(h.root, "catalog.db")
	good, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	// The bytes its pages need (the file may be longer: bbolt grows it
	// ahead).
	bdb, err := bolt.Open(db, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var pages int
	bdb.View(func(tx *bolt.Tx) error { pages = int(tx.Size()); return nil })
	bdb.Close()
	if pages < 4*4096 {
		t.Fatalf("precondition: the catalogue's pages take only %d bytes", pages)
	}
	check := func(what string, bad []byte) (corrupt bool) {
		if err := os.WriteFile(db, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		r := h.run("list")
		if strings.Contains(r.stderr, "goroutine") || strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "fatal error") {
			t.Fatalf("%s: obdvol crashed\n%s", what, r)
		}
		if r.code == 0 {
			return false
		}
		if r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "corrupt") {
			t.Errorf("%s: want exit 1 and one line saying the catalogue is corrupt\n%s", what, r)
		}
		h.jsonErr(1, "corrupt", "list")
		return true
	}
	n := 0
	for _, size := range []int{100, 5000, 8192, 16384, pages / 2, pages - 4096, pages - 1} {
		if !check(fmt.Sprintf("truncated to %d of %d bytes", size, pages), good[:size]) {
			t.Errorf("truncated to %d of %d bytes: list succeeded", size, pages)
		}
	}
	for off := 2 * 4096; off < pages; off += 4096 {
		for _, d := range []int{8, 10, 16} {
			bad := append([]byte(nil), good...)
			bad[off+d] ^= 0xa5
			if check(fmt.Sprintf("byte %d flipped", off+d), bad) {
				n++
			}
		}
	}
	if n == 0 {
		t.Errorf("no flipped byte was found corrupt: the test damages nothing that matters")
	}
	if err := os.WriteFile(db, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if m := h.json("list"); len(jget(t, m, "volumes").([]any)) != 40 {
		t.Errorf("the intact catalogue lists %v", m)
	}
}
