package volume_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/obdvol/obdvol/volume"
)

// growFixture is an open volume of 1 MiB over a sealed layer whose data
// runs to its end (so that grown space must hide nothing), with writes on
// top.
func growFixture(t *testing.T, root string) (*volume.Manager, *volume.Volume, []byte) {
	t.Helper()
	m := newManager(t, root)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	v.WriteAt(bytes.Repeat([]byte("base"), 1<<18), 0)
	if _, err := v.Snapshot(context.Background(), "s"); err != nil {
		t.Fatal(err)
	}
	v.WriteAt(bytes.Repeat([]byte("TOP!"), 1<<14), 256<<10)
	want := make([]byte, 1<<20)
	if _, err := v.ReadAt(want, 0); err != nil {
		t.Fatal(err)
	}
	return m, v, want
}

// An open volume grows in place while readers and writers run on its old
// range: they never fail, the new size is seen at once, grown space reads
// as zeros and takes writes, and after a reopen the new size, the old data
// and the writes past the old end are all there.
func TestGrowOpenVolumeUnderIO(t *testing.T) {
	root := t.TempDir()
	m, v, want := growFixture(t, root)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var ioErr atomic.Pointer[error]
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			buf := make([]byte, 4096)
			for n := 0; !stop.Load(); n++ {
				off := int64((n*7+i*64)%256) * 4096
				var err error
				if i%2 == 0 {
					_, err = v.ReadAt(buf, off)
					if err == nil && !bytes.Equal(buf, want[off:off+4096]) {
						err = errors.New("a read during the grow returned other bytes")
					}
				} else {
					_, err = v.WriteAt(want[off:off+4096], off) // the same bytes again
				}
				if err != nil {
					ioErr.Store(&err)
					return
				}
			}
		}(i)
	}
	if err := v.Grow(3 << 20); err != nil {
		t.Fatal(err)
	}
	stop.Store(true)
	wg.Wait()
	if p := ioErr.Load(); p != nil {
		t.Fatalf("I/O during the grow: %v", *p)
	}
	if v.Size() != 3<<20 || v.Record().Size != 3<<20 {
		t.Fatalf("size %d, record %d after Grow(3M)", v.Size(), v.Record().Size)
	}
	got := make([]byte, 3<<20)
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:1<<20], want) || !bytes.Equal(got[1<<20:], make([]byte, 2<<20)) {
		t.Fatal("after the grow: old data changed or grown space not zeros")
	}
	tail := bytes.Repeat([]byte{0x7e}, 8192)
	if _, err := v.WriteAt(tail, 3<<20-8192); err != nil {
		t.Fatal(err)
	}
	// The same size again does nothing; a smaller one is refused and
	// changes nothing.
	if err := v.Grow(3 << 20); err != nil {
		t.Fatal(err)
	}
	if err := v.Grow(2 << 20); !errors.Is(err, volume.ErrRefused) || v.Size() != 3<<20 {
		t.Fatalf("Grow to a smaller size: %v, size %d", err, v.Size())
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	v2, err := newManager(t, root).Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	if v2.Size() != 3<<20 {
		t.Fatalf("reopened size %d", v2.Size())
	}
	if _, err := v2.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	exp := append(append(append([]byte{}, want...), make([]byte, 2<<20-8192)...), tail...)
	if !bytes.Equal(got, exp) {
		t.Fatal("after reopen: wrong bytes")
	}
}

// A grow stopped before its commit leaves the open volume as it was and
// working; one stopped right after it (standing for a crash there) leaves
// the new size, old data intact and grown space zeros, at the next open.
func TestGrowInterrupted(t *testing.T) {
	for _, step := range []string{"before-commit", "committed"} {
		t.Run(step, func(t *testing.T) {
			root := t.TempDir()
			_, v, want := growFixture(t, root)
			restore := volume.SetResizeHook(func(s string) error {
				if s == step {
					return errCrash
				}
				return nil
			})
			err := v.Grow(2 << 20)
			restore()
			if !errors.Is(err, errCrash) {
				t.Fatalf("precondition: Grow = %v, want the injected crash", err)
			}
			wantSize := uint64(2 << 20)
			if step == "before-commit" {
				wantSize = 1 << 20
				if v.Size() != 1<<20 {
					t.Fatalf("size %d after a grow failed before its commit", v.Size())
				}
				if _, err := v.WriteAt(want[:4096], 0); err != nil {
					t.Fatalf("the volume stopped working after a failed grow: %v", err)
				}
				if _, err := v.ReadAt(make([]byte, 4096), 1<<20); !errors.Is(err, volume.ErrRange) {
					t.Fatalf("read past the old end after a failed grow: %v", err)
				}
			}
			v.Close()
			v2, err := newManager(t, root).Open("v")
			if err != nil {
				t.Fatal(err)
			}
			defer v2.Close()
			if v2.Size() != wantSize {
				t.Fatalf("reopened size %d, want %d", v2.Size(), wantSize)
			}
			got := make([]byte, wantSize)
			if _, err := v2.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[:1<<20], want) || !bytes.Equal(got[1<<20:], make([]byte, wantSize-(1<<20))) {
				t.Fatal("after reopen: old data changed or grown space not zeros")
			}
			// Growing again (offline) past a journaled zero extent still
			// shows zeros, never the base layer's bytes.
			if err := v2.Grow(3 << 20); err != nil {
				t.Fatal(err)
			}
			got = make([]byte, 3<<20)
			v2.ReadAt(got, 0)
			if !bytes.Equal(got[1<<20:], make([]byte, 2<<20)) {
				t.Fatal("grown space after a second grow is not zeros")
			}
		})
	}
}

// A volume opened read-only cannot grow.
func TestGrowReadOnly(t *testing.T) {
	root := t.TempDir()
	m := newManager(t, root)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.OpenReadOnly("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.Grow(2 << 20); !errors.Is(err, volume.ErrReadOnly) || v.Size() != 1<<20 {
		t.Fatalf("Grow of a read-only volume: %v, size %d", err, v.Size())
	}
}
