package volume_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/obdvol/obdvol/volume"
)

// The hot read path allocates nothing: a 4K read served from the chunk
// cache through a 16-layer chain, and one served from the writable layer.
func TestReadPathAllocatesNothing(t *testing.T) {
	m := newManager(t, t.TempDir())
	if _, err := m.Create("v", 4<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	block := bytes.Repeat([]byte{7}, 4096)
	for k := 0; k < 16; k++ {
		v.WriteAt(block, int64(k)*8192)
		if _, err := v.Snapshot(context.Background(), string(rune('a'+k))); err != nil {
			t.Fatal(err)
		}
	}
	v.WriteAt(block, 1<<20)
	p := make([]byte, 4096)
	// chain, writable, hole, and chain then writable (the read releases
	// the I/O lock for the chain's part and takes it again).
	for _, off := range []int64{5 * 8192, 1 << 20, 3 << 20, 1<<20 - 2048} {
		v.ReadAt(p, off)
		if a := testing.AllocsPerRun(200, func() { v.ReadAt(p, off) }); a != 0 {
			t.Errorf("4K read at %d allocates %v times", off, a)
		}
	}
}

// Map reports data where the chain or the writable layer has it and holes
// elsewhere.
func TestMap(t *testing.T) {
	m := newManager(t, t.TempDir())
	if _, err := m.Create("v", 64*4096, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	block := bytes.Repeat([]byte{7}, 4096)
	v.WriteAt(block, 2*4096) // sealed below
	v.Snapshot(context.Background(), "s")
	v.WriteAt(block, 3*4096)       // writable, adjacent
	v.WriteZeroes(10*4096, 4*4096) // zero extent
	v.WriteAt(block, 11*4096)      // data inside it
	type run struct {
		hole   bool
		blocks int64
	}
	var runs []run
	v.Map(4096, 20*4096, func(n int64, hole, zero bool) bool {
		if hole != zero {
			t.Fatalf("hole %v but zero %v", hole, zero)
		}
		if k := len(runs); k > 0 && runs[k-1].hole == hole {
			runs[k-1].blocks += n / 4096
		} else {
			runs = append(runs, run{hole, n / 4096})
		}
		return true
	})
	var got []string
	for _, r := range runs {
		kind := "data"
		if r.hole {
			kind = "hole"
		}
		got = append(got, fmt.Sprintf("%s %d", kind, r.blocks))
	}
	want := []string{"hole 1", "data 2", "hole 7", "data 1", "hole 9"}
	if len(got) != len(want) {
		t.Fatalf("Map = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Map = %v, want %v", got, want)
		}
	}
}
