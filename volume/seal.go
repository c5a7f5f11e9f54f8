package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/snapshot"
)

// SealResult describes a snapshot just taken.
type SealResult struct {
	Snapshot *metadata.Snapshot
	Layer    *metadata.Layer // nil when the writable layer had no writes
	Duration time.Duration
}

// Snapshot seals the writable layer into an immutable layer, records
// snapshot name, and continues on a fresh empty writable layer. I/O waits
// only for the freeze (a flush and one catalogue transaction); the seal
// itself runs while reads and writes go on: writes land in the fresh
// writable layer, reads see fresh, then frozen, then the chain. A volume
// with no writes since its last snapshot records the snapshot without a
// new layer.
//
// Order (each step durable before the next):
//  1. freeze: flush; one transaction records Frozen = current generation,
//     FrozenSnapshot = name, Writable = generation+1; open the new layer;
//  2. seal the frozen layer into a blob (temp, fsync, rename by digest),
//     under a lease that names the digest before the rename, so gc
//     cannot take the unreferenced blob;
//  3. one transaction: layer record, chain + digest, snapshot record,
//     Frozen cleared, lease deleted; then the frozen directory is removed.
//
// A crash after 1 leaves Frozen recorded: the next Open tries to finish
// the seal before anything else, so no acknowledged write in either layer
// is lost. A failed seal (a full disk) leaves the volume frozen and
// working, reads falling through the fresh layer to the frozen one; an
// Open that cannot finish it opens the volume that way too (SealPending
// says why), and the next Snapshot, Flatten or Resize retries it first.
func (v *Volume) Snapshot(ctx context.Context, name string) (_ *SealResult, err error) {
	if err := metadata.ValidateName("snapshot", name); err != nil {
		return nil, err
	}
	if v.readOnly {
		return nil, fmt.Errorf("volume %s: %w", v.name, ErrReadOnly)
	}
	v.sealMu.Lock()
	defer v.sealMu.Unlock()
	if v.w == nil {
		return nil, fmt.Errorf("volume %s: %w", v.name, ErrClosed)
	}
	start := time.Now()
	if fn := v.m.opts.OnSeal; fn != nil {
		defer func() { fn(v.name, time.Since(start), err) }()
	}
	if v.frozen != nil {
		if _, err := v.sealFrozen(ctx); err != nil {
			return nil, fmt.Errorf("finishing the previous snapshot of %s: %w", v.name, err)
		}
	}
	snap, frozen, err := v.freeze(name)
	if err != nil {
		return nil, err
	}
	if !frozen {
		return &SealResult{Snapshot: snap, Duration: time.Since(start)}, nil
	}
	res, err := v.sealFrozen(ctx)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s@%s: %w", v.name, name, err)
	}
	res.Duration = time.Since(start)
	return res, nil
}

// freeze is step 1. It records the snapshot at once (and reports frozen
// false) when the writable layer has no writes.
func (v *Volume) freeze(name string) (*metadata.Snapshot, bool, error) {
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	if err := v.w.flush(); err != nil {
		return nil, false, err
	}
	empty := true
	v.w.runs(func(uint64, uint64, uint8) error { empty = false; return errStop })
	rec := *v.rec
	rec.Layers = append([]string(nil), v.rec.Layers...)
	snap := &metadata.Snapshot{Volume: v.name, Name: name, Layers: rec.Layers, Size: rec.Size, Created: time.Now().UTC()}
	if empty {
		err := v.m.cat.Update(func(tx *metadata.Tx) error { return tx.CreateSnapshot(snap) })
		return snap, false, err
	}
	rec.Frozen, rec.FrozenSnapshot = rec.Writable, name
	rec.Writable++
	// The new layer exists (durably, empty) before the transaction names
	// it: a full disk fails the snapshot here with nothing recorded. A
	// directory of that generation can only be a leftover of an earlier
	// attempt whose transaction failed: it never took a write.
	dir := v.m.writableDir(v.name, rec.Writable)
	if err := os.RemoveAll(dir); err != nil {
		return nil, false, err
	}
	w, err := openWritable(dir, rec.Size, rec.BlockSize)
	if err != nil {
		return nil, false, fmt.Errorf("volume %s: new writable layer: %w", v.name, err)
	}
	err = v.m.update(func(tx *metadata.Tx) error {
		if _, err := tx.Snapshot(v.name, name); err == nil {
			return fmt.Errorf("snapshot %s@%s: %w", v.name, name, metadata.ErrExists)
		} else if !errors.Is(err, metadata.ErrNotFound) {
			return err
		}
		cur, err := tx.Volume(v.name)
		if err != nil {
			return err
		}
		rec.Device = cur.Device // set by the serving process
		rec.Activation = cur.Activation
		return tx.PutVolume(&rec)
	})
	if errors.Is(err, ErrOutcomeUnknown) {
		// The catalogue may now name the new layer as writable and this
		// one as frozen: writing on here could put later writes into the
		// snapshot. Stop the volume; both layers stay for the next open,
		// which goes by what the catalogue says (every acknowledged write
		// is in the flushed layer either way).
		err = fmt.Errorf("volume %s: snapshot %s: %w (the volume is stopped: reopen it)", v.name, name, err)
		v.w.fail(err)
		w.close()
		return nil, false, err
	}
	if err != nil {
		w.close()
		os.RemoveAll(dir)
		return nil, false, err
	}
	v.frozen, v.w, v.rec = v.w, w, &rec
	return nil, true, nil
}

