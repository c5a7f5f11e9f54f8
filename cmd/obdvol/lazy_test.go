package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/obdvol/obdvol/tests/regtest"
)

// Lazy volumes work with push (a lazy layer streams from its source when
// the target lacks it) and gc --cache-max evicts fetched pages, which are
// fetched again when read.
func TestLazyPushAndEvict(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, c := newHost(t), newHost(t)
	tx := &transferFlags{PlainHTTP: true}
	a.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, a.g, &createOptions{Size: "8M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "g")
	})
	a.run(func(o *bytes.Buffer) error {
		return runImport(ctx, o, a.g, &importOptions{Offset: "0"}, "g", writeImage(t, 8<<20, 5))
	})
	a.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, a.g, "g@v1") })
	a.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, a.g, &pushOptions{transferFlags: *tx}, "g@v1", reg.Addr+"/src/g:v1")
	})
	want := a.export("g@v1")
	c.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, c.g, &pullOptions{transferFlags: *tx, Lazy: true}, reg.Addr+"/src/g:v1", "g")
	})
	// Push from the lazy host to another repository: streamed from the source.
	res := c.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, c.g, &pushOptions{transferFlags: *tx}, "g@v1", reg.Addr+"/copy/g:v1")
	})
	if num(res, "result", "bytes_moved") < 1<<20 {
		t.Fatalf("push of a lazy layer to a new repository moved %v bytes", num(res, "result", "bytes_moved"))
	}
	// And to a repository that has it: skipped.
	res = c.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, c.g, &pushOptions{transferFlags: *tx}, "g@v1", reg.Addr+"/src/g:v1")
	})
	if num(res, "result", "bytes_moved") > 4096 {
		t.Fatalf("push of a lazy layer the target has moved %v bytes", num(res, "result", "bytes_moved"))
	}
	d := newHost(t)
	d.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, d.g, &pullOptions{transferFlags: *tx}, reg.Addr+"/copy/g:v1", "g")
	})
	if !bytes.Equal(d.export("g"), want) {
		t.Fatal("copy pushed from a lazy host differs")
	}
	// Read everything, then bound the cache.
	if !bytes.Equal(c.export("g"), want) {
		t.Fatal("lazy export differs")
	}
	e := mustEnv(t, c.g)
	rec, _ := volumeRecord(e, "g")
	before := e.store.LocalBytes(rec.Layers[0])
	res = c.run(func(o *bytes.Buffer) error { return runGC(ctx, o, c.g, &gcOptions{CacheMax: "1M"}) })
	after := e.store.LocalBytes(rec.Layers[0])
	if num(res, "lazy_bytes_freed") == 0 || after > 1<<20+64<<10 || after >= before {
		t.Fatalf("gc --cache-max 1M: %v freed, local %d -> %d", num(res, "lazy_bytes_freed"), before, after)
	}
	if !bytes.Equal(c.export("g"), want) {
		t.Fatal("lazy export after eviction differs")
	}
}
