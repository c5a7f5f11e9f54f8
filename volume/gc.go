package volume

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"path/filepath"

	"github.com/obdvol/obdvol/metadata"
)

// GCResult lists what gc removed (or would remove, with dry run).
type GCResult struct {
	Blobs []string `json:"blobs"`
	Bytes uint64   `json:"bytes"`
}

// GC removes blobs and layer records that no volume or snapshot
// references. The catalogue decides: a blob is removed only after its
// layer record is gone, in that order, so a crash leaves at worst an
// unreferenced blob for the next gc. Sealing processes hold gc.lock shared
// from writing a blob until it is referenced; gc takes it exclusively and
// fails at once if a seal is running.
func (m *Manager) GC(ctx context.Context, dryRun bool, sizeOf func(digest string) int64) (*GCResult, error) {
	lock, err := lockFile(filepath.Join(m.root, "gc.lock"), "the content store (a snapshot is being written)")
	if err != nil {
		return nil, err
	}
	defer lock.release()
	res := &GCResult{Blobs: []string{}}
	var refs map[string]bool
	err = m.cat.Update(func(tx *metadata.Tx) error {
		if refs, err = tx.ReferencedLayers(); err != nil {
			return err
		}
		if dryRun {
			return nil
		}
		layers, err := tx.Layers()
		if err != nil {
			return err
		}
		for _, l := range layers {
			if !refs[l.Digest] {
				if err := tx.DeleteLayer(l.Digest); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	blobs, err := m.blobs.List()
	if err != nil {
		return nil, err
	}
	for _, d := range blobs {
		if refs[d] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		res.Blobs = append(res.Blobs, d)
		if sizeOf != nil {
			res.Bytes += uint64(max(0, sizeOf(d)))
		}
		if !dryRun {
			m.forgetLayer(d)
			if err := m.blobs.Remove(d); err != nil {
				return res, err
			}
		}
	}
	return res, nil
}

func (m *Manager) forgetLayer(d string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ol, ok := m.layers[d]; ok {
		m.cache.Drop(ol.l)
		ol.closer.Close()
		delete(m.layers, d)
	}
}

// LayerCheck is the outcome of verifying one layer.
type LayerCheck struct {
	Digest string `json:"digest"`
	Chunks int    `json:"chunks"`
	Bytes  int64  `json:"bytes"`
	Error  string `json:"error,omitempty"`
}

// Verify re-reads every byte of each layer: the whole blob against its
// sha256 digest, and every chunk against its crc32c and decompressed
// length. It returns one check per layer and an error if any failed.
func (m *Manager) Verify(ctx context.Context, digests []string) ([]LayerCheck, error) {
	var checks []LayerCheck
	var failed int
	for _, d := range digests {
		if err := ctx.Err(); err != nil {
			return checks, err
		}
		c := LayerCheck{Digest: d}
		if err := m.verifyLayer(d, &c); err != nil {
			c.Error = err.Error()
			failed++
		}
		checks = append(checks, c)
	}
	if failed > 0 {
		return checks, fmt.Errorf("%d of %d layers failed verification: %w", failed, len(digests), ErrCorrupt)
	}
	return checks, nil
}

// ErrCorrupt is returned when stored data fails a checksum.
var ErrCorrupt = fmt.Errorf("data corrupt")

func (m *Manager) verifyLayer(d string, c *LayerCheck) error {
	src, closer, err := m.blobs.OpenLayer(d)
	if err != nil {
		return err
	}
	defer closer.Close()
	h := sha256.New()
	n, err := io.Copy(h, io.NewSectionReader(src, 0, src.Size()))
	if err != nil {
		return err
	}
	c.Bytes = n
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d {
		return fmt.Errorf("blob hashes to %s", got)
	}
	l, err := m.Layer(d)
	if err != nil {
		return err
	}
	c.Chunks = l.Chunks()
	return l.Verify()
}
