package volume

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/snapshot"
)

// memStore is a content store in memory, for tests inside the package
// (the real one, repo.Blobs, imports volume).
type memStore struct {
	mu    sync.Mutex
	files map[string][]byte
}

func newMemStore() *memStore { return &memStore{files: map[string][]byte{}} }

type memBlob struct {
	bytes.Buffer
	s *memStore
}

func (b *memBlob) Commit(string) (string, int64, error) {
	sum := sha256.Sum256(b.Bytes())
	d := "sha256:" + hex.EncodeToString(sum[:])
	b.s.mu.Lock()
	b.s.files[d] = bytes.Clone(b.Bytes())
	b.s.mu.Unlock()
	return d, int64(b.Len()), nil
}

func (b *memBlob) Abort() {}

func (s *memStore) OpenLayer(digest string) (snapshot.BlobSource, io.Closer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.files[digest]
	if !ok {
		return nil, nil, os.ErrNotExist
	}
	return snapshot.BytesSource(b), io.NopCloser(nil), nil
}

func (s *memStore) NewBlob() (BlobWriter, error) { return &memBlob{s: s}, nil }

func (s *memStore) Remove(digest string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.files, digest)
	return nil
}

func (s *memStore) List() ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for d := range s.files {
		out = append(out, d)
	}
	return out, nil
}

func testManager(t *testing.T, root string, blobs *memStore) *Manager {
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	m := NewManager(root, cat, blobs, Options{})
	t.Cleanup(func() { m.Close() })
	return m
}

// A crash between freeze and the end of the seal: the next Open finishes
// the seal; the snapshot holds the frozen state, the volume also has the
// writes made after the freeze.
func TestInterruptedSealFinishedAtOpen(t *testing.T) {
	root := t.TempDir()
	blobs := newMemStore()
	m := testManager(t, root, blobs)
	if _, err := m.Create("v", 64*4096, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	a := bytes.Repeat([]byte{'a'}, 4096)
	b := bytes.Repeat([]byte{'b'}, 4096)
	v.WriteAt(a, 0)
	v.WriteAt(a, 4096)
	v.sealMu.Lock()
	if _, frozen, err := v.freeze("s1"); err != nil || !frozen {
		t.Fatalf("freeze: %v %v", frozen, err)
	}
	v.sealMu.Unlock()
	v.WriteAt(b, 4096) // after the freeze, in the new writable layer
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	// "Crash": drop the volume without sealing.
	v.frozen.close()
	v.frozen = nil
	v.Close()

	v, err = m.Open("v")
	if err != nil {
		t.Fatalf("open after interrupted seal: %v", err)
	}
	defer v.Close()
	got := make([]byte, 8192)
	v.ReadAt(got, 0)
	if !bytes.Equal(got[:4096], a) || !bytes.Equal(got[4096:], b) {
		t.Fatal("volume lost writes across the interrupted seal")
	}
	s, err := m.SnapshotChain("v", "s1")
	if err != nil {
		t.Fatalf("snapshot s1 not recorded after recovery: %v", err)
	}
	ch, err := m.Chain(s.Layers, s.Size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	ch.ReadAt(got, 0)
	if !bytes.Equal(got[:4096], a) || !bytes.Equal(got[4096:], a) {
		t.Fatal("snapshot s1 does not hold the frozen state")
	}
	if rec := v.Record(); rec.Frozen != 0 {
		t.Fatalf("volume still frozen: %+v", rec)
	}
}

// Writes go on while a seal runs; the snapshot holds what was written
// before it, and each block written during it is old or new, never torn.
func TestWritesDuringSeal(t *testing.T) {
	m := testManager(t, t.TempDir(), newMemStore())
	const blocks = 4096
	if _, err := m.Create("v", blocks*4096, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.WriteAt(bytes.Repeat([]byte{'o'}, blocks*4096), 0)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	writes := 0
	go func() {
		defer wg.Done()
		p := bytes.Repeat([]byte{'x'}, 4096)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := v.WriteAt(p, int64(blocks-1-(i%64))*4096); err != nil {
				t.Error(err)
				return
			}
			writes++
		}
	}()
	_, err = v.Snapshot(context.Background(), "s")
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	s, _ := m.SnapshotChain("v", "s")
	ch, err := m.Chain(s.Layers, s.Size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, blocks*4096)
	ch.ReadAt(got, 0)
	if !bytes.Equal(got[:(blocks-64)*4096], bytes.Repeat([]byte{'o'}, (blocks-64)*4096)) {
		t.Fatal("snapshot differs from the state before it")
	}
	for b := blocks - 64; b < blocks; b++ {
		blk := got[b*4096 : (b+1)*4096]
		if !bytes.Equal(blk, bytes.Repeat(blk[:1], 4096)) || (blk[0] != 'o' && blk[0] != 'x') {
			t.Fatalf("block %d of the snapshot is torn", b)
		}
	}
	cur := make([]byte, 4096)
	v.ReadAt(cur, (blocks-1)*4096)
	if writes > 0 && cur[0] != 'x' {
		t.Fatal("a write made during the seal was lost")
	}
}
