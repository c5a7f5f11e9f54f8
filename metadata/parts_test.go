package metadata

import (
	"errors"
	"reflect"
	"testing"
)

// A layer's parts at an origin round-trip; parts that are not the
// layer's bytes in at least two pieces are refused.
func TestLayerParts(t *testing.T) {
	c := newCatalog(t)
	o := "registry.example/vol"
	l := &Layer{Digest: digest(2), StoredBytes: 100, State: LayerRemote, Origins: []string{o}, Created: t0,
		Parts: map[string][]Part{o: {{Digest: digest(3), Size: 60}, {Digest: digest(4), Size: 40}}}}
	mustUpdate(t, c, func(tx *Tx) error { return tx.PutLayer(l) })
	mustView(t, c, func(tx *Tx) error {
		got, err := tx.Layer(digest(2))
		if err == nil && !reflect.DeepEqual(got, l) {
			t.Errorf("Layer = %+v, want %+v", got, l)
		}
		return err
	})
	for name, parts := range map[string]map[string][]Part{
		"short":      {o: {{Digest: digest(3), Size: 60}, {Digest: digest(4), Size: 39}}},
		"long":       {o: {{Digest: digest(3), Size: 60}, {Digest: digest(4), Size: 41}}},
		"one":        {o: {{Digest: digest(3), Size: 100}}},
		"itself":     {o: {{Digest: digest(2), Size: 60}, {Digest: digest(4), Size: 40}}},
		"empty size": {o: {{Digest: digest(3), Size: 0}, {Digest: digest(4), Size: 100}}},
		"bad digest": {o: {{Digest: "sha256:x", Size: 60}, {Digest: digest(4), Size: 40}}},
		"no origin":  {"": {{Digest: digest(3), Size: 60}, {Digest: digest(4), Size: 40}}},
	} {
		bad := *l
		bad.Parts = parts
		if err := c.Update(func(tx *Tx) error { return tx.PutLayer(&bad) }); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: PutLayer = %v, want ErrInvalid", name, err)
		}
	}
}
