package volume_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/obdvol/obdvol/volume"
)

// Issue 9 #13: a long-running Manager keeps open only the layers its
// open volumes use: after flatten, rollback, clone, delete and gc, the
// layers nothing uses any more are closed and dropped.
func TestManagerClosesUnusedLayers(t *testing.T) {
	m := newManager(t, t.TempDir())
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	check := func(when string, want int) {
		t.Helper()
		if got := m.OpenLayers(); got != want {
			t.Fatalf("%s: %d layers open, %d in use", when, got, want)
		}
	}
	for i := range 6 {
		v, err := m.Open("v")
		if err != nil {
			t.Fatal(err)
		}
		a, b := fmt.Sprintf("a%d", i), fmt.Sprintf("b%d", i)
		v.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 4096), int64(i)*4096)
		if _, err := v.Snapshot(ctx, a); err != nil {
			t.Fatal(err)
		}
		v.WriteAt(bytes.Repeat([]byte{byte(i + 101)}, 4096), int64(i+8)*4096)
		if _, err := v.Snapshot(ctx, b); err != nil {
			t.Fatal(err)
		}
		check("after two snapshots", len(v.Record().Layers))
		if _, err := v.Flatten(ctx); err != nil {
			t.Fatal(err)
		}
		check("after flatten", 1)
		p := make([]byte, 4096)
		v.ReadAt(p, int64(i+8)*4096)
		if m.Cache().Bytes() == 0 {
			t.Fatal("precondition: the read left nothing in the chunk cache")
		}
		if !bytes.Equal(p, bytes.Repeat([]byte{byte(i + 101)}, 4096)) {
			t.Fatal("wrong data after flatten")
		}
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
		check("with no volume open", 0)
		if n := m.Cache().Bytes(); n != 0 {
			t.Fatalf("%d bytes of closed layers' chunks stay cached", n)
		}

		// A clone of the newest snapshot, opened and deleted.
		c := fmt.Sprintf("c%d", i)
		if _, err := m.Clone(c, "v", b); err != nil {
			t.Fatal(err)
		}
		cv, err := m.Open(c)
		if err != nil {
			t.Fatal(err)
		}
		cv.ReadAt(p, int64(i)*4096)
		check("with the clone open", len(cv.Record().Layers))
		cv.Close()
		if err := m.Delete(c, false); err != nil {
			t.Fatal(err)
		}
		check("after deleting the clone", 0)
		if _, err := m.Rollback("v", a, true); err != nil {
			t.Fatal(err)
		}
		if _, err := m.GC(ctx, false, nil); err != nil {
			t.Fatal(err)
		}
		check("after rollback and gc", 0)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	check("with the volume open again", len(v.Record().Layers))
	if len(v.Record().Layers) < 2 {
		t.Fatalf("precondition: a chain of %d layers", len(v.Record().Layers))
	}
}