// sealFrozen runs steps 2 and 3 for the frozen layer. Callers hold sealMu.
func (v *Volume) sealFrozen(ctx context.Context) (*SealResult, error) {
	rec := v.Record()
	lease, err := v.m.Lease("seal " + v.name)
	if err != nil {
		return nil, err
	}
	defer lease.Release()
	layer, err := v.m.sealWritable(ctx, &rec, v.frozen, lease)
	if err != nil {
		return nil, err
	}
	name := rec.FrozenSnapshot
	layers := append(append([]string(nil), rec.Layers...), layer.Digest)
	snap := &metadata.Snapshot{Volume: v.name, Name: name, Layers: layers, Size: rec.Size, Created: time.Now().UTC()}
	var next metadata.Volume
	err = v.m.update(func(tx *metadata.Tx) error {
		cur, err := tx.Volume(v.name)
		if err != nil {
			return err
		}
		if cur.Frozen != rec.Frozen {
			return fmt.Errorf("volume %s changed under the seal (frozen %d, recorded %d)", v.name, rec.Frozen, cur.Frozen)
		}
		next = *cur
		next.Layers = layers
		next.Frozen, next.FrozenSnapshot = 0, ""
		if err := putLayerOnce(tx, layer); err != nil {
			return err
		}
		if err := tx.PutVolume(&next); err != nil {
			return err
		}
		if err := tx.CreateSnapshot(snap); err != nil {
			return err
		}
		return lease.Commit(tx)
	})
	if errors.Is(err, ErrOutcomeUnknown) {
		// The snapshot may be recorded and the frozen layer no longer
		// named: stop rather than seal it again or keep reading through
		// it; the next open goes by the catalogue.
		err = fmt.Errorf("volume %s: snapshot %s: %w (the volume is stopped: reopen it)", v.name, name, err)
		v.w.fail(err)
		v.frozen.fail(err)
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	chain, err := v.m.openChain(next.Layers, next.Size, next.BlockSize, false)
	if err != nil {
		return nil, err
	}
	v.ioMu.Lock()
	old, oldChain := v.frozen, v.chain
	v.chain, v.frozen, v.rec = chain, nil, &next
	v.ioMu.Unlock()
	oldChain.release() // its layers stay open while reads in flight use them
	old.close()
	if err := v.m.discard(old.dir); err != nil {
		return nil, err
	}
	return &SealResult{Snapshot: snap, Layer: layer}, nil
}

func putLayerOnce(tx *metadata.Tx, l *metadata.Layer) error {
	if _, err := tx.Layer(l.Digest); err == nil {
		return nil
	}
	return tx.PutLayer(l)
}

// sealWritable writes w's live extents as a sealed layer for volume rec
// into the content store, under lease. w must not change meanwhile (it is
// frozen).
func (m *Manager) sealWritable(ctx context.Context, rec *metadata.Volume, w *writable, lease *Lease) (*metadata.Layer, error) {
	bs := uint64(rec.BlockSize)
	return m.writeLayer(ctx, rec, lease, func(lw *snapshot.Writer) error {
		buf := make([]byte, 1<<20)
		return w.runs(func(start, count uint64, st uint8) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			if st == stZero {
				return lw.AddZero(start, count)
			}
			return copyBlocks(ctx, lw, buf, bs, start, count, w.readData)
		})
	})
}

var errStop = errors.New("stop")

// copyBlocks adds count data blocks from start to lw, reading them with
// read in pieces of len(buf).
func copyBlocks(ctx context.Context, lw *snapshot.Writer, buf []byte, bs, start, count uint64, read func(p []byte, off uint64) error) error {
	for count > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(count, uint64(len(buf))/bs)
		p := buf[:n*bs]
		if err := read(p, start*bs); err != nil {
			return err
		}
		if err := lw.AddData(start, p); err != nil {
			return err
		}
		start += n
		count -= n
	}
	return nil
}

