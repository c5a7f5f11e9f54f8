package metadata

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
)

func TestLayers(t *testing.T) {
	c := newCatalog(t)
	l := &Layer{Digest: digest(2), StoredBytes: 100, VirtualSize: 1 << 30, DataBytes: 4096, Extents: 1,
		State: LayerRemote, Origins: []string{"registry.example/vol:1"}, Created: t0}
	mustUpdate(t, c, func(tx *Tx) error {
		if err := tx.PutLayer(&Layer{Digest: digest(3), State: LayerPartial}); err != nil {
			return err
		}
		return tx.PutLayer(l)
	})
	mustView(t, c, func(tx *Tx) error {
		got, err := tx.Layer(digest(2))
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(got, l) {
			t.Errorf("Layer = %+v, want %+v", got, l)
		}
		all, err := tx.Layers()
		if err != nil {
			return err
		}
		if len(all) != 2 || all[0].Digest != digest(2) || all[1].Digest != digest(3) {
			t.Errorf("Layers = %v", all)
		}
		return nil
	})
	for _, bad := range []*Layer{{Digest: "sha256:abc", State: LayerFull}, {Digest: digest(1), State: "lazy"}, {Digest: digest(1)}} {
		if err := c.Update(func(tx *Tx) error { return tx.PutLayer(bad) }); !errors.Is(err, ErrInvalid) {
			t.Errorf("PutLayer(%+v) = %v, want ErrInvalid", bad, err)
		}
	}
	mustUpdate(t, c, func(tx *Tx) error { return tx.DeleteLayer(digest(3)) })
	mustView(t, c, func(tx *Tx) error {
		if _, err := tx.Layer(digest(3)); !errors.Is(err, ErrNotFound) {
			t.Errorf("deleted layer: %v", err)
		}
		return nil
	})
}

func TestReferences(t *testing.T) {
	c := newCatalog(t)
	mustUpdate(t, c, func(tx *Tx) error {
		base := testVolume("base", digest(1), digest(2))
		if err := tx.CreateVolume(base); err != nil {
			return err
		}
		for _, s := range []*Snapshot{
			{Volume: "base", Name: "gold", Layers: []string{digest(1)}, Size: 4096},
			{Volume: "base", Name: "silver", Layers: []string{digest(1), digest(3)}, Size: 4096},
		} {
			if err := tx.CreateSnapshot(s); err != nil {
				return err
			}
		}
		for _, v := range []*Volume{
			{Name: "c2", Origin: "base@gold", Layers: []string{digest(1), digest(4)}},
			{Name: "c1", Origin: "base@gold", Layers: []string{digest(1)}},
			{Name: "c3", Origin: "base@silver"},
			{Name: "other", Origin: "base2@gold"},
			{Name: "pulled", Origin: "registry.example/x:1"},
		} {
			v.Size, v.BlockSize = 4096, 4096
			if err := tx.CreateVolume(v); err != nil {
				return err
			}
		}
		return tx.PutLayer(&Layer{Digest: digest(9), State: LayerFull}) // referenced by nothing
	})
	mustView(t, c, func(tx *Tx) error {
		refs, err := tx.ReferencedLayers()
		if err != nil {
			return err
		}
		want := map[string]bool{digest(1): true, digest(2): true, digest(3): true, digest(4): true}
		if !reflect.DeepEqual(refs, want) {
			t.Errorf("ReferencedLayers = %v, want %v", refs, want)
		}
		for d, want := range map[string][]string{
			digest(1): {"base", "base@gold", "base@silver", "c1", "c2"},
			digest(3): {"base@silver"},
			digest(9): {},
		} {
			got, err := tx.LayerUsers(d)
			if err != nil {
				return err
			}
			if !slices.Equal(got, want) {
				t.Errorf("LayerUsers(%s) = %v, want %v", d, got, want)
			}
		}
		for _, tc := range []struct {
			vol, snap string
			want      []string
		}{
			{"base", "gold", []string{"c1", "c2"}},
			{"base", "silver", []string{"c3"}},
			{"base", "", []string{"c1", "c2", "c3"}},
			{"base", "bronze", []string{}},
			{"base2", "", []string{"other"}},
			{"bas", "", []string{}},
			{"c1", "", []string{}},
		} {
			got, err := tx.ClonesOf(tc.vol, tc.snap)
			if err != nil {
				return err
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("ClonesOf(%s, %s) = %v, want %v", tc.vol, tc.snap, got, tc.want)
			}
		}
		return nil
	})
}

func TestIntents(t *testing.T) {
	c := newCatalog(t)
	var ids []uint64
	for i := range 3 {
		in := &Intent{Op: "snapshot", Volume: "db", Args: map[string]string{"n": fmt.Sprint(i)}}
		mustUpdate(t, c, func(tx *Tx) error {
			id, err := tx.AddIntent(in)
			if err == nil && (in.ID != id || in.Created.IsZero()) {
				t.Errorf("AddIntent left %+v", in)
			}
			ids = append(ids, id)
			return err
		})
	}
	if !slices.Equal(ids, []uint64{1, 2, 3}) {
		t.Errorf("ids %v, want 1 2 3", ids)
	}
	mustUpdate(t, c, func(tx *Tx) error {
		if err := tx.DeleteIntent(2); err != nil {
			return err
		}
		return tx.DeleteIntent(2) // deleting twice is fine
	})
	// Ids are never reused, even after deletes.
	mustUpdate(t, c, func(tx *Tx) error {
		id, err := tx.AddIntent(&Intent{Op: "delete", Volume: "x"})
		if id != 4 {
			t.Errorf("next id %d, want 4", id)
		}
		return err
	})
	mustView(t, c, func(tx *Tx) error {
		all, err := tx.Intents()
		if err != nil {
			return err
		}
		var got []uint64
		for _, in := range all {
			got = append(got, in.ID)
		}
		if !slices.Equal(got, []uint64{1, 3, 4}) {
			t.Errorf("Intents ids %v, want 1 3 4", got)
		}
		if all[1].Op != "snapshot" || all[1].Args["n"] != "2" || all[1].Volume != "db" {
			t.Errorf("intent 3 = %+v", all[1])
		}
		return nil
	})
	if err := c.Update(func(tx *Tx) error { _, err := tx.AddIntent(&Intent{}); return err }); !errors.Is(err, ErrInvalid) {
		t.Errorf("AddIntent without op = %v, want ErrInvalid", err)
	}
}
