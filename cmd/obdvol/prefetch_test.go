package main

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/obdvol/obdvol/tests/regtest"
)

// A prefetch list recorded while serving travels with the pushed snapshot
// and is fetched by a lazy pull before it returns: those ranges then read
// with the registry gone.
func TestPrefetchList(t *testing.T) {
	needTool(t, "qemu-io")
	ctx := context.Background()
	reg := regtest.Start(t)
	a, c := newHost(t), newHost(t)
	tx := &transferFlags{PlainHTTP: true}
	a.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, a.g, &createOptions{Size: "16M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "g")
	})
	a.run(func(o *bytes.Buffer) error {
		return runImport(ctx, o, a.g, &importOptions{Offset: "0"}, "g", writeImage(t, 16<<20, 6))
	})
	a.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, a.g, "g@v1") })
	list := filepath.Join(t.TempDir(), "prefetch.json")
	func() {
		sctx, cancel := context.WithCancel(ctx)
		ready := make(chan []string, 1)
		done := make(chan error, 1)
		go func() {
			done <- runServe(sctx, &bytes.Buffer{}, a.g, &serveOptions{NBD: "unix:" + filepath.Join(t.TempDir(), "s"), RecordPrefetch: list, Foreground: true}, []string{"g"}, ready)
		}()
		uri := (<-ready)[0]
		tool(t, "qemu-io", "-f", "raw", "-r", "-c", "read 5M 1M", "-c", "read 12M 64k", uri)
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}()
	a.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, a.g, &pushOptions{transferFlags: *tx, Prefetch: list}, "g@v1", reg.Addr+"/g:v1")
	})
	res := c.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, c.g, &pullOptions{transferFlags: *tx, Lazy: true}, reg.Addr+"/g:v1", "g")
	})
	if p := num(res, "prefetched_bytes"); p < 1<<20 || p > 2<<20 {
		t.Fatalf("lazy pull prefetched %v bytes, want the 1.06 MiB that was read", p)
	}
	reg.Stop()
	want := a.export("g@v1")
	e := mustEnv(t, c.g)
	v, err := e.mgr.Open("g")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	got := make([]byte, 1<<20)
	if _, err := v.ReadAt(got, 5<<20); err != nil || !bytes.Equal(got, want[5<<20:6<<20]) {
		t.Fatalf("prefetched range with the registry down: %v", err)
	}
}
