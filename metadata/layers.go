package metadata

import (
	"fmt"
	"slices"
	"time"
)

// ---- layers ----

// Layer returns the record of the layer with digest d, or an error
// wrapping ErrNotFound that names it.
func (tx *Tx) Layer(d string) (*Layer, error) {
	val := tx.bucket(bucketLayers).Get([]byte(d))
	if val == nil {
		return nil, fmt.Errorf("layer %s: %w", d, ErrNotFound)
	}
	return decodeLayer([]byte(d), val)
}

// Layers returns every layer record, sorted by digest.
func (tx *Tx) Layers() ([]*Layer, error) {
	layers := []*Layer{}
	err := tx.bucket(bucketLayers).ForEach(func(k, val []byte) error {
		l, err := decodeLayer(k, val)
		layers = append(layers, l)
		return err
	})
	if err != nil {
		return nil, err
	}
	return layers, nil
}

// PutLayer stores l, replacing any record of the same digest. The digest
// and the state are validated.
func (tx *Tx) PutLayer(l *Layer) error {
	if err := l.validate(); err != nil {
		return err
	}
	if err := put(tx.bucket(bucketLayers), []byte(l.Digest), l); err != nil {
		return fmt.Errorf("layer %s: %w", l.Digest, err)
	}
	return nil
}

// DeleteLayer removes the record of layer d, or fails with ErrNotFound.
// It does not check that nothing references the layer: gc does, with
// ReferencedLayers in the same transaction.
func (tx *Tx) DeleteLayer(d string) error {
	layers := tx.bucket(bucketLayers)
	if layers.Get([]byte(d)) == nil {
		return fmt.Errorf("layer %s: %w", d, ErrNotFound)
	}
	if err := layers.Delete([]byte(d)); err != nil {
		return fmt.Errorf("layer %s: %w", d, err)
	}
	return nil
}

// ReferencedLayers returns the set of every digest named by the chain of
// any volume or snapshot, whether or not it has a layer record.
func (tx *Tx) ReferencedLayers() (map[string]bool, error) {
	refs := map[string]bool{}
	err := tx.forEachChain(func(_ string, chain []string) {
		for _, d := range chain {
			refs[d] = true
		}
	})
	if err != nil {
		return nil, err
	}
	return refs, nil
}

// LayerUsers returns, sorted, the names of the volumes ("vol") and
// snapshots ("vol@snap") whose chain holds digest d.
func (tx *Tx) LayerUsers(d string) ([]string, error) {
	users := []string{}
	err := tx.forEachChain(func(user string, chain []string) {
		if slices.Contains(chain, d) {
			users = append(users, user)
		}
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(users)
	return users, nil
}

// forEachChain calls fn with the name and chain of every volume, then of
// every snapshot (named vol@snap).
func (tx *Tx) forEachChain(fn func(user string, chain []string)) error {
	err := tx.bucket(bucketVolumes).ForEach(func(k, val []byte) error {
		v, err := decodeVolume(k, val)
		if err != nil {
			return err
		}
		fn(v.Name, v.Layers)
		return nil
	})
	if err != nil {
		return err
	}
	return tx.bucket(bucketSnapshots).ForEach(func(k, val []byte) error {
		s, err := decodeSnapshot(k, val)
		if err != nil {
			return err
		}
		fn(s.Ref(), s.Layers)
		return nil
	})
}

// ---- intents ----

// AddIntent records in and returns its ID, the next value of the intents
// bucket's sequence (so IDs increase and are never reused). It sets in.ID
// and in.Created (now, UTC).
func (tx *Tx) AddIntent(in *Intent) (uint64, error) {
	if err := in.validate(); err != nil {
		return 0, err
	}
	b := tx.bucket(bucketIntents)
	id, err := b.NextSequence()
	if err != nil {
		return 0, fmt.Errorf("intent %s %s: %w", in.Op, in.Volume, err)
	}
	rec := *in
	rec.ID, rec.Created = id, time.Now().UTC()
	if err := put(b, intentKey(id), &rec); err != nil {
		return 0, fmt.Errorf("intent %s %s: %w", in.Op, in.Volume, err)
	}
	in.ID, in.Created = rec.ID, rec.Created
	return id, nil
}

// DeleteIntent removes intent id. Removing one that is not there is not an
// error: recovery and the operation's own commit may both try, and either
// way the intent is gone.
func (tx *Tx) DeleteIntent(id uint64) error {
	if err := tx.bucket(bucketIntents).Delete(intentKey(id)); err != nil {
		return fmt.Errorf("intent %d: %w", id, err)
	}
	return nil
}

// Intents returns the recorded intents, oldest (lowest ID) first.
func (tx *Tx) Intents() ([]*Intent, error) {
	intents := []*Intent{}
	err := tx.bucket(bucketIntents).ForEach(func(k, val []byte) error {
		in, err := decodeIntent(k, val)
		intents = append(intents, in)
		return err
	})
	if err != nil {
		return nil, err
	}
	return intents, nil
}
