package metadata

import (
	"errors"
	"testing"
)

// FuzzDecodeRecords feeds arbitrary keys and values to every decoder: each
// must return a record or an error wrapping ErrCorrupt, never panic.
func FuzzDecodeRecords(f *testing.F) {
	f.Add([]byte("db"), []byte(`{"name":"db","size":4096,"block_size":4096,"layers":["sha256:0000000000000000000000000000000000000000000000000000000000000001"],"device":{"kind":"ublk"}}`))
	f.Add([]byte("db@s"), []byte(`{"volume":"db","name":"s","layers":[],"size":4096,"labels":{"a":"b"}}`))
	f.Add([]byte("sha256:0000000000000000000000000000000000000000000000000000000000000001"),
		[]byte(`{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000001","state":"full","created":"2025-01-01T00:00:00Z"}`))
	f.Add([]byte("sha256:0000000000000000000000000000000000000000000000000000000000000001"),
		[]byte(`{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000001","stored_bytes":3,"state":"remote","origins":["r/a"],"parts":{"r/a":[{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000002","size":2},{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000003","size":1}]}}`))
	f.Add([]byte("\x00\x00\x00\x00\x00\x00\x00\x01"), []byte(`{"id":1,"op":"create","volume":"db","args":{"k":"v"}}`))
	f.Add([]byte("0123456789abcdef0123456789abcdef"), []byte(`{"id":"0123456789abcdef0123456789abcdef","op":"pull","digests":["sha256:0000000000000000000000000000000000000000000000000000000000000001"]}`))
	f.Add([]byte{}, []byte{})
	f.Add([]byte("x"), []byte("null"))
	f.Add([]byte("x"), []byte(`{"created":"not a time"}`))
	f.Add([]byte("\x00\x00\x00\x01"), []byte{0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, key, val []byte) {
		check := func(what string, rec any, err error) {
			if err != nil && !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s: error %v does not wrap ErrCorrupt", what, err)
			}
		}
		v, err := decodeVolume(key, val)
		check("volume", v, err)
		if err == nil {
			if string(key) != v.Name || v.validate() != nil {
				t.Errorf("decodeVolume accepted %+v under %q", v, key)
			}
		}
		s, err := decodeSnapshot(key, val)
		check("snapshot", s, err)
		if err == nil && s.Ref() != string(key) {
			t.Errorf("decodeSnapshot accepted %+v under %q", s, key)
		}
		l, err := decodeLayer(key, val)
		check("layer", l, err)
		if err == nil {
			for o, parts := range l.Parts {
				var sum uint64
				for _, p := range parts {
					sum += p.Size
				}
				if o == "" || len(parts) < 2 || sum != l.StoredBytes {
					t.Errorf("decodeLayer accepted parts %v at %q of a layer of %d bytes", parts, o, l.StoredBytes)
				}
			}
		}
		in, err := decodeIntent(key, val)
		check("intent", in, err)
		le, err := decodeLease(key, val)
		check("lease", le, err)
		if err == nil && (le.ID != string(key) || le.validate() != nil) {
			t.Errorf("decodeLease accepted %+v under %q", le, key)
		}
		_, err = decodeSchema(val)
		check("schema", nil, err)
	})
}
