package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/obdvol/obdvol/tests/regtest"
)

// A record is held by one upload at a time (a second open, in this
// process or another, gets none), keeps the last location saved for the
// next open, reads as none when torn or of another target, and is gone
// once removed.
func TestUploadRecord(t *testing.T) {
	dir := t.TempDir()
	const target = "r:5000/disks/g@sha256:00"
	r, loc, err := openUploadRecord(dir, target)
	if err != nil || r == nil || loc != "" {
		t.Fatalf("first open: %v, %q, %v", r, loc, err)
	}
	if err := r.save(target, "http://r:5000/v2/disks/g/blobs/uploads/1?_state=a"); err != nil {
		t.Fatal(err)
	}
	if err := r.save(target, "http://r:5000/v2/disks/g/blobs/uploads/1?_state=b"); err != nil {
		t.Fatal(err)
	}
	if r2, _, err := openUploadRecord(dir, target); err != nil || r2 != nil {
		t.Fatalf("a held record opened again: %v, %v", r2, err)
	}
	if !hasUploadRecord(dir, target) || hasUploadRecord(dir, target+"1") {
		t.Fatal("hasUploadRecord")
	}
	r.close()
	r, loc, err = openUploadRecord(dir, target)
	if err != nil || r == nil || loc != "http://r:5000/v2/disks/g/blobs/uploads/1?_state=b" {
		t.Fatalf("reopened: %v, %q, %v", r, loc, err)
	}
	if got := r.location("r:5000/other@sha256:00"); got != "" {
		t.Fatalf("a record read for another target: %q", got)
	}
	os.WriteFile(r.f.Name(), []byte(`{"target":"r:5000/disks/g@sha256:00","loc`), 0o600)
	if got := r.location(target); got != "" {
		t.Fatalf("a torn record read as %q", got)
	}
	r.remove()
	if hasUploadRecord(dir, target) {
		t.Fatal("a removed record is still there")
	}
	if _, err := os.Stat(recordPath(dir, target)); !os.IsNotExist(err) {
		t.Fatalf("record file after remove: %v", err)
	}
}

// oneLayerWorld is a registry, a store holding a chain of one layer of
// about size bytes (seed), the target name:v1 and the layer.
func oneLayerWorld(t *testing.T, seed int64, size int, name string) (*regtest.Registry, *Store, *ChainConfig, *Target, ocispec.Descriptor) {
	reg := regtest.Start(t)
	a := newStore(t)
	cfg := chainOf(t, a, seed, size)
	return reg, a, cfg, target(t, reg.Addr+"/"+name+":v1", nil), layerDescriptors(cfg)[0]
}

// A record whose session the registry does not know (purged, or of
// another registry's run) costs nothing but a new session: the push
// succeeds, resuming nothing, and the record is gone after it.
func TestChunkedUploadStaleRecord(t *testing.T) {
	ctx := context.Background()
	reg, a, cfg, tg, d := oneLayerWorld(t, 44, 1<<20, "stale")
	r, _, err := openUploadRecord(a.UploadsDir(), recordKey(tg.Repo, d))
	if err != nil || r == nil {
		t.Fatal(r, err)
	}
	r.save(recordKey(tg.Repo, d), "http://"+reg.Addr+"/v2/stale/blobs/uploads/0b6f2f07-0000-4000-8000-000000000000?_state=x")
	r.close()
	res, err := Push(ctx, a, tg, cfg, PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.BlobsChunked != 1 || res.BytesResumed != 0 {
		t.Fatalf("push over a stale record: %+v", res)
	}
	if hasUploadRecord(a.UploadsDir(), recordKey(tg.Repo, d)) {
		t.Fatal("the record outlived the upload")
	}
	pullsBack(t, a, reg.Addr+"/stale:v1", cfg)
}

// Whatever a record file holds, reading it never panics, and a location
// comes back only from a record of that target.
func FuzzUploadRecord(f *testing.F) {
	f.Add([]byte(`{"target":"t","location":"http://r/v2/x"}`))
	f.Add([]byte(`{"target":"t","location":`))
	f.Add([]byte{0xff, 0})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		r, _, err := openUploadRecord(dir, "t")
		if err != nil || r == nil {
			t.Fatal(r, err)
		}
		defer r.close()
		r.f.Truncate(0)
		r.f.WriteAt(b, 0)
		loc := r.location("t")
		if loc != "" && !json.Valid(b) {
			t.Fatalf("location %q from invalid JSON %q", loc, b)
		}
	})
}

