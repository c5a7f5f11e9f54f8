package repo

import (
	"context"
	"encoding/json"
	"os"
	"testing"

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

// A record whose session the registry does not know (purged, or of
// another registry's run) costs nothing but a new session: the push
// succeeds, resuming nothing, and the record is gone after it.
func TestChunkedUploadStaleRecord(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a := newStore(t)
	cfg := chainOf(t, a, 44, 1<<20)
	tg := target(t, reg.Addr+"/stale:v1", nil)
	d := layerDescriptors(cfg)[0]
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
	b := newStore(t)
	if _, err := Pull(ctx, b, target(t, reg.Addr+"/stale:v1", nil), PullOptions{}); err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, a, b, cfg)
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
