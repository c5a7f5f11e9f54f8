package metadata

import (
	"errors"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func TestCorruptValues(t *testing.T) {
	for _, tc := range []struct {
		bucket []byte
		key    string
		val    string
		read   func(*Tx) error
	}{
		{bucketVolumes, "db", "{", func(tx *Tx) error { _, err := tx.Volume("db"); return err }},
		{bucketVolumes, "db", "{", func(tx *Tx) error { _, err := tx.Volumes(); return err }},
		{bucketVolumes, "db", "{", func(tx *Tx) error { _, err := tx.ReferencedLayers(); return err }},
		{bucketVolumes, "db", `{"name":"other","size":4096,"block_size":4096}`, func(tx *Tx) error { _, err := tx.Volume("db"); return err }},
		{bucketVolumes, "db", `{"name":"db","size":4096,"block_size":4096,"layers":["sha256:../../x"]}`, func(tx *Tx) error { _, err := tx.Volume("db"); return err }},
		{bucketVolumes, "db", `null`, func(tx *Tx) error { _, err := tx.ClonesOf("db", ""); return err }},
		{bucketVolumes, "../x", `{"name":"../x","size":4096,"block_size":4096}`, func(tx *Tx) error { _, err := tx.Volumes(); return err }},
		{bucketSnapshots, "db@s", `[]`, func(tx *Tx) error { _, err := tx.AllSnapshots(); return err }},
		{bucketSnapshots, "db@s", `{"volume":"db","name":"t"}`, func(tx *Tx) error { _, err := tx.Snapshot("db", "s"); return err }},
		{bucketLayers, digest(1), `{"digest":"` + digest(1) + `","state":"weird"}`, func(tx *Tx) error { _, err := tx.Layer(digest(1)); return err }},
		{bucketLayers, digest(1), `"x"`, func(tx *Tx) error { _, err := tx.Layers(); return err }},
		{bucketIntents, "\x00\x00\x00\x00\x00\x00\x00\x01", `{"id":2,"op":"x"}`, func(tx *Tx) error { _, err := tx.Intents(); return err }},
		{bucketLeases, "0123456789abcdef0123456789abcdef", `{"id":"0123456789abcdef0123456789abcdef","op":"pull","digests":["sha256:x"]}`, func(tx *Tx) error { _, err := tx.Leases(); return err }},
		{bucketLeases, "0123456789abcdef0123456789abcdef", `{"id":"1123456789abcdef0123456789abcdef","op":"pull"}`, func(tx *Tx) error { _, err := tx.Lease("0123456789abcdef0123456789abcdef"); return err }},
		{bucketLeases, "../x", `{"id":"../x","op":"pull"}`, func(tx *Tx) error { _, err := tx.Leases(); return err }},
		{bucketIntents, "short", `{"id":1,"op":"x"}`, func(tx *Tx) error { _, err := tx.Intents(); return err }},
	} {
		c := newCatalog(t)
		mustUpdate(t, c, func(tx *Tx) error { return tx.CreateVolume(testVolume("vol")) })
		rawUpdate(t, c.Path(), func(btx *bolt.Tx) error {
			return btx.Bucket(tc.bucket).Put([]byte(tc.key), []byte(tc.val))
		})
		if tc.bucket[0] == 's' { // a snapshot needs its volume
			mustUpdate(t, c, func(tx *Tx) error { return tx.PutVolume(testVolume("db")) })
		}
		err := c.View(tc.read)
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s/%q = %q: got %v, want ErrCorrupt", tc.bucket, tc.key, tc.val, err)
		} else if !strings.Contains(err.Error(), string(tc.bucket)) {
			t.Errorf("error %q does not name the bucket", err)
		}
	}
}

func TestRecordsAreCopies(t *testing.T) {
	c := newCatalog(t)
	mustUpdate(t, c, func(tx *Tx) error { return tx.CreateVolume(testVolume("db", digest(1))) })
	mustView(t, c, func(tx *Tx) error {
		v, err := tx.Volume("db")
		if err != nil {
			return err
		}
		v.Layers[0] = "changed"
		v2, err := tx.Volume("db")
		if err == nil && v2.Layers[0] != digest(1) {
			t.Error("changing a returned record changed the store")
		}
		return err
	})
}
