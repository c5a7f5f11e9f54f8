package volume

import (
	"bytes"
	"context"
	"testing"

	"github.com/obdvol/obdvol/metadata"
)

// A pull that fast-forwards a volume whose last seal was interrupted
// (Frozen recorded): AdoptChain's openLocked finishes that seal (a new
// local layer, snapshot s1, Frozen cleared), then AdoptChain writes back
// the record it read BEFORE that: Frozen/FrozenSnapshot come back, and
// the freshly sealed layer is dropped from the chain. The next Open tries
// to "finish" the seal again, an empty writable dir, and snapshot s1
// exists already: the volume no longer opens (and the writes sealed into
// s1 silently left the volume).
func TestReviewAdoptAfterInterruptedSealBricksVolume(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	m := testManager(t, root, newMemStore())
	for _, n := range []string{"src", "v"} {
		if _, err := m.Create(n, 64*4096, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	v, _ := m.Open("v")
	v.WriteAt(bytes.Repeat([]byte{'a'}, 4096), 0)
	if _, err := v.Snapshot(ctx, "s0"); err != nil {
		t.Fatal(err)
	}
	base := v.Record().Layers
	src, _ := m.Open("src")
	src.WriteAt(bytes.Repeat([]byte{'r'}, 4096), 4096)
	src.Snapshot(ctx, "r")
	remote := src.Record().Layers[0]
	src.Close()

	v.WriteAt(bytes.Repeat([]byte{'b'}, 4096), 8192)
	v.sealMu.Lock()
	if _, frozen, err := v.freeze("s1"); err != nil || !frozen {
		t.Fatalf("freeze: %v %v", frozen, err)
	}
	v.sealMu.Unlock()
	v.frozen.close() // crash mid-seal
	v.frozen = nil
	v.Close()

	var layers []metadata.Layer
	m.cat.View(func(tx *metadata.Tx) error {
		for _, d := range append(append([]string(nil), base...), remote) {
			l, err := tx.Layer(d)
			if err != nil {
				return err
			}
			layers = append(layers, *l)
		}
		return nil
	})
	spec := ChainSpec{Size: 64 * 4096, BlockSize: 4096, ChunkSize: 64 << 10, Codec: "zstd", Layers: layers,
		Snapshot: "pulled", Origin: "oci:x"}
	_, aerr := m.AdoptChain("v", spec)
	t.Logf("AdoptChain: %v", aerr)
	v2, err := m.Open("v")
	if err != nil {
		t.Fatalf("volume no longer opens after the pull: %v", err)
	}
	defer v2.Close()
	if rec := v2.Record(); rec.Frozen != 0 {
		t.Fatalf("stale Frozen=%d restored", rec.Frozen)
	}
}
