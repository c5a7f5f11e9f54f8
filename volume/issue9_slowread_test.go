package volume_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/volume"
)

// slowSource is a layer's blob whose chunk reads (below the index) wait
// for gate, or for the read's context to end: a lazy layer's range
// request to a registry that is slow to answer (up to the 30 s retry).
type slowSource struct {
	snapshot.BlobSource
	indexOff int64
	gate     chan struct{}
	entered  chan struct{}
	reads    atomic.Int32 // chunk reads
}

func (s *slowSource) ReadAt(p []byte, off int64) (int, error) {
	return s.ReadAtContext(context.Background(), p, off)
}

func (s *slowSource) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < s.indexOff {
		s.reads.Add(1)
		select {
		case s.entered <- struct{}{}:
		default:
		}
		select {
		case <-s.gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return s.BlobSource.ReadAt(p, off)
}

// slowBlobs is the real content store whose layer slow reads through a
// slowSource.
type slowBlobs struct {
	repo.Blobs
	slow string
	src  *slowSource
}

func (b *slowBlobs) OpenLayer(d string) (snapshot.BlobSource, io.Closer, error) {
	src, c, err := b.Blobs.OpenLayer(d)
	if err != nil || d != b.slow {
		return src, c, err
	}
	l, err := snapshot.Open(src)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	b.src.BlobSource, b.src.indexOff = src, int64(l.Trailer().IndexOffset)
	return b.src, c, nil
}

// slowVolume makes volume v with a sealed layer holding 0xAA at [0, 64K)
// and 0xBB written (not sealed) at [1M, 1M+64K), then opens it in a fresh
// manager whose sealed layer reads through a slowSource.
func slowVolume(t *testing.T) (*volume.Volume, *slowSource) {
	return slowVolumeCache(t, 4<<20)
}

func slowVolumeCache(t *testing.T, cacheBytes int) (*volume.Volume, *slowSource) {
	t.Helper()
	root := t.TempDir()
	m := newManager(t, root)
	if _, err := m.Create("v", 4<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	v.WriteAt(bytes.Repeat([]byte{0xAA}, 64<<10), 0)
	res, err := v.Snapshot(context.Background(), "s1")
	if err != nil {
		t.Fatal(err)
	}
	v.WriteAt(bytes.Repeat([]byte{0xBB}, 64<<10), 1<<20)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	m.Close()

	src := &slowSource{gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := repo.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	m2 := volume.NewManager(root, cat, &slowBlobs{Blobs: repo.Blobs{Store: st}, slow: res.Layer.Digest, src: src},
		volume.Options{CacheBytes: cacheBytes})
	t.Cleanup(func() { m2.Close() })
	v2, err := m2.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	return v2, src
}

// Issue 9 #8: a read waiting on a slow lazy layer holds no lock a freeze
// waits on: a snapshot taken meanwhile completes, and so do reads of
// local data and writes, while that read is still blocked; the read then
// returns the right bytes.
func TestSlowLazyReadDoesNotStallFreeze(t *testing.T) {
	v, src := slowVolume(t)
	var release sync.Once
	open := func() { release.Do(func() { close(src.gate) }) }
	defer v.Close()
	defer open()

	slow := make(chan error, 1)
	got := make([]byte, 4096)
	go func() { _, err := v.ReadAt(got, 0); slow <- err }()
	<-src.entered // the read waits on the "registry"
	// A write merging a partial block of the slow layer waits for its
	// fetch too, holding no lock meanwhile.
	partial := make(chan error, 1)
	go func() { _, err := v.WriteAt(bytes.Repeat([]byte{0xDD}, 512), 4096+512); partial <- err }()

	within(t, "a snapshot while a lazy read is in flight", func() {
		if _, err := v.Snapshot(context.Background(), "s2"); err != nil {
			t.Error(err)
		}
	})
	within(t, "a read of local data while a lazy read is in flight", func() {
		p := make([]byte, 4096)
		if _, err := v.ReadAt(p, 1<<20); err != nil || !bytes.Equal(p, bytes.Repeat([]byte{0xBB}, 4096)) {
			t.Errorf("local read: %v", err)
		}
	})
	within(t, "a write while a lazy read is in flight", func() {
		if _, err := v.WriteAt(bytes.Repeat([]byte{0xCC}, 4096), 2<<20); err != nil {
			t.Error(err)
		}
	})
	select {
	case err := <-slow:
		t.Fatalf("precondition: the slow read returned (%v) before it was let through", err)
	default:
	}
	open()
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.Repeat([]byte{0xAA}, 4096)) {
		t.Fatal("the slow read returned wrong bytes")
	}
	if err := <-partial; err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0xAA}, 4096)
	copy(want[512:], bytes.Repeat([]byte{0xDD}, 512))
	p := make([]byte, 4096)
	if _, err := v.ReadAt(p, 4096); err != nil || !bytes.Equal(p, want) {
		t.Fatalf("block merged by the partial write: %v", err)
	}
}

// Closing a volume ends the lazy reads in flight (their context is the
// volume's) instead of waiting for the registry.
func TestCloseCancelsSlowLazyRead(t *testing.T) {
	v, src := slowVolume(t)
	defer close(src.gate)
	slow := make(chan error, 1)
	go func() { _, err := v.ReadAt(make([]byte, 4096), 0); slow <- err }()
	<-src.entered
	within(t, "Close while a lazy read is in flight", func() {
		if err := v.Close(); err != nil {
			t.Error(err)
		}
	})
	within(t, "the lazy read after Close", func() {
		if err := <-slow; !errors.Is(err, context.Canceled) {
			t.Errorf("read after Close = %v, want context.Canceled", err)
		}
	})
}

// A write merging a partial block of a slow lazy layer fetches it before
// taking any lock and merges what it fetched: with a chunk cache too
// small to keep anything, the layer is read once, and a snapshot taken
// while that fetch waits completes (the new chain takes the block from
// the same layer, so the fetched bytes still hold).
func TestPartialWriteFetchesLazyBlockOutsideLocks(t *testing.T) {
	v, src := slowVolumeCache(t, 1) // caches nothing
	var release sync.Once
	open := func() { release.Do(func() { close(src.gate) }) }
	defer v.Close()
	defer open()

	done := make(chan error, 1)
	go func() { _, err := v.WriteAt(bytes.Repeat([]byte{0xDD}, 512), 4096+512); done <- err }()
	<-src.entered // the merge's fetch waits on the "registry"
	within(t, "a snapshot while a partial write fetches its block", func() {
		if _, err := v.Snapshot(context.Background(), "s2"); err != nil {
			t.Error(err)
		}
	})
	select {
	case err := <-done:
		t.Fatalf("precondition: the write returned (%v) before its fetch was let through", err)
	default:
	}
	open()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := src.reads.Load(); n != 1 {
		t.Fatalf("the write read the lazy layer %d times, want 1 (its fetch, merged as fetched)", n)
	}
	want := bytes.Repeat([]byte{0xAA}, 4096)
	copy(want[512:], bytes.Repeat([]byte{0xDD}, 512))
	p := make([]byte, 4096)
	if _, err := v.ReadAt(p, 4096); err != nil || !bytes.Equal(p, want) {
		t.Fatalf("merged block: %v", err)
	}
}
