package metadata

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)

func digest(n int) string {
	return fmt.Sprintf("sha256:%064x", n)
}

func testVolume(name string, layers ...string) *Volume {
	return &Volume{Name: name, Size: 1 << 30, BlockSize: 4096, Codec: "zstd", ChunkSize: 1 << 16,
		Layers: layers, Writable: 1, Created: t0}
}

func mustUpdate(t *testing.T, c *Catalog, fn func(*Tx) error) {
	t.Helper()
	if err := c.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func mustView(t *testing.T, c *Catalog, fn func(*Tx) error) {
	t.Helper()
	if err := c.View(fn); err != nil {
		t.Fatal(err)
	}
}

func TestVolumeRoundTrip(t *testing.T) {
	c := newCatalog(t)
	v := testVolume("db", digest(1), digest(2))
	v.Origin = "base@gold"
	v.Labels = map[string]string{"tier": "gold"}
	v.Device = &Device{Kind: "ublk", Path: "/dev/ublkb0", PID: 42, ID: 0}
	mustUpdate(t, c, func(tx *Tx) error {
		if err := tx.CreateVolume(testVolume("base")); err != nil {
			return err
		}
		return tx.CreateVolume(v)
	})
	mustView(t, c, func(tx *Tx) error {
		got, err := tx.Volume("db")
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(got, v) {
			t.Errorf("Volume = %+v, want %+v", got, v)
		}
		all, err := tx.Volumes()
		if err != nil {
			return err
		}
		if len(all) != 2 || all[0].Name != "base" || all[1].Name != "db" {
			t.Errorf("Volumes = %v", all)
		}
		return nil
	})
	// Upsert: PutVolume replaces.
	v.Device = nil
	v.Layers = append(v.Layers, digest(3))
	mustUpdate(t, c, func(tx *Tx) error { return tx.PutVolume(v) })
	mustView(t, c, func(tx *Tx) error {
		got, err := tx.Volume("db")
		if err == nil && !reflect.DeepEqual(got, v) {
			t.Errorf("after Put Volume = %+v, want %+v", got, v)
		}
		return err
	})
}

func TestVolumeErrors(t *testing.T) {
	c := newCatalog(t)
	mustUpdate(t, c, func(tx *Tx) error { return tx.CreateVolume(testVolume("db")) })
	err := c.Update(func(tx *Tx) error { return tx.CreateVolume(testVolume("db")) })
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "db") {
		t.Errorf("CreateVolume twice = %v, want ErrExists naming db", err)
	}
	err = c.View(func(tx *Tx) error { _, err := tx.Volume("nope"); return err })
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Volume(nope) = %v, want ErrNotFound naming nope", err)
	}
	for _, tc := range []struct {
		mod  func(*Volume)
		want error
	}{
		{func(v *Volume) { v.Name = "../x" }, ErrInvalidName},
		{func(v *Volume) { v.Name = "" }, ErrInvalidName},
		{func(v *Volume) { v.Size = 4097 }, ErrInvalid},
		{func(v *Volume) { v.Size = 0 }, ErrInvalid},
		{func(v *Volume) { v.BlockSize = 0 }, ErrInvalid},
		{func(v *Volume) { v.Layers = []string{digest(1), "sha256:xyz"} }, ErrInvalid},
	} {
		v := testVolume("ok")
		tc.mod(v)
		for _, op := range []func(*Tx, *Volume) error{(*Tx).PutVolume, (*Tx).CreateVolume} {
			if err := c.Update(func(tx *Tx) error { return op(tx, v) }); !errors.Is(err, tc.want) {
				t.Errorf("%+v: %v, want %v", v, err, tc.want)
			}
		}
	}
	for _, op := range []func(*Tx) error{
		func(tx *Tx) error { return tx.DeleteVolume("nope") },
		func(tx *Tx) error { return tx.DeleteSnapshot("db", "nope") },
		func(tx *Tx) error { return tx.DeleteSnapshot("db", "") },
		func(tx *Tx) error { return tx.DeleteLayer(digest(9)) },
		func(tx *Tx) error { _, err := tx.Snapshot("db", "nope"); return err },
		func(tx *Tx) error { _, err := tx.Snapshot("db", ""); return err },
		func(tx *Tx) error { _, err := tx.Snapshots("nope"); return err },
		func(tx *Tx) error { _, err := tx.Layer(digest(9)); return err },
		func(tx *Tx) error { return tx.PutSnapshot(&Snapshot{Volume: "nope", Name: "s", Size: 4096}) },
	} {
		if err := c.Update(op); !errors.Is(err, ErrNotFound) {
			t.Errorf("got %v, want ErrNotFound", err)
		}
	}
}

