package metadata

import (
	"errors"
	"reflect"
	"testing"
)

// An Activation round-trips with its volume record, and PutVolume refuses
// one a daemon could not act on.
func TestActivationRecord(t *testing.T) {
	c := newCatalog(t)
	v := testVolume("db")
	v.Activation = &Activation{Kind: ActivationNBD, Listen: "unix:/run/db.sock", ReadOnly: true}
	mustUpdate(t, c, func(tx *Tx) error { return tx.CreateVolume(v) })
	mustView(t, c, func(tx *Tx) error {
		got, err := tx.Volume("db")
		if err == nil && !reflect.DeepEqual(got.Activation, v.Activation) {
			t.Errorf("Activation = %+v, want %+v", got.Activation, v.Activation)
		}
		return err
	})
	bad := []*Activation{
		{Kind: "iscsi"},
		{Kind: ActivationNBD},
		{Kind: ActivationUblk, Listen: "unix:/x"},
		{Kind: ActivationUblk, Queues: -1},
		{Kind: ActivationUblk, Queues: MaxQueues + 1},
		{Kind: ActivationUblk, Depth: MaxDepth + 1},
	}
	for _, a := range bad {
		w := testVolume("db")
		w.Activation = a
		err := c.Update(func(tx *Tx) error { return tx.PutVolume(w) })
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("PutVolume with activation %+v: %v, want ErrInvalid", a, err)
		}
	}
	// A record without the field (written before activations existed)
	// decodes with no activation.
	old := []byte(`{"name":"db","size":4096,"block_size":4096,"codec":"zstd","chunk_size":65536,"layers":[],"writable":1,"created":"2026-01-01T00:00:00Z"}`)
	got, err := decodeVolume([]byte("db"), old)
	if err != nil || got.Activation != nil {
		t.Errorf("old record: %+v, %v", got, err)
	}
}