// writeLayer builds a layer for volume rec with fill and commits it into
// the content store, its digest added to lease before it appears there.
func (m *Manager) writeLayer(ctx context.Context, rec *metadata.Volume, lease *Lease, fill func(*snapshot.Writer) error) (*metadata.Layer, error) {
	codec, err := snapshot.ParseCodec(rec.Codec)
	if err != nil {
		return nil, err
	}
	bw, err := m.blobs.NewBlob()
	if err != nil {
		return nil, err
	}
	lw, err := snapshot.NewWriter(bw, snapshot.WriterOptions{BlockSize: rec.BlockSize, ChunkSize: rec.ChunkSize,
		Codec: codec, VirtualSize: rec.Size, Concurrency: m.opts.Concurrency})
	if err != nil {
		bw.Abort()
		return nil, err
	}
	if err := fill(lw); err != nil {
		lw.Abort()
		bw.Abort()
		return nil, err
	}
	info, err := lw.Close()
	if err != nil {
		bw.Abort()
		return nil, err
	}
	digest, size, err := lease.commitBlob(bw)
	if err != nil {
		return nil, err
	}
	return &metadata.Layer{Digest: digest, StoredBytes: uint64(size), VirtualSize: rec.Size,
		DataBytes: info.DataBytes, Extents: uint64(info.Extents), State: "full", Created: time.Now().UTC()}, nil
}

// Flatten merges the volume's chain into one layer, so that a chain grown
// long costs one layer's index again. Snapshots keep their own chains;
// the writable layer is untouched.
func (v *Volume) Flatten(ctx context.Context) (*metadata.Layer, error) {
	if v.readOnly {
		return nil, fmt.Errorf("volume %s: %w", v.name, ErrReadOnly)
	}
	v.sealMu.Lock()
	defer v.sealMu.Unlock()
	if v.w == nil {
		return nil, fmt.Errorf("volume %s: %w", v.name, ErrClosed)
	}
	if v.frozen != nil {
		if _, err := v.sealFrozen(ctx); err != nil {
			return nil, fmt.Errorf("finishing the previous snapshot of %s: %w", v.name, err)
		}
	}
	// The new layer is built from the current chain with I/O running:
	// the chain only changes under sealMu, which is held.
	v.ioMu.RLock()
	rec := *v.rec
	rec.Layers = append([]string(nil), v.rec.Layers...)
	cref := v.chain
	cref.acquire()
	v.ioMu.RUnlock()
	defer cref.release()
	chain := cref.c
	if len(rec.Layers) == 0 {
		return nil, nil
	}
	intent, err := v.m.addIntent("flatten", v.name, nil)
	if err != nil {
		return nil, err
	}
	lease, err := v.m.Lease("flatten " + v.name)
	if err != nil {
		v.m.dropIntent(intent)
		return nil, err
	}
	defer lease.Release()
	bs := uint64(rec.BlockSize)
	layer, err := v.m.writeLayer(ctx, &rec, lease, func(lw *snapshot.Writer) error {
		buf := make([]byte, 1<<20)
		for _, e := range chain.Index() {
			err := copyBlocks(ctx, lw, buf, bs, e.Start, uint64(e.Count), func(p []byte, off uint64) error {
				_, err := chain.ReadAt(p, int64(off))
				return err
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		v.m.dropIntent(intent)
		return nil, err
	}
	rec.Layers = []string{layer.Digest}
	if err := v.m.commit(intent, func(tx *metadata.Tx) error {
		if err := putLayerOnce(tx, layer); err != nil {
			return err
		}
		cur, err := tx.Volume(v.name)
		if err != nil {
			return err
		}
		rec.Device, rec.Activation = cur.Device, cur.Activation // set by the serving process, the daemon
		if err := tx.PutVolume(&rec); err != nil {
			return err
		}
		return lease.Commit(tx)
	}); err != nil {
		return nil, err
	}
	chain2, err := v.m.openChain(rec.Layers, rec.Size, rec.BlockSize, false)
	if err != nil {
		v.ioMu.Lock()
		v.broken = fmt.Errorf("volume %s: flattened chain: %w (reopen the volume)", v.name, err)
		v.ioMu.Unlock()
		return nil, err
	}
	// I/O pauses for the pointer swap only.
	v.ioMu.Lock()
	old := v.chain
	v.rec, v.chain = &rec, chain2
	v.ioMu.Unlock()
	old.release()
	return layer, nil
}
