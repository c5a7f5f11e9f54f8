package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

// partsKnob reads a size from the environment (make parts-large sets the
// issue's 4 GiB), else def.
func partsKnob(t *testing.T, name, def string) uint64 {
	v := os.Getenv(name)
	if v == "" {
		v = def
	}
	n, err := parseSize(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}

// sparseImage writes a size-byte image, sparse but incompressible: the
// first half of every 1 MiB is random, the rest a hole, so the disk
// takes half its size and the layer about as much.
func sparseImage(t *testing.T, size uint64, seed int64) string {
	p := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewSource(seed))
	buf := make([]byte, 512<<10)
	for off := uint64(0); off < size; off += 1 << 20 {
		r.Read(buf)
		if _, err := f.WriteAt(buf[:min(uint64(len(buf)), size-off)], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// exportHash exports ref of h and returns its sha256 (the file is
// removed: the large run exports several GiB).
func (h *host) exportHash(ref string) string {
	h.t.Helper()
	f := filepath.Join(h.t.TempDir(), "out.img")
	h.run(func(out *bytes.Buffer) error {
		return runExport(context.Background(), out, h.g, &exportOptions{}, ref, f)
	})
	defer os.Remove(f)
	r, err := os.Open(f)
	if err != nil {
		h.t.Fatal(err)
	}
	defer r.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, r); err != nil {
		h.t.Fatal(err)
	}
	return string(sum.Sum(nil))
}

// A snapshot whose layer is larger than the registry's request limit:
// push --max-blob sends it in parts smaller than the limit (a proxy
// answers 413 above it), and it comes back byte-exact on another host
// eagerly and on a third lazily, whose reads (later processes: the
// catalogue's record of the parts, remoteResolver) fetch ranges of the
// parts. OBDVOL_PARTS_SIZE, OBDVOL_PARTS_MAX_BLOB and OBDVOL_PARTS_LIMIT
// scale it (make parts-large).
func TestPushPullParts(t *testing.T) {
	ctx := context.Background()
	size := partsKnob(t, "OBDVOL_PARTS_SIZE", "6M")
	maxBlob := partsKnob(t, "OBDVOL_PARTS_MAX_BLOB", "256K")
	limit := partsKnob(t, "OBDVOL_PARTS_LIMIT", "320K")
	reg := regtest.Start(t)
	fp := faultproxy.Start(t, reg.Addr)
	fp.Set(faultproxy.Faults{MaxRequestBody: int64(limit)})
	a, b, c := newHost(t), newHost(t), newHost(t)
	tx := &transferFlags{PlainHTTP: true, Concurrency: 4}
	a.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, a.g, &createOptions{Size: strconv.FormatUint(size, 10), Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "g")
	})
	a.run(func(o *bytes.Buffer) error {
		return runImport(ctx, o, a.g, &importOptions{Offset: "0"}, "g", sparseImage(t, size, 7))
	})
	a.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, a.g, "g@v1") })
	ref := fp.Addr + "/disks/g:v1"
	res := a.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, a.g, &pushOptions{transferFlags: *tx, MaxBlob: strconv.FormatUint(maxBlob, 10)}, "g@v1", ref)
	})
	rec, err := volumeRecord(mustEnv(t, a.g), "g")
	if err != nil || len(rec.Layers) != 1 {
		t.Fatalf("volume g: %+v, %v", rec, err)
	}
	layer := rec.Layers[0]
	var stored uint64
	mustEnv(t, a.g).cat.View(func(tx *metadata.Tx) error {
		l, err := tx.Layer(layer)
		if err == nil {
			stored = l.StoredBytes
		}
		return err
	})
	// Parts under the limit go up whole; parts over it (the run:
	// 256M parts through a 100 MB limit) by the 413 fallback to chunks.
	chunked := maxBlob > limit
	if stored <= limit || num(res, "result", "layers_split") != 1 || (fp.Stats().TooLarge != 0) != chunked ||
		(num(res, "result", "blobs_chunked") > 0) != chunked {
		t.Fatalf("push of a %d-byte layer in parts of %d through a %d-byte limit: %v, %+v", stored, maxBlob, limit, res, fp.Stats())
	}
	t.Logf("push: layer of %d bytes in %v blobs of at most %d bytes, %.2fs", stored, num(res, "result", "blobs_moved")-1, maxBlob, num(res, "seconds"))
	want := a.exportHash("g@v1")

	res = b.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, b.g, &pullOptions{transferFlags: *tx}, ref, "g")
	})
	t.Logf("eager pull: %v bytes, %.2fs", num(res, "result", "bytes_moved"), num(res, "result", "duration_ns")/1e9)
	if b.exportHash("g") != want {
		t.Fatal("host B's eager pull differs from host A")
	}

	c.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, c.g, &pullOptions{transferFlags: *tx, Lazy: true}, ref, "g")
	})
	var parts int
	mustEnv(t, c.g).cat.View(func(tx *metadata.Tx) error {
		l, err := tx.Layer(layer)
		if err == nil && l.State == metadata.LayerRemote {
			parts = len(l.Parts["http://"+fp.Addr+"/disks/g"])
		}
		return err
	})
	if n := int((stored + maxBlob - 1) / maxBlob); parts != n {
		t.Fatalf("host C records %d parts of the remote layer, want %d", parts, n)
	}
	info := c.run(func(o *bytes.Buffer) error { return runInfo(ctx, o, c.g, "g") })
	if chain, _ := info["volume"].(map[string]any)["chain"].([]any); len(chain) != 1 || num(chain[0].(map[string]any), "parts") != float64(parts) {
		t.Fatalf("info on host C does not show the layer's %d parts: %v", parts, info)
	}
	// Host D, lazy too, pushes its snapshot to another repository of the
	// registry: the recorded parts are mounted, nothing of the layer is
	// read (it would be fetched to be hashed).
	d := newHost(t)
	d.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, d.g, &pullOptions{transferFlags: *tx, Lazy: true}, ref, "g")
	})
	gets := fp.Stats().BlobGets
	res = d.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, d.g, &pushOptions{transferFlags: *tx, MaxBlob: strconv.FormatUint(maxBlob, 10),
			MountFrom: []string{"disks/g"}}, "g@v1", fp.Addr+"/other/g:v1")
	})
	if num(res, "result", "blobs_mounted") != float64(parts) || fp.Stats().BlobGets != gets {
		t.Fatalf("push of a lazy layer in parts: %v; %d blob reads", res, fp.Stats().BlobGets-gets)
	}
	gets = fp.Stats().RangeRequests
	start := time.Now()
	if c.exportHash("g") != want {
		t.Fatal("host C's lazy volume differs from host A")
	}
	if fp.Stats().RangeRequests == gets {
		t.Fatal("host C's lazy reads made no range requests")
	}
	t.Logf("lazy export: %d range requests, %.2fs", fp.Stats().RangeRequests-gets, time.Since(start).Seconds())
}

