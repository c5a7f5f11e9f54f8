package volume_test

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/volume"
)

// gateBlobs is the real content store with two gates: OpenLayer of the
// digest in slowOpen, and Write of new blobs while slowWrite is set, wait
// until their channel is closed (a lazy range request, a slow disk).
type gateBlobs struct {
	repo.Blobs
	slowOpen  string
	openGate  chan struct{}
	opens     atomic.Int32 // OpenLayer calls for slowOpen
	entered   chan struct{}
	slowWrite *atomic.Bool
	writeGate chan struct{}
}

func (b *gateBlobs) OpenLayer(d string) (snapshot.BlobSource, io.Closer, error) {
	if d == b.slowOpen {
		b.opens.Add(1)
		b.entered <- struct{}{}
		<-b.openGate
	}
	return b.Blobs.OpenLayer(d)
}

func (b *gateBlobs) NewBlob() (volume.BlobWriter, error) {
	w, err := b.Blobs.NewBlob()
	if err != nil {
		return nil, err
	}
	return &gateWriter{BlobWriter: w, b: b}, nil
}

type gateWriter struct {
	volume.BlobWriter
	b    *gateBlobs
	once sync.Once
}

func (w *gateWriter) Write(p []byte) (int, error) {
	if w.b.slowWrite.Load() {
		w.once.Do(func() { w.b.entered <- struct{}{} })
		<-w.b.writeGate
	}
	return w.BlobWriter.Write(p)
}

func gateManager(t *testing.T, root string, b *gateBlobs) *volume.Manager {
	t.Helper()
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := repo.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	b.Blobs = repo.Blobs{Store: st}
	m := volume.NewManager(root, cat, b, volume.Options{CacheBytes: 4 << 20})
	t.Cleanup(func() { m.Close() })
	return m
}

// within fails the test unless fn returns within a generous bound: it
// detects a call blocked behind a lock (a deadlock), it does not time it.
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("%s is blocked", what)
	}
}

// Issue 9 #8: Flatten builds its layer with I/O running; reads and writes
// wait only for the pointer swap.
func TestFlattenDoesNotBlockIO(t *testing.T) {
	root := t.TempDir()
	var slow atomic.Bool
	b := &gateBlobs{entered: make(chan struct{}, 1), slowWrite: &slow, writeGate: make(chan struct{})}
	m := gateManager(t, root, b)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for i := range 3 {
		v.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 64<<10), int64(i)*64<<10)
		if _, err := v.Snapshot(context.Background(), "s"+string(rune('0'+i))); err != nil {
			t.Fatal(err)
		}
	}
	want := make([]byte, 1<<20)
	v.ReadAt(want, 0)

	var release sync.Once
	open := func() { release.Do(func() { slow.Store(false); close(b.writeGate) }) }
	defer open() // runs before v.Close, even when the test fails
	slow.Store(true)
	flat := make(chan error, 1)
	go func() { _, err := v.Flatten(context.Background()); flat <- err }()
	<-b.entered // Flatten is writing its layer
	within(t, "a read during Flatten's layer write", func() {
		got := make([]byte, 4096)
		if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, want[:4096]) {
			t.Errorf("read during flatten: %v", err)
		}
	})
	within(t, "a write during Flatten's layer write", func() {
		if _, err := v.WriteAt(bytes.Repeat([]byte{9}, 4096), 512<<10); err != nil {
			t.Error(err)
		}
	})
	copy(want[512<<10:], bytes.Repeat([]byte{9}, 4096))
	open()
	if err := <-flat; err != nil {
		t.Fatal(err)
	}
	if n := len(v.Record().Layers); n != 1 {
		t.Fatalf("%d layers after flatten", n)
	}
	got := make([]byte, 1<<20)
	v.ReadAt(got, 0)
	if !bytes.Equal(got, want) {
		t.Fatal("data differs after flatten")
	}
}

// Manager.Layer opens a layer outside the manager's mutex: an open
// waiting on the network does not hold up other digests, and concurrent
// callers for the same digest share one open.
func TestLayerOpenDoesNotBlockOtherDigests(t *testing.T) {
	root := t.TempDir()
	m := newManager(t, root)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	var digests []string
	for i := range 2 {
		v.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 4096), int64(i)*4096)
		res, err := v.Snapshot(context.Background(), "s"+string(rune('0'+i)))
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, res.Layer.Digest)
	}
	v.Close()
	m.Close()

	var never atomic.Bool
	b := &gateBlobs{slowOpen: digests[0], openGate: make(chan struct{}), entered: make(chan struct{}, 4), slowWrite: &never}
	m2 := gateManager(t, root, b)
	var release sync.Once
	open := func() { release.Do(func() { close(b.openGate) }) }
	defer open()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); _, err := m2.Layer(digests[0]); errs <- err }()
	}
	<-b.entered // one open of digests[0] is waiting on the "network"
	within(t, "opening another digest while one is being opened", func() {
		if _, err := m2.Layer(digests[1]); err != nil {
			t.Error(err)
		}
	})
	open()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := b.opens.Load(); n != 1 {
		t.Fatalf("%d opens of one digest for 3 concurrent callers, want 1", n)
	}
}
