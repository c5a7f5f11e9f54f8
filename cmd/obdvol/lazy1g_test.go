package main

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/obdvol/obdvol/tests/regtest"
)

// A lazy pull of a 1 GiB snapshot moves a small, bounded number of bytes
// (manifest, config, trailers and indexes), not data.
func TestLazyPull1GiB(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, c := newHost(t), newHost(t)
	tx := &transferFlags{PlainHTTP: true}
	a.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, a.g, &createOptions{Size: "1G", Codec: "s2", BlockSize: 4096, ChunkSize: "64K"}, "g")
	})
	// 64 MiB of data spread over the 1 GiB disk.
	img := filepath.Join(t.TempDir(), "part")
	b := make([]byte, 1<<20)
	rand.New(rand.NewSource(8)).Read(b)
	os.WriteFile(img, b, 0o600)
	for i := 0; i < 64; i++ {
		off := formatSize(uint64(i) * 16 << 20)
		a.run(func(o *bytes.Buffer) error { return runImport(ctx, o, a.g, &importOptions{Offset: off}, "g", img) })
	}
	a.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, a.g, "g@v1") })
	a.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, a.g, &pushOptions{transferFlags: *tx}, "g@v1", reg.Addr+"/g:v1")
	})
	c.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, c.g, &pullOptions{transferFlags: *tx, Lazy: true}, reg.Addr+"/g:v1", "g")
	})
	e := mustEnv(t, c.g)
	rec, _ := volumeRecord(e, "g")
	var local int64
	for _, d := range rec.Layers {
		local += e.store.LocalBytes(d)
	}
	if local > 256<<10 {
		t.Fatalf("lazy pull of a 1 GiB snapshot (64 MiB of data) fetched %d bytes", local)
	}
	got := make([]byte, 1<<20)
	v, err := e.mgr.Open("g")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := v.ReadAt(got, 32<<20); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("lazy read: %v", err)
	}
}
