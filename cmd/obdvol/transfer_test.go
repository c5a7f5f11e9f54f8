package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/tests/regtest"
)

// host is one --root, driven through the commands' run functions.
type host struct {
	t *testing.T
	g *globalOptions
}

func newHost(t *testing.T) *host {
	return &host{t, &globalOptions{Root: t.TempDir(), JSON: true, NoProgress: true, RemoteTimeout: time.Second}}
}

// run calls fn with a JSON output buffer and decodes the result.
func (h *host) run(fn func(out *bytes.Buffer) error) map[string]any {
	h.t.Helper()
	var out bytes.Buffer
	if err := fn(&out); err != nil {
		h.t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(out.Bytes(), &m)
	return m
}

func (h *host) export(ref string) []byte {
	h.t.Helper()
	f := filepath.Join(h.t.TempDir(), "out.img")
	h.run(func(out *bytes.Buffer) error {
		return runExport(context.Background(), out, h.g, &exportOptions{}, ref, f)
	})
	b, _ := os.ReadFile(f)
	return b
}

func writeImage(t *testing.T, size int, seed int64) string {
	b := make([]byte, size)
	r := rand.New(rand.NewSource(seed))
	for off := 0; off < size; off += 4096 {
		if r.Intn(4) > 0 {
			r.Read(b[off : off+2048])
		}
	}
	p := filepath.Join(t.TempDir(), "img")
	os.WriteFile(p, b, 0o600)
	return p
}

func num(m map[string]any, keys ...string) float64 {
	var v any = m
	for _, k := range keys {
		mm, _ := v.(map[string]any)
		v = mm[k]
	}
	f, _ := v.(float64)
	return f
}

// Push from host A, pull on host B and lazily on host C: identical data,
// incremental transfers move only the new layer, lazy reads survive a
// registry outage for local data and fail in bounded time for the rest.
func TestPushPullHosts(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, b, c := newHost(t), newHost(t), newHost(t)
	tx := &transferFlags{PlainHTTP: true, Concurrency: 4}
	a.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, a.g, &createOptions{Size: "16M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "g")
	})
	a.run(func(o *bytes.Buffer) error {
		return runImport(ctx, o, a.g, &importOptions{Offset: "0"}, "g", writeImage(t, 16<<20, 1))
	})
	a.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, a.g, "g@v1") })
	ref := reg.Addr + "/disks/g"
	a.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, a.g, &pushOptions{transferFlags: *tx}, "g@v1", ref+":v1")
	})
	b.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, b.g, &pullOptions{transferFlags: *tx}, ref+":v1", "g")
	})
	v1 := a.export("g@v1")
	if !bytes.Equal(b.export("g"), v1) {
		t.Fatal("host B's pull differs from host A")
	}
	// A 1 MiB change: the push and the pull move about that much.
	a.run(func(o *bytes.Buffer) error {
		return runImport(ctx, o, a.g, &importOptions{Offset: "4M"}, "g", writeImage(t, 1<<20, 2))
	})
	a.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, a.g, "g@v2") })
	res := a.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, a.g, &pushOptions{transferFlags: *tx}, "g@v2", ref+":v2")
	})
	if sent := num(res, "result", "bytes_moved"); sent > 1.1*(1<<20) || sent == 0 {
		t.Fatalf("incremental push sent %v bytes for a 1 MiB change", sent)
	}
	res = b.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, b.g, &pullOptions{transferFlags: *tx}, ref+":v2", "g")
	})
	if got := num(res, "result", "bytes_moved"); got > 1.1*(1<<20) || res["fast_forward"] != true {
		t.Fatalf("incremental pull moved %v bytes (fast-forward %v)", got, res["fast_forward"])
	}
	v2 := a.export("g@v2")
	if !bytes.Equal(b.export("g"), v2) {
		t.Fatal("host B's v2 differs")
	}
	// Lazy: two volumes of one snapshot on host C share one local copy.
	c.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, c.g, &pullOptions{transferFlags: *tx, Lazy: true}, ref+":v2", "g1")
	})
	c.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, c.g, &pullOptions{transferFlags: *tx, Lazy: true}, ref+":v2", "g2")
	})

	info := c.run(func(o *bytes.Buffer) error { return runInfo(ctx, o, c.g, "g1") })
	chain := info["volume"].(map[string]any)["chain"].([]any)
	var local, stored float64
	for _, l := range chain {
		local += l.(map[string]any)["local_bytes"].(float64)
		stored += l.(map[string]any)["stored_bytes"].(float64)
	}
	if local > stored/4 {
		t.Fatalf("lazy pull fetched %v of %v bytes before any read", local, stored)
	}
	if !bytes.Equal(c.export("g1"), v2) {
		t.Fatal("lazy volume g1 differs")
	}
	// Everything g2 needs is now local: it reads with the registry down.
	reg.Stop()
	if !bytes.Equal(c.export("g2"), v2) {
		t.Fatal("lazy volume g2 differs (or refetched with the registry down)")
	}
	// A fresh lazy volume on host D with the registry down: reads fail
	// within --remote-timeout, then work once it is back.
	reg.Restart()
	d := newHost(t)
	d.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, d.g, &pullOptions{transferFlags: *tx, Lazy: true}, ref+":v2", "g")
	})
	reg.Stop()
	start := time.Now()
	err := runExport(ctx, &bytes.Buffer{}, d.g, &exportOptions{}, "g", filepath.Join(t.TempDir(), "x"))
	if !errors.Is(err, repo.ErrUnavailable) || time.Since(start) > 10*time.Second {
		t.Fatalf("read with the registry down: %v after %v", err, time.Since(start))
	}
	reg.Restart()
	if !bytes.Equal(d.export("g"), v2) {
		t.Fatal("lazy volume differs after the registry came back")
	}
}