func TestSnapshots(t *testing.T) {
	c := newCatalog(t)
	mustUpdate(t, c, func(tx *Tx) error {
		for _, name := range []string{"a", "db", "db2", "dc"} {
			if err := tx.CreateVolume(testVolume(name, digest(1))); err != nil {
				return err
			}
		}
		// Creation order differs from name order; two share a time.
		for i, name := range []string{"zeta", "alpha", "mid", "beta"} {
			s := &Snapshot{Volume: "db", Name: name, Layers: []string{digest(1), digest(i + 2)},
				Size: 1 << 30, Created: t0.Add(time.Duration(min(i, 2)) * time.Second)}
			if err := tx.CreateSnapshot(s); err != nil {
				return err
			}
		}
		for _, ref := range []string{"db2@x", "a@y", "dc@z"} {
			vol, snap, _ := ParseRef(ref)
			if err := tx.CreateSnapshot(&Snapshot{Volume: vol, Name: snap, Size: 4096}); err != nil {
				return err
			}
		}
		return nil
	})
	mustView(t, c, func(tx *Tx) error {
		snaps, err := tx.Snapshots("db")
		if err != nil {
			return err
		}
		var names []string
		for _, s := range snaps {
			names = append(names, s.Name)
		}
		if want := []string{"zeta", "alpha", "beta", "mid"}; !slices.Equal(names, want) {
			t.Errorf("Snapshots(db) = %v, want %v", names, want)
		}
		s, err := tx.Snapshot("db", "alpha")
		if err != nil {
			return err
		}
		want := &Snapshot{Volume: "db", Name: "alpha", Layers: []string{digest(1), digest(3)}, Size: 1 << 30, Created: t0.Add(time.Second)}
		if !reflect.DeepEqual(s, want) {
			t.Errorf("Snapshot = %+v, want %+v", s, want)
		}
		all, err := tx.AllSnapshots()
		if err != nil {
			return err
		}
		var refs []string
		for _, s := range all {
			refs = append(refs, s.Ref())
		}
		if want := []string{"a@y", "db2@x", "db@alpha", "db@beta", "db@mid", "db@zeta", "dc@z"}; !slices.Equal(refs, want) {
			t.Errorf("AllSnapshots = %v, want %v", refs, want)
		}
		return nil
	})
	err := c.Update(func(tx *Tx) error { return tx.CreateSnapshot(&Snapshot{Volume: "db", Name: "mid", Size: 4096}) })
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "db@mid") {
		t.Errorf("CreateSnapshot twice = %v, want ErrExists naming db@mid", err)
	}
	for _, s := range []*Snapshot{
		{Volume: "db", Name: "a@b", Size: 4096},
		{Volume: "db", Name: "../x", Size: 4096},
		{Volume: "db", Name: "", Size: 4096},
		{Volume: "db/x", Name: "s", Size: 4096},
	} {
		if err := c.Update(func(tx *Tx) error { return tx.PutSnapshot(s) }); !errors.Is(err, ErrInvalidName) {
			t.Errorf("PutSnapshot(%s) = %v, want ErrInvalidName", s.Ref(), err)
		}
	}
	for _, s := range []*Snapshot{
		{Volume: "db", Name: "s", Size: 100},
		{Volume: "db", Name: "s", Size: 4096, Layers: []string{"sha256:0"}},
	} {
		if err := c.Update(func(tx *Tx) error { return tx.PutSnapshot(s) }); !errors.Is(err, ErrInvalid) {
			t.Errorf("PutSnapshot(%+v) = %v, want ErrInvalid", s, err)
		}
	}
	mustUpdate(t, c, func(tx *Tx) error { return tx.DeleteSnapshot("db", "mid") })
	mustView(t, c, func(tx *Tx) error {
		if _, err := tx.Snapshot("db", "mid"); !errors.Is(err, ErrNotFound) {
			t.Errorf("deleted snapshot: %v", err)
		}
		return nil
	})
}

func TestDeleteVolumeCascade(t *testing.T) {
	c := newCatalog(t)
	mustUpdate(t, c, func(tx *Tx) error {
		// "db" must not take the snapshots of "db2" or "db-x" with it.
		for _, name := range []string{"db", "db2", "db-x", "da"} {
			if err := tx.CreateVolume(testVolume(name)); err != nil {
				return err
			}
			for i := range 3 {
				if err := tx.CreateSnapshot(&Snapshot{Volume: name, Name: fmt.Sprint("s", i), Size: 4096}); err != nil {
					return err
				}
			}
		}
		return tx.PutLayer(&Layer{Digest: digest(1), State: LayerFull})
	})
	mustUpdate(t, c, func(tx *Tx) error { return tx.DeleteVolume("db") })
	mustView(t, c, func(tx *Tx) error {
		if _, err := tx.Volume("db"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Volume(db) = %v", err)
		}
		all, err := tx.AllSnapshots()
		if err != nil {
			return err
		}
		if len(all) != 9 {
			t.Errorf("%d snapshots left, want 9", len(all))
		}
		for _, s := range all {
			if s.Volume == "db" {
				t.Errorf("snapshot %s survived", s.Ref())
			}
		}
		if _, err := tx.Layer(digest(1)); err != nil {
			t.Errorf("layer went with the volume: %v", err)
		}
		return nil
	})
}
