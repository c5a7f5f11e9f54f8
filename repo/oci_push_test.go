package repo

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/obdvol/obdvol/tests/regtest"
)

// Cross-repository mounts come only from repositories that hold the blob
// (a HEAD there first), so a failed mount leaves no upload session behind;
// names of other registries are ignored; the rest is uploaded.
func TestPushMountOnlyWhatSourceHolds(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a := newStore(t)
	cfg := chainOf(t, a, 31, 1<<20, 512<<10)
	base := *cfg
	base.Layers = cfg.Layers[:1]
	if _, err := Push(ctx, a, target(t, reg.Addr+"/golden:base", nil), &base, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	prog := &recProgress{}
	ct := &countingTransport{}
	res, err := Push(ctx, a, target(t, reg.Addr+"/team/vm:v1", ct), cfg, PushOptions{Progress: prog,
		MountFrom: []string{"empty", "registry.example.com/golden", reg.Addr + "/golden"}})
	if err != nil {
		t.Fatal(err)
	}
	prog.check(t)
	if res.BlobsMounted != 1 || res.BlobsMoved != 2 || res.BytesSkipped != cfg.Layers[0].Size || prog.starts != 2 {
		t.Fatalf("push: %+v, %d progress starts", res, prog.starts)
	}
	if sent := ct.sent.Load(); sent > 512<<10+16<<10 {
		t.Fatalf("%d bytes sent, the mounted layer is 1 MiB and the new one 512 KiB", sent)
	}
	uploads := filepath.Join(reg.Dir, "storage/docker/registry/v2/repositories/team/vm/_uploads")
	if ents, _ := os.ReadDir(uploads); len(ents) != 0 {
		t.Fatalf("%d upload sessions left in the registry", len(ents))
	}
	pullsBack(t, a, reg.Addr+"/team/vm:v1", cfg)
}

// Pushing a snapshot again moves nothing and gives the same manifest, to a
// registry and to a layout (the manifest push tolerates what exists).
func TestPushAgain(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a := newStore(t)
	cfg := chainOf(t, a, 32, 300000, 200000)
	for _, ref := range []string{reg.Addr + "/again:v1", "oci:" + t.TempDir() + ":v1"} {
		r1, err := Push(ctx, a, target(t, ref, nil), cfg, PushOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r2, err := Push(ctx, a, target(t, ref, nil), cfg, PushOptions{})
		if err != nil {
			t.Fatalf("second push to %s: %v", ref, err)
		}
		if r2.BlobsMoved != 0 || r2.BytesMoved != 0 || r2.BlobsSkipped != 3 || r2.Manifest != r1.Manifest {
			t.Fatalf("second push to %s: %+v, first %+v", ref, r2, r1)
		}
		r3, err := Push(ctx, a, target(t, ref[:len(ref)-3]+"@"+r1.Manifest, nil), cfg, PushOptions{})
		if err != nil || r3.Manifest != r1.Manifest {
			t.Fatalf("push to %s by digest: %+v, %v", ref, r3, err)
		}
	}
}

// A snapshot with no layers (an empty volume, snapshotted before any
// write) is pushed with every blob its manifest references, among them
// the empty "{}" blob OCI 1.1 puts in place of the missing layers, and
// pulls back as a chain of no layers: to a registry, which refuses a
// manifest naming a blob it lacks, and to a layout.
func TestPushEmptyChain(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a := newStore(t)
	cfg := chainOf(t, a, 33)
	if len(cfg.Layers) != 0 {
		t.Fatalf("precondition: a chain of %d layers", len(cfg.Layers))
	}
	for _, ref := range []string{reg.Addr + "/empty:v1", "oci:" + t.TempDir() + ":v1"} {
		res, err := Push(ctx, a, target(t, ref, nil), cfg, PushOptions{})
		if err != nil {
			t.Fatalf("push of a chain with no layers to %s: %v", ref, err)
		}
		b := newStore(t)
		p, err := Pull(ctx, b, target(t, ref, nil), PullOptions{})
		if err != nil {
			t.Fatalf("pull of a chain with no layers from %s: %v", ref, err)
		}
		if p.Manifest != res.Manifest || len(p.Layers) != 0 || len(p.Config.Layers) != 0 || p.Config.VirtualSize != cfg.VirtualSize {
			t.Fatalf("pull from %s: %+v, pushed %+v", ref, p, res)
		}
		again, err := Push(ctx, a, target(t, ref, nil), cfg, PushOptions{})
		if err != nil || again.Manifest != res.Manifest || again.BlobsMoved != 0 {
			t.Fatalf("second push to %s: %+v, %v", ref, again, err)
		}
	}
}
