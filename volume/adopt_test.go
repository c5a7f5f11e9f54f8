package volume_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
)

func specOf(t *testing.T, m *volume.Manager, vol, snap string) volume.ChainSpec {
	t.Helper()
	s, err := m.SnapshotChain(vol, snap)
	if err != nil {
		t.Fatal(err)
	}
	spec := volume.ChainSpec{Size: s.Size, BlockSize: 4096, ChunkSize: 64 << 10, Codec: "zstd", Snapshot: snap, Origin: "oci:x:" + snap}
	m.Catalog().View(func(tx *metadata.Tx) error {
		for _, d := range s.Layers {
			l, err := tx.Layer(d)
			if err != nil {
				return err
			}
			spec.Layers = append(spec.Layers, *l)
		}
		return nil
	})
	return spec
}

func exportAll(t *testing.T, m *volume.Manager, name string) []byte {
	t.Helper()
	v, err := m.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	p := make([]byte, v.Size())
	if _, err := v.ReadAt(p, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAdoptChain(t *testing.T) {
	ctx := context.Background()
	m := newManager(t, t.TempDir())
	m.Create("a", 1<<20, volume.CreateOptions{})
	a, _ := m.Open("a")
	a.WriteAt(bytes.Repeat([]byte("one"), 1000), 0)
	a.Snapshot(ctx, "s1")
	a.WriteAt(bytes.Repeat([]byte("two"), 1000), 8192)
	a.Snapshot(ctx, "s2")
	a.WriteAt(bytes.Repeat([]byte("three"), 1000), 1<<19)
	a.Snapshot(ctx, "s3")
	a.Close()

	if _, err := m.AdoptChain("b", specOf(t, m, "a", "s1")); err != nil {
		t.Fatal(err)
	}
	s1 := mustSnapshotData(t, m, "a", "s1")
	if !bytes.Equal(exportAll(t, m, "b"), s1) {
		t.Fatal("adopted volume differs from the snapshot")
	}
	res, err := m.AdoptChain("b", specOf(t, m, "a", "s2"))
	if err != nil || !res.FastForward {
		t.Fatalf("fast-forward to s2: %+v %v", res, err)
	}
	if !bytes.Equal(exportAll(t, m, "b"), mustSnapshotData(t, m, "a", "s2")) {
		t.Fatal("fast-forwarded volume differs from s2")
	}
	b, _ := m.Open("b")
	b.WriteAt([]byte("local change"), 0)
	b.Close()
	if _, err := m.AdoptChain("b", specOf(t, m, "a", "s3")); !errors.Is(err, volume.ErrRefused) {
		t.Fatalf("fast-forward over local writes: %v", err)
	}
	m.Create("c", 1<<20, volume.CreateOptions{})
	if _, err := m.AdoptChain("c", specOf(t, m, "a", "s1")); !errors.Is(err, metadata.ErrExists) {
		t.Fatalf("adopting an unrelated chain into an existing volume: %v", err)
	}
}

func mustSnapshotData(t *testing.T, m *volume.Manager, vol, snap string) []byte {
	t.Helper()
	s, err := m.SnapshotChain(vol, snap)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := m.Chain(s.Layers, s.Size, 4096)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, s.Size)
	ch.ReadAt(p, 0)
	return p
}