// A chunk corrupted inside the registry is caught by its checksum on a
// lazy read.
func TestLazyCorruptChunk(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, c := newHost(t), newHost(t)
	tx := &transferFlags{PlainHTTP: true}
	a.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, a.g, &createOptions{Size: "4M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "g")
	})
	a.run(func(o *bytes.Buffer) error {
		return runImport(ctx, o, a.g, &importOptions{Offset: "0"}, "g", writeImage(t, 4<<20, 3))
	})
	a.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, a.g, "g@v1") })
	a.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, a.g, &pushOptions{transferFlags: *tx}, "g@v1", reg.Addr+"/g:v1")
	})
	c.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, c.g, &pullOptions{transferFlags: *tx, Lazy: true}, reg.Addr+"/g:v1", "g")
	})
	rec, _ := volumeRecord(mustEnv(t, a.g), "g")
	path := reg.BlobPath(rec.Layers[0])
	raw, _ := os.ReadFile(path)
	raw[1000] ^= 0xff // inside the first chunk
	os.WriteFile(path, raw, 0o644)
	err := runExport(ctx, &bytes.Buffer{}, c.g, &exportOptions{}, "g", filepath.Join(t.TempDir(), "x"))
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("checksum")) {
		t.Fatalf("export over a corrupt chunk: %v", err)
	}
}

func mustEnv(t *testing.T, g *globalOptions) *env {
	e, err := openEnv(g)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.close)
	return e
}

// A volume snapshotted before any write has a chain with no layers: it
// pushes to a registry (with the empty blob its manifest names) and
// pulls back, eagerly and lazily, as a volume of its size reading zeros.
func TestPushPullNeverWrittenVolume(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, b := newHost(t), newHost(t)
	tx := &transferFlags{PlainHTTP: true, Concurrency: 4}
	a.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, a.g, &createOptions{Size: "1M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "e")
	})
	snap := a.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, a.g, "e@s1") })
	if snap["layer"] != nil {
		t.Fatalf("precondition: a snapshot of a volume never written made a layer: %v", snap)
	}
	ref := reg.Addr + "/disks/e:s1"
	a.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, a.g, &pushOptions{transferFlags: *tx}, "e@s1", ref)
	})
	for _, lazy := range []bool{false, true} {
		name := map[bool]string{false: "eager", true: "lazy"}[lazy]
		b.run(func(o *bytes.Buffer) error {
			return runPull(ctx, o, b.g, &pullOptions{transferFlags: *tx, Lazy: lazy}, ref, name)
		})
		if got := b.export(name); !bytes.Equal(got, make([]byte, 1<<20)) {
			t.Fatalf("%s pull of a volume never written: %d bytes, not 1 MiB of zeros", name, len(got))
		}
	}
}

// A pull that fast-forwards a volume whose ublk server died is refused,
// pointing to activate: the kernel keeps the device, with the old chain's
// data in a mounted filesystem's cache, for activate to reattach.
func TestPullFastForwardUnderDeadUblkDevice(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, b := newHost(t), newHost(t)
	tx := &transferFlags{PlainHTTP: true, Concurrency: 4}
	a.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, a.g, &createOptions{Size: "1M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "g")
	})
	ref := reg.Addr + "/disks/g"
	for i, snap := range []string{"v1", "v2"} {
		a.run(func(o *bytes.Buffer) error {
			return runImport(ctx, o, a.g, &importOptions{Offset: "0"}, "g", writeImage(t, 64<<10, int64(i+1)))
		})
		a.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, a.g, "g@"+snap) })
		a.run(func(o *bytes.Buffer) error {
			return runPush(ctx, o, a.g, &pushOptions{transferFlags: *tx}, "g@"+snap, ref+":"+snap)
		})
	}
	b.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, b.g, &pullOptions{transferFlags: *tx}, ref+":v1", "g")
	})
	e := mustEnv(t, b.g)
	if err := setDevice(e, "g", &metadata.Device{Kind: "ublk", Path: "/dev/ublkb3", PID: os.Getpid(), ID: 3}); err != nil {
		t.Fatal(err)
	}
	e.close()
	err := runPull(ctx, &bytes.Buffer{}, b.g, &pullOptions{transferFlags: *tx}, ref+":v2", "g")
	if err == nil || !strings.Contains(err.Error(), "obdvol activate g") {
		t.Fatalf("fast-forward under a dead ublk server's device: %v; want a refusal pointing to activate", err)
	}
	v1 := a.export("g@v1")
	if rec, _ := volumeRecord(mustEnv(t, b.g), "g"); rec.Device == nil || len(rec.Layers) != 1 {
		t.Fatalf("the refused pull changed the volume: %+v", rec)
	}
	e = mustEnv(t, b.g)
	if err := setDevice(e, "g", nil); err != nil {
		t.Fatal(err)
	}
	e.close()
	if !bytes.Equal(b.export("g"), v1) {
		t.Fatal("the refused pull changed the volume's data")
	}
}
