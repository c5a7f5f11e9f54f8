package volume

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/snapshot"
)

// ChainSpec describes a snapshot's chain that arrived from elsewhere (a
// pull): its geometry, its layers base first, the snapshot's name.
type ChainSpec struct {
	Size      uint64
	BlockSize uint32
	ChunkSize uint32
	Codec     string
	Layers    []metadata.Layer // base first; Digest, sizes, State, Origins
	Snapshot  string
	Origin    string // where it came from (a registry reference)
	// Lease, when set, is the lease the caller took on the layers'
	// digests before fetching any of them (see Manager.Lease); AdoptChain
	// ends it in the transaction that references them. Without one, gc
	// may remove the layers between their fetch and that transaction.
	Lease *Lease
}

// testHookAdopt, set by tests, runs once AdoptChain has opened the
// layers and before it records anything.
var testHookAdopt func()

// Adopted says what AdoptChain did.
type Adopted struct {
	Volume      *metadata.Volume
	FastForward bool // an existing volume moved forward to the new snapshot
}

// AdoptChain records spec as volume name at snapshot spec.Snapshot, once
// every layer is in the store (or registered as lazy by the caller). A
// new volume is created; an existing one is fast-forwarded when its chain
// is a prefix of spec's and it has no writes since its last snapshot
// (like a pull of a newer tag); anything else is refused. All records are
// written in one transaction, so nothing half-pulled is ever visible; the
// same transaction ends spec.Lease. The caller still releases the lease
// (a failed adopt leaves it recorded until then).
func (m *Manager) AdoptChain(name string, spec ChainSpec) (*Adopted, error) {
	if err := metadata.ValidateName("volume", name); err != nil {
		return nil, err
	}
	if err := metadata.ValidateName("snapshot", spec.Snapshot); err != nil {
		return nil, err
	}
	if _, err := snapshot.ParseCodec(spec.Codec); err != nil {
		return nil, err
	}
	if err := checkSize(spec.Size, spec.BlockSize); err != nil {
		return nil, err
	}
	digests := make([]string, len(spec.Layers))
	for i, l := range spec.Layers {
		digests[i] = l.Digest
	}
	// The layers must open and agree with the geometry. They are
	// referenced only for the check: the volume's chain opens them again
	// (from the manager's open layers while anything still uses them).
	for i, d := range digests {
		l, err := m.acquireLayer(d, false)
		if err != nil {
			return nil, err
		}
		defer m.releaseLayers(digests[i:i+1], []*snapshot.Layer{l})
		if t := l.Trailer(); t.BlockSize != spec.BlockSize {
			return nil, fmt.Errorf("layer %s has block size %d, the chain says %d: %w", d, t.BlockSize, spec.BlockSize, snapshot.ErrFormat)
		}
	}
	if testHookAdopt != nil {
		testHookAdopt() // the layers are fetched and open, not yet referenced
	}
	lock, err := m.lockVolume(name)
	if err != nil {
		return nil, err
	}
	defer lock.release()
	var existing *metadata.Volume
	err = m.cat.View(func(tx *metadata.Tx) error {
		v, err := tx.Volume(name)
		if err == nil {
			existing = v
			return nil
		}
		if errors.Is(err, metadata.ErrNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	snap := &metadata.Snapshot{Volume: name, Name: spec.Snapshot, Layers: digests, Size: spec.Size, Created: now}
	putLayers := func(tx *metadata.Tx) error {
		for i := range spec.Layers {
			l := spec.Layers[i]
			if old, err := tx.Layer(l.Digest); err == nil {
				// Keep local state unless the blob is now complete;
				// learn new origins.
				for _, o := range l.Origins {
					if !slices.Contains(old.Origins, o) {
						old.Origins = append(old.Origins, o)
					}
				}
				if l.State == metadata.LayerFull {
					old.State = metadata.LayerFull
				}
				for o, parts := range l.Parts { // where an origin holds it in parts
					if old.Parts == nil {
						old.Parts = make(map[string][]metadata.Part)
					}
					old.Parts[o] = parts
				}
				l = *old
			}
			if l.Created.IsZero() {
				l.Created = now
			}
			if err := tx.PutLayer(&l); err != nil {
				return err
			}
		}
		return nil
	}
	if existing == nil {
		if err := removeWritableDirs(m.volDir(name)); err != nil {
			return nil, err
		}
		v := &metadata.Volume{Name: name, Size: spec.Size, BlockSize: spec.BlockSize, Codec: spec.Codec,
			ChunkSize: spec.ChunkSize, Layers: digests, Writable: 1, Origin: spec.Origin, Created: now}
		err := m.cat.Update(func(tx *metadata.Tx) error {
			if err := putLayers(tx); err != nil {
				return err
			}
			if err := tx.CreateVolume(v); err != nil {
				return err
			}
			if err := tx.CreateSnapshot(snap); err != nil {
				return err
			}
			return spec.Lease.Commit(tx)
		})
		return &Adopted{Volume: v}, err
	}
	// Fast-forward an existing volume.
	if existing.BlockSize != spec.BlockSize || len(existing.Layers) == 0 || len(existing.Layers) > len(digests) ||
		!slices.Equal(existing.Layers, digests[:len(existing.Layers)]) {
		return nil, fmt.Errorf("volume %s exists and %s is not a newer snapshot of its chain: pull into a new volume: %w",
			name, spec.Snapshot, metadata.ErrExists)
	}
	v, err := m.openLocked(name, nil)
	if err != nil {
		return nil, err
	}
	empty := true
	v.w.runs(func(uint64, uint64, uint8) error { empty = false; return errStop })
	if err := v.Close(); err != nil {
		return nil, err
	}
	if !empty {
		return nil, fmt.Errorf("volume %s has writes since its last snapshot: snapshot or roll back first: %w", name, ErrRefused)
	}
	var rec metadata.Volume
	err = m.cat.Update(func(tx *metadata.Tx) error {
		// Decide on the current record: opening may have finished an
		// interrupted seal, which moved the chain on.
		cur, err := tx.Volume(name)
		if err != nil {
			return err
		}
		if cur.Frozen != 0 || len(cur.Layers) > len(digests) || !slices.Equal(cur.Layers, digests[:len(cur.Layers)]) {
			return fmt.Errorf("volume %s changed (a seal finished): %s is not a newer snapshot of it: %w", name, spec.Snapshot, ErrRefused)
		}
		if err := refuseUnderDevice(cur); err != nil {
			return err // a dead ublk server's device still shows the old chain
		}
		if err := putLayers(tx); err != nil {
			return err
		}
		cur.Layers, cur.Size, cur.Origin = digests, spec.Size, spec.Origin
		rec = *cur
		if err := tx.PutVolume(cur); err != nil {
			return err
		}
		if err := tx.CreateSnapshot(snap); err != nil {
			return err
		}
		return spec.Lease.Commit(tx)
	})
	return &Adopted{Volume: &rec, FastForward: true}, err
}