// blockingReader serves data and, from offset at on, blocks (telling
// blocked once) until ctx ends.
type blockingReader struct {
	data    []byte
	off, at int64
	ctx     context.Context
	blocked chan struct{}
}

func (r *blockingReader) Read(p []byte) (int, error) {
	if r.off >= r.at {
		close(r.blocked)
		<-r.ctx.Done()
		return 0, r.ctx.Err()
	}
	n := copy(p, r.data[r.off:min(int64(len(r.data)), r.at)])
	r.off += int64(n)
	return n, nil
}

func (r *blockingReader) Close() error { return nil }

// An upload stopped between chunks (its context ended while it read the
// next chunk; on disk the same as a kill there) keeps its session and
// record; the next upload of the blob asks the session where it stands
// and sends only the rest, and the registry holds the exact blob.
// (docker-registry 2.8 cancels a session asked at an older state token,
// so a stop while a chunk was in flight costs a new session there: see
// TestChunkedUploadStaleRecord.)
func TestChunkedUploadResumesRecordedSession(t *testing.T) {
	ctx := context.Background()
	reg, a, _, tg, d := oneLayerWorld(t, 45, 3<<20, "resume")
	data, err := os.ReadFile(mustPath(a, d.Digest.String()))
	if err != nil {
		t.Fatal(err)
	}
	chunk := func() int64 { return 256 << 10 }
	never := func(int64) bool { return false }

	cctx, cancel := context.WithCancel(ctx)
	br := &blockingReader{data: data, at: 1 << 20, ctx: cctx, blocked: make(chan struct{})}
	u, err := newChunkUpload(tg.Repo, d, func() (io.ReadCloser, error) { return br, nil }, chunk, never)
	if err != nil {
		t.Fatal(err)
	}
	u.records = a.UploadsDir()
	done := make(chan error, 1)
	go func() { done <- u.run(cctx) }()
	<-br.blocked
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped upload: %v", err)
	}
	if !hasUploadRecord(a.UploadsDir(), recordKey(tg.Repo, d)) {
		t.Fatal("a stopped upload left no record")
	}

	var resumed int64
	u, err = newChunkUpload(tg.Repo, d, func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }, chunk, never)
	if err != nil {
		t.Fatal(err)
	}
	u.records, u.resumed = a.UploadsDir(), func(n int64) { resumed = n }
	if err := u.run(ctx); err != nil {
		t.Fatal(err)
	}
	if resumed != 1<<20 {
		t.Fatalf("resumed at %d, want %d", resumed, 1<<20)
	}
	registryHolds(t, reg, d.Digest.String(), data)
	if hasUploadRecord(a.UploadsDir(), recordKey(tg.Repo, d)) {
		t.Fatal("the record outlived the upload")
	}
}

// Whatever a .chunk file holds, loading it never panics and gives 0 or
// a chunk size a push may use, for that registry only.
func FuzzLearnedChunk(f *testing.F) {
	f.Add([]byte(`{"registry":"r:5000","chunk_size":16777216}`))
	f.Add([]byte(`{"registry":"r:5000","chunk_size":1}`))
	f.Add([]byte(`{"registry":"other","chunk_size":16777216}`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(chunkPath(dir, "r:5000"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if n := loadChunkSize(dir, "r:5000"); n != 0 && (n < MinChunkSize || n > maxChunkSize) {
			t.Fatalf("chunk size %d from %q", n, b)
		}
	})
}

// gc (CleanLeftovers) removes the records no push holds, and keeps a
// held one.
func TestUploadRecordLeftovers(t *testing.T) {
	s := newStore(t)
	held, _, err := openUploadRecord(s.UploadsDir(), "r/a@sha256:01")
	if err != nil || held == nil {
		t.Fatal(held, err)
	}
	defer held.close()
	held.save("r/a@sha256:01", "http://r/v2/a/blobs/uploads/1")
	left, _, err := openUploadRecord(s.UploadsDir(), "r/a@sha256:02")
	if err != nil || left == nil {
		t.Fatal(left, err)
	}
	left.save("r/a@sha256:02", "http://r/v2/a/blobs/uploads/2")
	left.close()
	paths, _, err := s.CleanLeftovers(false)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 1 || paths[0] != recordPath(s.UploadsDir(), "r/a@sha256:02") {
		t.Fatalf("removed %v", paths)
	}
	if !hasUploadRecord(s.UploadsDir(), "r/a@sha256:01") {
		t.Fatal("gc removed a held record")
	}
}
