package volume_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"path/filepath"
	"sync"
	"testing"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/volume"
)

// Reads and sub-block writes run while snapshots and flattens swap the
// chain under them, with a chunk cache that keeps nothing (every chain
// read goes to the layers, every merge uses the block its write fetched
// or reads it again): each writer owns its blocks, so the volume must
// end equal to what each wrote, and the manager holds open exactly the
// layers of the volume's chain.
func TestIOAcrossChainSwaps(t *testing.T) {
	root := t.TempDir()
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := repo.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	m := volume.NewManager(root, cat, repo.Blobs{Store: st}, volume.Options{CacheBytes: 1})
	t.Cleanup(func() { m.Close() })
	const bs, writers, per = 4096, 4, 16 // writer k owns blocks [k*per, (k+1)*per)
	size := int64(writers * per * bs)
	if _, err := m.Create("v", uint64(size), volume.CreateOptions{ChunkSize: 16 << 10}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	want := make([]byte, size)
	r0 := rand.New(rand.NewSource(9))
	r0.Read(want)
	if _, err := v.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := v.Snapshot(ctx, "base"); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for k := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(k)))
			lo := int64(k * per * bs)
			mine := want[lo : lo+per*bs] // only this goroutine touches it
			got := make([]byte, 3*bs)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				off := r.Int63n(per*bs - 1)
				n := 1 + r.Int63n(min(2*bs, per*bs-off))
				p := make([]byte, n)
				r.Read(p)
				if _, err := v.WriteAt(p, lo+off); err != nil {
					errs <- err
					return
				}
				copy(mine[off:], p)
				ro := r.Int63n(per*bs - int64(len(got)))
				if _, err := v.ReadAt(got, lo+ro); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, mine[ro:ro+int64(len(got))]) {
					errs <- fmt.Errorf("writer %d, op %d: read at %d differs from what was written", k, i, lo+ro)
					return
				}
			}
		}()
	}
	for i := range 12 {
		var err error
		if i%3 == 2 {
			_, err = v.Flatten(ctx)
		} else {
			_, err = v.Snapshot(ctx, fmt.Sprintf("s%d", i))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("volume differs from what was written")
	}
	if n, use := m.OpenLayers(), len(v.Record().Layers); n != use {
		t.Fatalf("%d layers open, the chain uses %d", n, use)
	}
}
