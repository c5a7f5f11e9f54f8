package metadata

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Tx is one catalogue transaction, valid only inside the fn given to
// Catalog.View or Catalog.Update. Its getters return fresh copies of the
// records; its Put and Create methods validate a record before storing it
// and fail, wrapping ErrInvalidName or ErrInvalid, rather than store one
// that breaks a rule. Write methods in a View fail.
type Tx struct {
	tx *bolt.Tx
}

// Writable reports whether the transaction came from Update.
func (tx *Tx) Writable() bool { return tx.tx.Writable() }

func (tx *Tx) bucket(name []byte) *bolt.Bucket {
	// Catalog.run checked every bucket exists before handing out the Tx.
	return tx.tx.Bucket(name)
}

func put(b *bolt.Bucket, key []byte, rec any) error {
	val, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return b.Put(key, val)
}

// ---- volumes ----

// Volume returns the record of volume name, or an error wrapping
// ErrNotFound that names the volume.
func (tx *Tx) Volume(name string) (*Volume, error) {
	val := tx.bucket(bucketVolumes).Get([]byte(name))
	if val == nil {
		return nil, fmt.Errorf("volume %s: %w", name, ErrNotFound)
	}
	return decodeVolume([]byte(name), val)
}

// Volumes returns every volume, sorted by name.
func (tx *Tx) Volumes() ([]*Volume, error) {
	vols := []*Volume{}
	err := tx.bucket(bucketVolumes).ForEach(func(k, val []byte) error {
		v, err := decodeVolume(k, val)
		vols = append(vols, v)
		return err
	})
	if err != nil {
		return nil, err
	}
	return vols, nil
}

// PutVolume stores v, replacing any record of the same name. It validates
// the name, that Size is a non-zero multiple of BlockSize, and every layer
// digest.
func (tx *Tx) PutVolume(v *Volume) error {
	if err := v.validate(); err != nil {
		return err
	}
	if err := put(tx.bucket(bucketVolumes), []byte(v.Name), v); err != nil {
		return fmt.Errorf("volume %s: %w", v.Name, err)
	}
	return nil
}

// CreateVolume is PutVolume for a new name: it fails with ErrExists if the
// volume already has a record. A zero Created is set to now (UTC).
func (tx *Tx) CreateVolume(v *Volume) error {
	if err := v.validate(); err != nil {
		return err
	}
	if tx.bucket(bucketVolumes).Get([]byte(v.Name)) != nil {
		return fmt.Errorf("volume %s: %w", v.Name, ErrExists)
	}
	if v.Created.IsZero() {
		v.Created = time.Now().UTC()
	}
	return tx.PutVolume(v)
}

// DeleteVolume removes volume name and, in the same transaction, every
// snapshot record of it. Layer records stay (gc decides about them); so do
// clones whose Origin names it. It fails with ErrNotFound for an unknown
// volume.
func (tx *Tx) DeleteVolume(name string) error {
	vols := tx.bucket(bucketVolumes)
	if vols.Get([]byte(name)) == nil {
		return fmt.Errorf("volume %s: %w", name, ErrNotFound)
	}
	snaps := tx.bucket(bucketSnapshots)
	var keys [][]byte
	prefix := []byte(name + refSep)
	c := snaps.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := snaps.Delete(k); err != nil {
			return fmt.Errorf("volume %s: snapshot %s: %w", name, k, err)
		}
	}
	if err := vols.Delete([]byte(name)); err != nil {
		return fmt.Errorf("volume %s: %w", name, err)
	}
	return nil
}

// ClonesOf returns the names of the volumes whose Origin is vol@snap, or,
// when snap is "", any snapshot of vol; sorted.
func (tx *Tx) ClonesOf(vol, snap string) ([]string, error) {
	vols, err := tx.Volumes()
	if err != nil {
		return nil, err
	}
	names := []string{}
	for _, v := range vols {
		o, found := strings.CutPrefix(v.Origin, vol+refSep)
		if found && o != "" && (snap == "" || o == snap) {
			names = append(names, v.Name)
		}
	}
	return names, nil // Volumes is sorted by name
}

