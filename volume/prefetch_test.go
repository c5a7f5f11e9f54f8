package volume_test

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/volume"
)

// fileFetcher serves ranges of a blob file as a registry 5 ms away
// would, counting requests and the most in flight at once.
type fileFetcher struct {
	data               []byte
	requests, inFlight atomic.Int32
	maxInFlight        atomic.Int32
}

func (f *fileFetcher) FetchRange(ctx context.Context, digest string, off, n int64) ([]byte, error) {
	f.requests.Add(1)
	c := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for m := f.maxInFlight.Load(); c > m && !f.maxInFlight.CompareAndSwap(m, c); m = f.maxInFlight.Load() {
	}
	select {
	case <-time.After(5 * time.Millisecond):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return bytes.Clone(f.data[off : off+n]), nil
}

// Prefetch of a lazily adopted volume fetches the ranges' chunks with
// several requests in flight, reads exact bytes, and leaves nothing for
// later reads of those ranges to fetch.
func TestPrefetchLazyVolume(t *testing.T) {
	const size = 16 << 20
	rootA := t.TempDir()
	a := newManager(t, rootA)
	if _, err := a.Create("v", size, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := a.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	disk := make([]byte, size)
	rand.New(rand.NewSource(5)).Read(disk[:size/2]) // the rest is a hole
	if _, err := v.WriteAt(disk, 0); err != nil {
		t.Fatal(err)
	}
	res, err := v.Snapshot(context.Background(), "s1")
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	l := res.Layer
	stA, err := repo.NewStore(rootA)
	if err != nil {
		t.Fatal(err)
	}
	path, err := stA.Path(l.Digest)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	root := t.TempDir()
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := repo.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	f := &fileFetcher{data: blob}
	blobs := repo.Blobs{Store: st, Lazy: repo.LazyOptions{Concurrency: 8},
		Remote: func(string) (repo.RangeFetcher, int64, error) { return f, int64(len(blob)), nil }}
	m := volume.NewManager(root, cat, blobs, volume.Options{CacheBytes: 1 << 20})
	defer m.Close()
	spec := volume.ChainSpec{Size: size, BlockSize: 4096, ChunkSize: snapshot.DefaultChunkSize, Codec: "zstd", Snapshot: "s1",
		Layers: []metadata.Layer{{Digest: l.Digest, StoredBytes: l.StoredBytes, State: metadata.LayerRemote}}}
	if _, err := m.AdoptChain("v", spec); err != nil {
		t.Fatal(err)
	}
	lv, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer lv.Close()
	// 48 ranges of 64 KiB to 256 KiB at random places, some in the hole,
	// one past the end.
	r := rand.New(rand.NewSource(9))
	var ranges []volume.Range
	var want int64
	for i := 0; i < 48; i++ {
		n := int64(64<<10) << r.Intn(3)
		off := r.Int63n(size-n) &^ 4095
		ranges = append(ranges, volume.Range{Off: off, Len: n})
		want += n
	}
	ranges = append(ranges, volume.Range{Off: size, Len: 4096})
	before := f.requests.Load()
	got, err := lv.Prefetch(ranges)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("prefetch read %d bytes, want %d", got, want)
	}
	if f.maxInFlight.Load() < 2 {
		t.Fatalf("prefetch kept %d requests in flight at most (%d requests)", f.maxInFlight.Load(), f.requests.Load()-before)
	}
	fetched := f.requests.Load()
	buf := make([]byte, 256<<10)
	for _, rg := range ranges[:48] {
		if _, err := lv.ReadAt(buf[:rg.Len], rg.Off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:rg.Len], disk[rg.Off:rg.Off+rg.Len]) {
			t.Fatalf("range %+v: wrong bytes", rg)
		}
	}
	if n := f.requests.Load() - fetched; n != 0 {
		t.Fatalf("reads of prefetched ranges made %d requests", n)
	}
}
