package metrics_test

import (
	"sync"
	"testing"

	"github.com/obdvol/obdvol/device"
	"github.com/obdvol/obdvol/metrics"
)

// memDisk is a plain in-memory disk, so that what is measured is the
// wrapper alone.
type memDisk []byte

func (m memDisk) ReadAt(p []byte, off int64) (int, error)  { return copy(p, m[off:]), nil }
func (m memDisk) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }
func (m memDisk) Flush() error                             { return nil }
func (m memDisk) Discard(off, n int64) error               { clear(m[off : off+n]); return nil }
func (m memDisk) WriteZeroes(off, n int64) error           { clear(m[off : off+n]); return nil }
func (m memDisk) Size() uint64                             { return uint64(len(m)) }

// A request through the wrapper allocates nothing.
func TestInstrumentDoesNotAllocate(t *testing.T) {
	c := metrics.New()
	disk := make(memDisk, 1<<20)
	if a := testing.AllocsPerRun(100, func() { disk.ReadAt(make([]byte, 0), 0) }); a != 0 {
		t.Fatalf("precondition: the bare disk allocates %v per read", a)
	}
	b := c.Instrument("vm1", disk)
	if _, ok := b.(device.Mapper); ok {
		t.Fatal("Instrument added device.Mapper to a backend without it")
	}
	p := make([]byte, 4096)
	for name, op := range map[string]func(){
		"ReadAt":      func() { b.ReadAt(p, 8192) },
		"WriteAt":     func() { b.WriteAt(p, 8192) },
		"Flush":       func() { b.Flush() },
		"WriteZeroes": func() { b.WriteZeroes(0, 4096) },
	} {
		if a := testing.AllocsPerRun(1000, op); a != 0 {
			t.Errorf("%s through Instrument: %v allocations per call", name, a)
		}
	}
}

// Concurrent requests on one volume while it is scraped: every one is
// counted (the race detector checks the rest).
func TestInstrumentConcurrent(t *testing.T) {
	c := metrics.New()
	b := c.Instrument("vm1", make(memDisk, 1<<20))
	srv := serve(t, c)
	const workers, each = 8, 250
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 512)
			for i := range each {
				off := int64((w*each + i) % 2048 * 512)
				if i%2 == 0 {
					b.WriteAt(p, off)
				} else {
					b.ReadAt(p, off)
				}
			}
		}()
	}
	scrape(t, srv.Addr()) // while they run
	wg.Wait()
	mfs := scrape(t, srv.Addr())
	for _, op := range []string{"read", "write"} {
		l := map[string]string{"volume": "vm1", "op": op}
		if got := value(mfs, "obdvol_volume_ops_total", l); got != workers*each/2 {
			t.Errorf("%s ops %v, want %d", op, got, workers*each/2)
		}
		if got := value(mfs, "obdvol_volume_bytes_total", l); got != workers*each/2*512 {
			t.Errorf("%s bytes %v, want %d", op, got, workers*each/2*512)
		}
		if got := histCount(mfs, "obdvol_volume_op_duration_seconds", l); got != workers*each/2 {
			t.Errorf("%s latency count %v, want %d", op, got, workers*each/2)
		}
	}
}

// Label values that are not UTF-8 (prometheus panics on them) are
// repaired, not fatal.
func TestInstrumentOddNames(t *testing.T) {
	c := metrics.New()
	b := c.Instrument("bad\xffname", make(memDisk, 4096))
	b.ReadAt(make([]byte, 512), 0)
	c.RangeRequest("host\xfe:5000", 10, nil)
	c.HostRequest("host\xfe:5000", "mirror\xfe:5000", 404, nil)
	c.ObserveSeal("bad\xffname", 1, nil)
	mfs := scrape(t, serve(t, c).Addr())
	if got := value(mfs, "obdvol_volume_ops_total", map[string]string{"volume": "bad\uFFFDname", "op": "read"}); got != 1 {
		t.Fatalf("reads of a volume with an invalid name: %v", got)
	}
	c.Forget("bad\xffname")
	if fams := withLabel(scrape(t, serve(t, c).Addr()), "volume", "bad\uFFFDname"); len(fams) != 0 {
		t.Fatalf("after Forget: %v", fams)
	}
}
