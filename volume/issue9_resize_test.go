package volume_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/obdvol/obdvol/volume"
)

var errCrash = errors.New("injected crash")

// Issue 9 #5: a resize stopped at any step (standing for a crash there)
// leaves either the old volume, every byte intact, or the new size with
// every byte below it intact; space grown later reads as zeros.
func TestResizeInterruptedAtEveryStep(t *testing.T) {
	const big, small = 1 << 20, 256 << 10
	for _, c := range []struct {
		from, to uint64
		step     string
	}{
		{big, small, "before-commit"},
		{big, small, "committed"},
		{small, big, "before-commit"},
		{small, big, "committed"},
	} {
		t.Run(fmt.Sprintf("%d-%d-%s", c.from, c.to, c.step), func(t *testing.T) {
			root := t.TempDir()
			m := newManager(t, root)
			if _, err := m.Create("v", c.from, volume.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			v, err := m.Open("v")
			if err != nil {
				t.Fatal(err)
			}
			// A sealed layer under the writable one, and writes in both,
			// over the whole volume (past the new end of a shrink too).
			base := bytes.Repeat([]byte("base"), int(c.from)/4)
			v.WriteAt(base, 0)
			if _, err := v.Snapshot(context.Background(), "s"); err != nil {
				t.Fatal(err)
			}
			top := bytes.Repeat([]byte("TOP!"), 1024)
			for off := 0; off < int(c.from); off += 64 << 10 {
				v.WriteAt(top, int64(off))
			}
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
			want := make([]byte, c.from)
			if _, err := v.ReadAt(want, 0); err != nil {
				t.Fatal(err)
			}
			v.Close()

			hit := false
			restore := volume.SetResizeHook(func(step string) error {
				if step == c.step {
					hit = true
					return errCrash
				}
				return nil
			})
			err = m.Resize("v", c.to, true)
			restore()
			if !hit || !errors.Is(err, errCrash) {
				t.Fatalf("precondition: Resize = %v, hook reached %v", err, hit)
			}

			m2 := newManager(t, root)
			v2, err := m2.Open("v")
			if err != nil {
				t.Fatal(err)
			}
			size := v2.Size()
			if size != c.from && size != c.to {
				t.Fatalf("size %d after interrupted resize %d -> %d", size, c.from, c.to)
			}
			got := make([]byte, size)
			if _, err := v2.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			keep := min(c.from, size)
			if !bytes.Equal(got[:keep], want[:keep]) {
				t.Fatalf("size %d: bytes below %d changed by an interrupted resize", size, keep)
			}
			if size > c.from && !bytes.Equal(got[c.from:], make([]byte, size-c.from)) {
				t.Fatal("grown space does not read as zeros")
			}
			v2.Close()
			// Finishing the resize (and growing back) shows zeros past the
			// old end, never the dropped data.
			if err := m2.Resize("v", c.to, true); err != nil {
				t.Fatal(err)
			}
			if err := m2.Resize("v", max(c.from, c.to), true); err != nil {
				t.Fatal(err)
			}
			v3, err := m2.Open("v")
			if err != nil {
				t.Fatal(err)
			}
			defer v3.Close()
			got = make([]byte, v3.Size())
			v3.ReadAt(got, 0)
			lo := min(c.from, c.to)
			if !bytes.Equal(got[:lo], want[:lo]) || !bytes.Equal(got[lo:], make([]byte, len(got)-int(lo))) {
				t.Fatal("after finishing the resize: wrong bytes")
			}
		})
	}
}
