package metrics_test

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/obdvol/obdvol/device"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/metrics"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/volume"
)

// newManager returns a manager over a fresh root that reports seals and
// its chunk cache to c.
func newManager(t *testing.T, c *metrics.Collector) (*volume.Manager, *repo.Store) {
	t.Helper()
	root := t.TempDir()
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := repo.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	m := volume.NewManager(root, cat, repo.Blobs{Store: st}, volume.Options{CacheBytes: 4 << 20, OnSeal: c.ObserveSeal})
	t.Cleanup(func() { m.Close() })
	c.WatchCache(m.Cache())
	return m, st
}

func serve(t *testing.T, c *metrics.Collector) *metrics.Server {
	t.Helper()
	srv, err := metrics.Serve(context.Background(), "127.0.0.1:0", c, metrics.ServeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Error(err)
		}
	})
	return srv
}

// A real volume served through Instrument: a scrape over HTTP shows
// exactly the I/O done, per op, with histogram counts to match; a seal
// records one observation; the cache counters are the cache's own.
func TestScrapeMatchesVolumeIO(t *testing.T) {
	c := metrics.New()
	m, _ := newManager(t, c)
	if _, err := m.Create("vm1", 4<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("vm1")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	b := c.Instrument("vm1", v)
	if _, ok := b.(device.Mapper); !ok {
		t.Fatal("Instrument dropped device.Mapper of a volume")
	}
	if b.Size() != v.Size() {
		t.Fatalf("size %d, volume %d", b.Size(), v.Size())
	}
	// 7 writes of 4 KiB, a seal, 3 reads of 8 KiB (of the sealed layer,
	// so through the chunk cache), 2 flushes, 1 discard and 1 zeroing of
	// 64 KiB, and 1 read past the end, which fails.
	block := bytes.Repeat([]byte{0xab}, 4096)
	for i := range 7 {
		if _, err := b.WriteAt(block, int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.Snapshot(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8192)
	for i := range 3 {
		if _, err := b.ReadAt(buf, int64(i%2)*8192); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:4096], block) {
			t.Fatalf("read %d: wrong bytes", i)
		}
	}
	for range 2 {
		if err := b.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Discard(1<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteZeroes(2<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ReadAt(buf, int64(v.Size())); err == nil {
		t.Fatal("precondition: a read past the end of the volume succeeded")
	}

	srv := serve(t, c)
	mfs := scrape(t, srv.Addr())
	type want struct {
		op           string
		ops, n, errs float64
	}
	for _, w := range []want{
		{"write", 7, 7 * 4096, 0},
		{"read", 4, 3 * 8192, 1},
		{"flush", 2, -1, 0}, // flush has no bytes series
		{"discard", 1, 64 << 10, 0},
		{"write_zeroes", 1, 64 << 10, 0},
	} {
		l := map[string]string{"volume": "vm1", "op": w.op}
		if got := value(mfs, "obdvol_volume_ops_total", l); got != w.ops {
			t.Errorf("obdvol_volume_ops_total%v = %v, want %v", l, got, w.ops)
		}
		if got := value(mfs, "obdvol_volume_bytes_total", l); got != w.n {
			t.Errorf("obdvol_volume_bytes_total%v = %v, want %v", l, got, w.n)
		}
		if got := value(mfs, "obdvol_volume_errors_total", l); got != w.errs {
			t.Errorf("obdvol_volume_errors_total%v = %v, want %v", l, got, w.errs)
		}
		if got := histCount(mfs, "obdvol_volume_op_duration_seconds", l); got != int64(w.ops) {
			t.Errorf("obdvol_volume_op_duration_seconds%v count = %v, want %v", l, got, w.ops)
		}
	}
	if got := histCount(mfs, "obdvol_seal_duration_seconds", map[string]string{"volume": "vm1"}); got != 1 {
		t.Errorf("seal observations of vm1: %d, want 1", got)
	}
	if got := value(mfs, "obdvol_seal_failures_total", map[string]string{"volume": "vm1"}); got != -1 {
		t.Errorf("seal failures of vm1: %v, want no series", got)
	}
	st := m.Cache().Stats()
	hits, misses := st.Hits, st.Misses
	if misses == 0 || hits == 0 {
		t.Fatalf("precondition: reads of a sealed layer, twice the same chunk: %d hits, %d misses", hits, misses)
	}
	if got := value(mfs, "obdvol_chunk_cache_hits_total", nil); got != float64(hits) {
		t.Errorf("cache hits %v, the cache says %d", got, hits)
	}
	if got := value(mfs, "obdvol_chunk_cache_misses_total", nil); got != float64(misses) {
		t.Errorf("cache misses %v, the cache says %d", got, misses)
	}
	if got := value(mfs, "obdvol_chunk_cache_bytes", nil); got != float64(m.Cache().Stats().Bytes) || got <= 0 {
		t.Errorf("cache bytes %v, the cache says %d", got, m.Cache().Bytes())
	}
	if value(mfs, "process_resident_memory_bytes", nil) <= 0 {
		t.Error("no process_resident_memory_bytes")
	}

	// Deactivated: its series go; instrumenting again starts from zero.
	c.Forget("vm1")
	if fams := withLabel(scrape(t, srv.Addr()), "volume", "vm1"); len(fams) != 0 {
		t.Fatalf("after Forget vm1 still has series in %v", fams)
	}
	b = c.Instrument("vm1", v)
	if _, err := b.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	mfs = scrape(t, srv.Addr())
	if got := value(mfs, "obdvol_volume_ops_total", map[string]string{"volume": "vm1", "op": "read"}); got != 1 {
		t.Fatalf("reads after Forget and Instrument: %v, want 1", got)
	}
}

// A failed seal counts as a failure, not a duration.
func TestScrapeSealFailure(t *testing.T) {
	c := metrics.New()
	m, _ := newManager(t, c)
	if _, err := m.Create("vm2", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("vm2")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := v.Snapshot(context.Background(), "s"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Snapshot(context.Background(), "s"); err == nil {
		t.Fatal("precondition: a second snapshot named s was taken")
	}
	mfs := scrape(t, serve(t, c).Addr())
	l := map[string]string{"volume": "vm2"}
	if got := histCount(mfs, "obdvol_seal_duration_seconds", l); got != 1 {
		t.Errorf("seal observations %d, want 1", got)
	}
	if got := value(mfs, "obdvol_seal_failures_total", l); got != 1 {
		t.Errorf("seal failures %v, want 1", got)
	}
}

// Over a real volume the wrapper adds no allocation to a read or a write.
func TestInstrumentVolumeAllocs(t *testing.T) {
	c := metrics.New()
	m, _ := newManager(t, c)
	if _, err := m.Create("vm3", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("vm3")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	b := c.Instrument("vm3", v)
	p := make([]byte, 4096)
	if _, err := v.WriteAt(p, 8192); err != nil { // the block exists: rewrites allocate nothing new
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		bare, wrapd func()
	}{
		{"ReadAt", func() { v.ReadAt(p, 8192) }, func() { b.ReadAt(p, 8192) }},
		{"WriteAt", func() { v.WriteAt(p, 8192) }, func() { b.WriteAt(p, 8192) }},
	} {
		bare := testing.AllocsPerRun(200, tc.bare)
		wrapped := testing.AllocsPerRun(200, tc.wrapd)
		if wrapped != bare {
			t.Errorf("%s: %v allocations through Instrument, %v on the bare volume", tc.name, wrapped, bare)
		}
		t.Logf("%s: %v allocations per call on the volume", tc.name, bare)
	}
}
