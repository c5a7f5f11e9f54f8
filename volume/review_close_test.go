package volume

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"
)

// gatedStore is a memStore whose blob commits wait for a signal, to stop
// a seal between writing its blob and committing its transaction.
type gatedStore struct {
	*memStore
	entered chan struct{}
	release chan struct{}
}

type gatedBlob struct {
	*memBlob
	g *gatedStore
}

func (b *gatedBlob) Commit(e string) (string, int64, error) {
	b.g.entered <- struct{}{}
	<-b.g.release
	return b.memBlob.Commit(e)
}

func (g *gatedStore) NewBlob() (BlobWriter, error) {
	return &gatedBlob{memBlob: &memBlob{s: g.memStore}, g: g}, nil
}

// A server shutting down closes the volume while a live snapshot (through
// the control socket) is sealing. Close does not wait for the seal: it
// closes the frozen layer under it, releases the volume lock, and the
// seal then dereferences v.frozen == nil (old.close()) and panics,
// killing the server.
func TestReviewCloseDuringSnapshotPanics(t *testing.T) {
	root := t.TempDir()
	g := &gatedStore{memStore: newMemStore(), entered: make(chan struct{}), release: make(chan struct{})}
	cat := testManager(t, root, g.memStore).cat
	m := NewManager(root, cat, g, Options{})
	defer m.Close()
	if _, err := m.Create("v", 64*4096, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	v.WriteAt(bytes.Repeat([]byte{'a'}, 4096), 0)
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("Snapshot panicked: %v", r)
			}
		}()
		_, err := v.Snapshot(context.Background(), "s")
		done <- err
	}()
	<-g.entered // the blob is written, the seal is about to commit
	closed := make(chan error, 1)
	go func() { closed <- v.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while the seal is still running", err)
	case <-done:
		t.Fatal("the seal finished before its blob was released")
	case <-time.After(200 * time.Millisecond): // Close waits for the seal
	}
	close(g.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// After Close, a late request from a device server (NBD shutdown: a
// request still in flight) dereferences v.w == nil and panics instead of
// getting an error.
func TestReviewIOAfterCloseFails(t *testing.T) {
	root := t.TempDir()
	m := testManager(t, root, newMemStore())
	if _, err := m.Create("v", 64*4096, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	for name, f := range map[string]func() error{
		"ReadAt":  func() error { _, err := v.ReadAt(make([]byte, 4096), 0); return err },
		"WriteAt": func() error { _, err := v.WriteAt(make([]byte, 4096), 0); return err },
		"Flush":   func() error { return v.Flush() },
	} {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s after Close panicked: %v", name, r)
				}
			}()
			if f() == nil {
				t.Errorf("%s after Close succeeded", name)
			}
		}()
	}
}

// A zero-length write (or write-zeroes) at off == size passes the range
// check (NBD's does the same), then read-modify-writes the block AT size:
// with a size that is a multiple of 64 MiB (a bitmap page) that indexes
// past the bitmap and panics; otherwise it fails oddly. Any NBD client can
// crash the server this way. A zero-length write inside the volume also
// rewrites a whole block (a lost update if another write races it).
func TestReviewZeroLengthWriteAtEnd(t *testing.T) {
	root := t.TempDir()
	m := testManager(t, root, newMemStore())
	const size = 64 << 20
	if _, err := m.Create("v", size, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	// No Close: a panic inside writable.run leaves its RLock held (run does
	// not defer the unlock), so Close would deadlock after one.
	for _, c := range []struct {
		name string
		f    func() error
	}{
		{"WriteAt-mid", func() error { _, err := v.WriteAt(nil, 4096); return err }},
		{"WriteAt", func() error { _, err := v.WriteAt(nil, size); return err }},
		{"WriteZeroes", func() error { return v.WriteZeroes(size, 0) }},
	} {
		name, f := c.name, c.f
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("zero-length %s panicked: %v", name, r)
				}
			}()
			if err := f(); err != nil {
				t.Errorf("zero-length %s: %v", name, err)
			}
		}()
	}
	if st, _ := v.w.run(1, 1); st != stUnset {
		t.Errorf("a zero-length write changed block 1 to state %d", st)
	}
}
