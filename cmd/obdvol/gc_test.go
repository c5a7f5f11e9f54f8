package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/tests/regtest"
)

// obdvol gc runs (as another process would: its own env on the same
// root) while a pull has fetched its layers and not yet recorded them:
// the pull's lease keeps them, the pull succeeds and the volume reads
// back byte-exact.
func TestGCDuringPull(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, b := newHost(t), newHost(t)
	tx := &transferFlags{PlainHTTP: true}
	a.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, a.g, &createOptions{Size: "4M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "g")
	})
	a.run(func(o *bytes.Buffer) error {
		return runImport(ctx, o, a.g, &importOptions{Offset: "0"}, "g", writeImage(t, 4<<20, 7))
	})
	a.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, a.g, "g@v1") })
	a.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, a.g, &pushOptions{transferFlags: *tx}, "g@v1", reg.Addr+"/g:v1")
	})
	want := a.export("g@v1")

	var gcOut map[string]any
	testHookBeforeAdopt = func() {
		gcOut = b.run(func(o *bytes.Buffer) error { return runGC(ctx, o, b.g, &gcOptions{}) })
	}
	defer func() { testHookBeforeAdopt = nil }()
	b.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, b.g, &pullOptions{transferFlags: *tx}, reg.Addr+"/g:v1", "g")
	})
	testHookBeforeAdopt = nil
	if gcOut == nil {
		t.Fatal("gc did not run during the pull")
	}
	if blobs, _ := gcOut["blobs"].([]any); len(blobs) != 0 {
		t.Errorf("gc removed %v during the pull", blobs)
	}
	if !bytes.Equal(b.export("g"), want) {
		t.Fatal("pulled volume differs")
	}
	// And once more after a later gc, from a fresh process's view.
	b.run(func(o *bytes.Buffer) error { return runGC(ctx, o, b.g, &gcOptions{}) })
	if !bytes.Equal(b.export("g"), want) {
		t.Fatal("pulled volume differs after gc")
	}
}

// gc --cache-max with a bad size fails as a usage error before removing
// anything.
func TestGCBadFlagRemovesNothing(t *testing.T) {
	ctx := context.Background()
	h := newHost(t)
	e := mustEnv(t, h.g)
	d, _, err := e.store.Ingest(bytes.NewReader([]byte("unreferenced")), "")
	if err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(h.g.Root, "tmp", "blob-dead")
	os.WriteFile(dead, []byte("left by a killed seal"), 0o600)
	err = runGC(ctx, &bytes.Buffer{}, h.g, &gcOptions{CacheMax: "10X"})
	var ue usageError
	if !errors.As(err, &ue) {
		t.Fatalf("gc --cache-max 10X = %v, want a usage error", err)
	}
	if !e.store.Has(d) {
		t.Fatal("gc removed a blob before failing on its flag")
	}
	if _, err := os.Stat(dead); err != nil {
		t.Fatalf("gc removed a temp file before failing on its flag: %v", err)
	}
	out := h.run(func(o *bytes.Buffer) error { return runGC(ctx, o, h.g, &gcOptions{CacheMax: "10M"}) })
	if e.store.Has(d) {
		t.Fatalf("gc kept an unreferenced blob: %v", out)
	}
	if _, err := os.Stat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("gc kept a dead writer's temp file: %v %v", err, out)
	}
}

// Any command run with --lazy-cache-max bounds lazily fetched data after
// it; it must not remove the lazy files of a pull in flight (leased, not
// yet referenced): only gc removes lazy files, and it honours leases.
func TestLazyCacheMaxSparesPullInFlight(t *testing.T) {
	ctx := context.Background()
	h := newHost(t)
	e := mustEnv(t, h.g)
	d := "sha256:" + strings.Repeat("ab", 32)
	lease, err := e.mgr.Lease("pull x", d)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Release()
	lb, err := e.store.OpenLazy(d, 1<<20, nil, repo.LazyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lb.Close()
	lazyFile := filepath.Join(e.store.PartialDir(), d[len("sha256:"):]+".lazy")
	if _, err := os.Stat(lazyFile); err != nil {
		t.Fatal(err)
	}
	if _, err := gcLazy(e, &gcOptions{CacheMax: "0"}); err != nil {
		t.Fatal(err)
	}
	h.run(func(o *bytes.Buffer) error { return runGC(ctx, o, h.g, &gcOptions{CacheMax: "0"}) })
	if _, err := os.Stat(lazyFile); err != nil {
		t.Fatalf("the lazy file of a pull in flight was removed: %v", err)
	}
	lease.Release()
	out := h.run(func(o *bytes.Buffer) error { return runGC(ctx, o, h.g, &gcOptions{}) })
	if _, err := os.Stat(lazyFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("gc kept an unreferenced, unleased lazy file: %v %v", err, out)
	}
}
