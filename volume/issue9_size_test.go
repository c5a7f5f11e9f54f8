package volume_test

import (
	"errors"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/obdvol/obdvol/volume"
)

// Issue 9 #10: a volume larger than the design serves is refused at
// create with a clear error (not accepted and then unopenable), and the
// largest sizes open without memory proportional to their size.
func TestVolumeSizeLimit(t *testing.T) {
	m := newManager(t, t.TempDir())
	for _, c := range []struct {
		size uint64
		bs   uint32
	}{
		{volume.MaxVolumeSize(4096) + 4096, 4096},
		{16 << 50, 4096}, // create --size 16P
		{1 << 60, 65536},
		{volume.MaxVolumeSize(512) + 512, 512},
	} {
		_, err := m.Create("big", c.size, volume.CreateOptions{BlockSize: c.bs})
		if !errors.Is(err, volume.ErrRange) || !strings.Contains(err.Error(), "largest volume") {
			t.Fatalf("create of %d bytes with %d-byte blocks = %v, want ErrRange naming the largest volume", c.size, c.bs, err)
		}
	}

	opened := 0
	// The largest volumes: create and open cost a bounded page table
	// (about 18 MiB at 2^35 blocks), not memory proportional to size.
	for i, c := range []struct {
		size uint64
		bs   uint32
	}{
		{volume.MaxVolumeSize(512), 512},
		{volume.MaxVolumeSize(4096), 4096},
		{8 << 40, 512},
	} {
		name := []string{"a", "b", "c"}[i]
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		if _, err := m.Create(name, c.size, volume.CreateOptions{BlockSize: c.bs}); err != nil {
			t.Fatalf("create of the largest size %d: %v", c.size, err)
		}
		v, err := m.Open(name)
		if errors.Is(err, syscall.EFBIG) {
			// The filesystem under the test's root (ext4) cannot hold a
			// data file this large: the error says so.
			if !strings.Contains(err.Error(), "filesystem") {
				t.Fatalf("open failing for the filesystem's file size limit: unclear error %v", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("open of a %d-byte volume: %v", c.size, err)
		}
		if _, err := v.WriteAt(make([]byte, c.bs), int64(c.size)-int64(c.bs)); err != nil {
			t.Fatal(err)
		}
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
		opened++
		runtime.ReadMemStats(&after)
		if got := after.TotalAlloc - before.TotalAlloc; got > 64<<20 {
			t.Fatalf("create+open+close of a %d-byte volume allocated %d MiB", c.size, got>>20)
		}
	}
	if opened == 0 {
		t.Fatal("precondition: no large volume could be opened here")
	}
}
