package volume_test

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/obdvol/obdvol/volume"
)

// Issue 9 #2: concurrent writes to different sectors of one block must not
// lose each other (sub-block writes read-modify-write the block). Every
// 512-byte sector of the first blocks has its own writer, which writes
// and zeroes (WriteZeroes of a sub-block range) its sector many times;
// afterwards every sector holds its writer's last bytes.
func TestConcurrentSubBlockWrites(t *testing.T) {
	m := newManager(t, t.TempDir())
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{BlockSize: 4096}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	const blocks, sectors, rounds = 8, 8, 60
	sector := func(i, r int) []byte {
		return bytes.Repeat([]byte(fmt.Sprintf("s%03dr%03d", i, r)), 512/8)
	}
	var wg sync.WaitGroup
	errs := make(chan error, blocks*sectors)
	for i := range blocks * sectors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := int64(i) * 512
			for r := range rounds {
				var err error
				if r%3 == 1 {
					err = v.WriteZeroes(off, 512)
				} else {
					_, err = v.WriteAt(sector(i, r), off)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	check := func(when string) {
		got := make([]byte, blocks*sectors*512)
		if _, err := v.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		lost := 0
		for i := range blocks * sectors {
			want := sector(i, rounds-1)
			if (rounds-1)%3 == 1 {
				want = make([]byte, 512)
			}
			if !bytes.Equal(got[i*512:(i+1)*512], want) {
				lost++
			}
		}
		if lost > 0 {
			t.Fatalf("%s: %d of %d sectors lost their writer's last write", when, lost, blocks*sectors)
		}
	}
	check("before flush")
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	check("after flush")
}

// A whole-block write racing a sub-block write to the same block: the
// sectors only the whole-block write touched must hold its bytes, the
// shared sector either writer's.
func TestWholeBlockWriteRacingSubBlockWrite(t *testing.T) {
	m := newManager(t, t.TempDir())
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{BlockSize: 4096}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	const blocks = 64
	for r := range 20 {
		whole := bytes.Repeat([]byte{byte('A' + r%26)}, 4096)
		small := bytes.Repeat([]byte{byte('a' + r%26)}, 512)
		var wg sync.WaitGroup
		for b := range blocks {
			wg.Add(2)
			go func() { defer wg.Done(); v.WriteAt(whole, int64(b)*4096) }()
			go func() { defer wg.Done(); v.WriteAt(small, int64(b)*4096+1024) }()
		}
		wg.Wait()
		got := make([]byte, 4096)
		for b := range blocks {
			v.ReadAt(got, int64(b)*4096)
			if !bytes.Equal(got[:1024], whole[:1024]) || !bytes.Equal(got[1536:], whole[1536:]) {
				t.Fatalf("round %d block %d: bytes only the whole-block write wrote were lost", r, b)
			}
			if s := got[1024:1536]; !bytes.Equal(s, small) && !bytes.Equal(s, whole[:512]) {
				t.Fatalf("round %d block %d: the shared sector holds neither write", r, b)
			}
		}
	}
}
