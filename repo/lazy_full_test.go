package repo

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// On a disk full to the last byte, a lazy blob's missing pages cannot be
// cached: reads are served straight from the remote (torture seed
// 20261130: export of a lazily pulled volume failed on a full disk), and
// nothing is recorded as present.
func TestLazyReadThroughOnFullDisk(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (needs root): %v", err)
	}
	defer syscall.Unmount(dir, syscall.MNT_DETACH)
	s, err := NewStore(filepath.Join(dir, "root"))
	if err != nil {
		t.Fatal(err)
	}
	_, f, d := lazyFixture(t, 1<<20)
	b := openLazy(t, s, d, f, len(f.data))
	// Fill the disk: a ballast file written until ENOSPC.
	ballast, err := os.Create(filepath.Join(dir, "ballast"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := ballast.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	ballast.Close()
	got := make([]byte, 200<<10)
	n, err := b.ReadAt(got, 300<<10)
	if err != nil || n != len(got) {
		t.Fatalf("read on a full disk: %d bytes, %v", n, err)
	}
	if !bytes.Equal(got, f.data[300<<10:500<<10]) {
		t.Fatal("read-through returned the wrong bytes")
	}
	if p := b.Present(); p != 0 {
		t.Fatalf("%d bytes recorded as present while nothing could be cached", p)
	}
	// With room again, reads cache as usual.
	os.Remove(filepath.Join(dir, "ballast"))
	if _, err := b.ReadAt(got, 300<<10); err != nil || !bytes.Equal(got, f.data[300<<10:500<<10]) {
		t.Fatalf("read after space came back: %v", err)
	}
	if b.Present() == 0 {
		t.Fatal("nothing cached once space came back")
	}
}