// ---- snapshots ----

// Snapshot returns the record of snapshot vol@name, or an error wrapping
// ErrNotFound that names it.
func (tx *Tx) Snapshot(vol, name string) (*Snapshot, error) {
	key := []byte(Ref(vol, name))
	val := tx.bucket(bucketSnapshots).Get(key)
	if name == "" || val == nil {
		return nil, fmt.Errorf("snapshot %s@%s: %w", vol, name, ErrNotFound)
	}
	return decodeSnapshot(key, val)
}

// Snapshots returns the snapshots of volume vol in creation order (by
// Created, then by name). It fails with ErrNotFound for an unknown volume.
func (tx *Tx) Snapshots(vol string) ([]*Snapshot, error) {
	if tx.bucket(bucketVolumes).Get([]byte(vol)) == nil {
		return nil, fmt.Errorf("volume %s: %w", vol, ErrNotFound)
	}
	snaps := []*Snapshot{}
	prefix := []byte(vol + refSep)
	c := tx.bucket(bucketSnapshots).Cursor()
	for k, val := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, val = c.Next() {
		s, err := decodeSnapshot(k, val)
		if err != nil {
			return nil, err
		}
		snaps = append(snaps, s)
	}
	slices.SortStableFunc(snaps, func(a, b *Snapshot) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return snaps, nil
}

// AllSnapshots returns every snapshot of every volume, sorted by
// reference (vol@snap).
func (tx *Tx) AllSnapshots() ([]*Snapshot, error) {
	snaps := []*Snapshot{}
	err := tx.bucket(bucketSnapshots).ForEach(func(k, val []byte) error {
		s, err := decodeSnapshot(k, val)
		snaps = append(snaps, s)
		return err
	})
	if err != nil {
		return nil, err
	}
	return snaps, nil
}

// PutSnapshot stores s, replacing any record of the same reference. The
// volume must exist (ErrNotFound) and s.Size be a multiple of its block
// size; names and layer digests are validated.
func (tx *Tx) PutSnapshot(s *Snapshot) error {
	if err := s.validate(); err != nil {
		return err
	}
	v, err := tx.Volume(s.Volume)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", s.Ref(), err)
	}
	if s.Size == 0 || s.Size%uint64(v.BlockSize) != 0 {
		return fmt.Errorf("snapshot %s: size %d must be a non-zero multiple of the block size %d: %w",
			s.Ref(), s.Size, v.BlockSize, ErrInvalid)
	}
	if err := put(tx.bucket(bucketSnapshots), []byte(s.Ref()), s); err != nil {
		return fmt.Errorf("snapshot %s: %w", s.Ref(), err)
	}
	return nil
}

// CreateSnapshot is PutSnapshot for a new name: it fails with ErrExists if
// vol@name already has a record. A zero Created is set to now (UTC).
func (tx *Tx) CreateSnapshot(s *Snapshot) error {
	if err := s.validate(); err != nil {
		return err
	}
	if tx.bucket(bucketSnapshots).Get([]byte(s.Ref())) != nil {
		return fmt.Errorf("snapshot %s: %w", s.Ref(), ErrExists)
	}
	if s.Created.IsZero() {
		s.Created = time.Now().UTC()
	}
	return tx.PutSnapshot(s)
}

// DeleteSnapshot removes snapshot vol@name, or fails with ErrNotFound.
// Its layers and any clones made from it stay.
func (tx *Tx) DeleteSnapshot(vol, name string) error {
	key := []byte(Ref(vol, name))
	snaps := tx.bucket(bucketSnapshots)
	if name == "" || snaps.Get(key) == nil {
		return fmt.Errorf("snapshot %s@%s: %w", vol, name, ErrNotFound)
	}
	if err := snaps.Delete(key); err != nil {
		return fmt.Errorf("snapshot %s@%s: %w", vol, name, err)
	}
	return nil
}
