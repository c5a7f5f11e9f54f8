package volume

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
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
// snapshot name, and continues on a fresh empty writable layer. Writes
// wait while it runs; reads continue. A layer with no writes records the
// snapshot without a new layer.
//
// Order (each step durable before the next): flush; intent; layer blob
// (temp, fsync, rename by digest); one catalogue transaction (layer,
// chain, snapshot, new writable generation, intent removed); then the old
// writable directory is removed. A crash before the transaction leaves the
// volume as it was (Recover drops the intent; gc drops the orphan blob).
func (v *Volume) Snapshot(ctx context.Context, name string) (*SealResult, error) {
	if err := metadata.ValidateName("snapshot", name); err != nil {
		return nil, err
	}
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	start := time.Now()
	if err := v.m.cat.View(func(tx *metadata.Tx) error {
		if _, err := tx.Snapshot(v.name, name); err == nil {
			return fmt.Errorf("snapshot %s@%s: %w", v.name, name, metadata.ErrExists)
		} else if !errors.Is(err, metadata.ErrNotFound) {
			return err
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := v.w.flush(); err != nil {
		return nil, err
	}
	intent, err := v.m.addIntent("snapshot", v.name, map[string]string{"snapshot": name, "writable": strconv.FormatUint(v.rec.Writable, 10)})
	if err != nil {
		return nil, err
	}
	gcl, err := sharedLock(filepath.Join(v.m.root, "gc.lock"))
	if err != nil {
		return nil, err
	}
	defer gcl.release()
	layer, err := v.sealWritable(ctx)
	if err != nil {
		v.m.dropIntent(intent)
		return nil, fmt.Errorf("snapshot %s@%s: %w", v.name, name, err)
	}
	rec := *v.rec
	rec.Layers = append([]string(nil), v.rec.Layers...)
	if layer != nil {
		rec.Layers = append(rec.Layers, layer.Digest)
	}
	rec.Writable++
	snap := &metadata.Snapshot{Volume: v.name, Name: name, Layers: rec.Layers, Size: rec.Size, Created: time.Now().UTC()}
	if err := v.m.commit(intent, func(tx *metadata.Tx) error {
		if layer != nil {
			if err := putLayerOnce(tx, layer); err != nil {
				return err
			}
		}
		if err := tx.PutVolume(&rec); err != nil {
			return err
		}
		return tx.CreateSnapshot(snap)
	}); err != nil {
		return nil, err
	}
	if err := v.swapLocked(&rec); err != nil {
		return nil, err
	}
	return &SealResult{Snapshot: snap, Layer: layer, Duration: time.Since(start)}, nil
}

// swapLocked moves the open volume onto rec's chain and writable
// generation, closing and removing the previous writable layer.
func (v *Volume) swapLocked(rec *metadata.Volume) error {
	chain, err := v.m.Chain(rec.Layers, rec.Size, rec.BlockSize)
	if err != nil {
		return err
	}
	w, err := openWritable(v.m.writableDir(v.name, rec.Writable), rec.Size, rec.BlockSize)
	if err != nil {
		return err
	}
	old := v.w
	v.rec, v.chain, v.w, v.size = rec, chain, w, rec.Size
	old.close()
	return v.m.discard(old.dir)
}

func putLayerOnce(tx *metadata.Tx, l *metadata.Layer) error {
	if _, err := tx.Layer(l.Digest); err == nil {
		return nil
	}
	return tx.PutLayer(l)
}

// sealWritable writes the writable layer's live extents as a sealed layer
// into the content store. It returns nil when there is nothing to seal.
func (v *Volume) sealWritable(ctx context.Context) (*metadata.Layer, error) {
	empty := true
	v.w.runs(func(uint64, uint64, uint8) error { empty = false; return errStop })
	if empty {
		return nil, nil
	}
	return v.m.writeLayer(ctx, v.rec, func(lw *snapshot.Writer) error {
		buf := make([]byte, 1<<20)
		return v.w.runs(func(start, count uint64, st uint8) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			if st == stZero {
				return lw.AddZero(start, count)
			}
			return copyBlocks(ctx, lw, buf, v.bs, start, count, func(p []byte, off uint64) error {
				return v.w.readData(p, off)
			})
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
// the content store.
func (m *Manager) writeLayer(ctx context.Context, rec *metadata.Volume, fill func(*snapshot.Writer) error) (*metadata.Layer, error) {
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
	digest, size, err := bw.Commit("")
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
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	if len(v.rec.Layers) == 0 {
		return nil, nil
	}
	intent, err := v.m.addIntent("flatten", v.name, nil)
	if err != nil {
		return nil, err
	}
	gcl, err := sharedLock(filepath.Join(v.m.root, "gc.lock"))
	if err != nil {
		return nil, err
	}
	defer gcl.release()
	chain := v.chain
	layer, err := v.m.writeLayer(ctx, v.rec, func(lw *snapshot.Writer) error {
		buf := make([]byte, 1<<20)
		for _, e := range chain.Index() {
			err := copyBlocks(ctx, lw, buf, v.bs, e.Start, uint64(e.Count), func(p []byte, off uint64) error {
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
	rec := *v.rec
	rec.Layers = []string{layer.Digest}
	if err := v.m.commit(intent, func(tx *metadata.Tx) error {
		if err := putLayerOnce(tx, layer); err != nil {
			return err
		}
		return tx.PutVolume(&rec)
	}); err != nil {
		return nil, err
	}
	chain2, err := v.m.Chain(rec.Layers, rec.Size, rec.BlockSize)
	if err != nil {
		return nil, err
	}
	v.rec, v.chain = &rec, chain2
	return layer, nil
}