func TestParseMaxBlob(t *testing.T) {
	for in, want := range map[string]int64{"": 1 << 30, "0": 0, "64K": 64 << 10, "256M": 256 << 20} {
		if got, err := parseMaxBlob(in); err != nil || got != want {
			t.Errorf("parseMaxBlob(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"1K", "x", "-1"} {
		if _, err := parseMaxBlob(in); err == nil {
			t.Errorf("parseMaxBlob(%q) accepted", in)
		}
	}
}

// killedPush makes an 8 MiB snapshot g@v1 on a new host (seed: its
// bytes), pushes it with args through a proxy adding latency to every
// request of a fresh registry, and SIGKILLs the push once reached(reg)
// says far enough (what: for the failure). It returns the host, the
// snapshot's bytes, the proxy and the registry.
func killedPush(t *testing.T, seed int64, latency time.Duration, args []string, what string,
	reached func(reg *regtest.Registry) bool) (*cliHost, []byte, *faultproxy.Proxy, *regtest.Registry) {
	t.Helper()
	reg := regtest.Start(t)
	fp := faultproxy.Start(t, reg.Addr)
	h := newCLI(t)
	h.ok("create", "g", "--size", "8M", "--codec", "none")
	h.ok("import", "g", writeImage(t, 8<<20, seed))
	h.ok("snapshot", "g@v1")
	want := h.exportFile("g@v1")
	fp.Set(faultproxy.Faults{Latency: latency})
	cmd := h.command(context.Background(), append(args, "g@v1", fp.Addr+"/disks/g:v1")...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); !reached(reg); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("the push did not reach %s in a minute", what)
		}
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Fatalf("the push was not killed: it finished before reaching %s", what)
	}
	fp.Set(faultproxy.Faults{})
	return h, want, fp, reg
}

// A push killed (SIGKILL, no cleanup) while its parts are in flight
// resumes in a new process: the parts the registry finished are skipped,
// the rest sent, and the artifact pulls byte-exact. The registry's own
// storage says which blobs it finished when the kill came.
func TestPushKilledMidPartsResumes(t *testing.T) {
	finished := func(reg *regtest.Registry) int {
		m, _ := filepath.Glob(filepath.Join(reg.Dir, "storage", "docker", "registry", "v2", "blobs", "sha256", "*", "*", "data"))
		return len(m)
	}
	// 100 ms a request: a part costs a few (start the upload, send it,
	// check it), so the kill comes with parts done and parts in flight.
	args := []string{"push", "--plain-http", "--max-blob", "256K", "--concurrency", "2"}
	h, want, fp, reg := killedPush(t, 31, 100*time.Millisecond, args, "4 finished blobs", func(r *regtest.Registry) bool { return finished(r) >= 4 })
	done := finished(reg)
	ref := fp.Addr + "/disks/g:v1"
	res := h.json(append(args, "g@v1", ref)...)
	moved, skipped := jint(t, res, "result", "blobs_moved"), jint(t, res, "result", "blobs_skipped")
	// About 6 MiB stored, in parts of 256K: some 25 blobs with the
	// config, of which the kill left done.
	if skipped < int64(done) || jint(t, res, "result", "layers_split") != 1 || moved+skipped < 16 || moved == 0 {
		t.Fatalf("push after a kill with %d blobs in the registry: %v", done, res)
	}
	t.Logf("killed with %d blobs finished; the second push skipped %d, sent %d", done, skipped, moved)
	b := newCLI(t)
	b.ok("pull", "--plain-http", ref, "g")
	b.wantDisk("g", want)
}
