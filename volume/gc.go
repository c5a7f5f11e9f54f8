package volume

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/snapshot"
)

// GCResult lists what gc removed (or would remove, with dry run).
type GCResult struct {
	Blobs []string `json:"blobs"` // complete blobs no chain or lease references
	Bytes uint64   `json:"bytes"` // their size, as sizeOf says
	// Lazy are the digests whose lazily fetched partial files were removed:
	// no chain or lease references them, or the complete blob is local.
	Lazy []string `json:"lazy"`
	// ExpiredLeases are the leases whose owner's lock was free: their
	// owner died before committing or releasing them.
	ExpiredLeases []string `json:"expired_leases"`
	// Leftovers are the temp and partial files of writers that are gone
	// (a killed seal or flatten, a failed pull) and orphan present-maps.
	Leftovers     []string `json:"leftovers"`
	LeftoverBytes uint64   `json:"leftover_bytes"`
	// IndexFiles are the merged-index files (derived data, index/) of
	// chains no volume or snapshot has any more, and temp files of their
	// writers.
	IndexFiles []string `json:"index_files"`
}

// lazyFiles is implemented by content stores that keep lazily fetched
// blobs beside complete ones (repo.Blobs): gc removes the lazy files
// nothing references.
type lazyFiles interface {
	LazyDigests() ([]string, error)
	RemoveLazy(digest string) error
	Has(digest string) bool
}

// blobDetacher is implemented by content stores that can move a blob out
// of the store by a rename (repo.Blobs): gc then holds the catalogue's
// lock only for renames and unlinks the blobs after it.
type blobDetacher interface {
	Detach(digest, dir string) error
}

// leftoverCleaner is implemented by content stores that keep temp and
// partial files (repo.Blobs): CleanLeftovers removes (or, with dryRun,
// lists) those whose writer is gone, which the store knows by their
// locks, never by their age.
type leftoverCleaner interface {
	CleanLeftovers(dryRun bool) (paths []string, bytes int64, err error)
}

// GC removes what the catalogue no longer needs:
//
//  1. In one catalogue transaction (so that no lease, clone or pull can
//     slip in between the decision and the removal; see metadata's lease
//     invariants): drop the leases whose owner's lock is free; take as
//     referenced every digest of a chain or of a live lease; delete the
//     other layer records, then take their blobs out of the store (a
//     rename into trash/gc-*) and remove their lazy files.
//  2. Unlink the trashed blobs, outside the transaction (a crash leaves
//     them to Recover, which empties the trash).
//  3. Then temp and partial files whose writer is gone
//     (their lock is free) and present-maps whose lazy file is gone.
//
// A crash in 1 before the commit leaves layer records of removed blobs,
// which nothing references: the next gc deletes them. Seals, flattens
// and pulls run meanwhile: their leases keep what they write or fetch.
func (m *Manager) GC(ctx context.Context, dryRun bool, sizeOf func(digest string) int64) (*GCResult, error) {
	var res *GCResult
	var stopped error
	var trash string // where removed blobs wait for their unlink
	if _, ok := m.blobs.(blobDetacher); ok && !dryRun {
		dir := filepath.Join(m.root, "trash")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		var err error
		if trash, err = os.MkdirTemp(dir, "gc-"); err != nil {
			return nil, err
		}
		// A crash leaves it for Recover, which empties the trash.
		defer os.RemoveAll(trash)
	}
	// A dry run only reads: a write transaction, even one that changes
	// nothing, commits a new meta page and freelist.
	run := m.cat.Update
	if dryRun {
		run = m.cat.View
	}
	err := run(func(tx *metadata.Tx) error {
		res = &GCResult{Blobs: []string{}, Lazy: []string{}, ExpiredLeases: []string{}, Leftovers: []string{}, IndexFiles: []string{}}
		refs, err := m.liveDigests(tx, dryRun, res)
		if err != nil {
			return err
		}
		if !dryRun {
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
		}
		// Removing inside the transaction keeps the catalogue's lock: a
		// lease waits, then looks for the blob and finds it gone.
		stopped = m.removeUnreferenced(ctx, refs, dryRun, trash, sizeOf, res)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !dryRun {
		// Outside the transaction: Layer holds m.mu while it may read
		// the catalogue (to find a remote origin).
		for _, d := range res.Blobs {
			m.forgetLayer(d)
		}
	}
	if stopped != nil {
		return res, stopped
	}
	if lc, ok := m.blobs.(leftoverCleaner); ok {
		paths, n, err := lc.CleanLeftovers(dryRun)
		res.Leftovers = append(res.Leftovers, leftoversBeyond(paths, res.Lazy)...)
		res.LeftoverBytes += uint64(max(0, n))
		if err != nil {
			return res, err
		}
	}
	return res, m.gcIndexFiles(dryRun, res)
}

// leftoversBeyond returns paths without the files of the digests in lazy:
// a present-map left without its lazy file belongs to a digest that
// removeUnreferenced already reports (and, unless dry run, removed), so
// a dry run and a real one list the same things once.
func leftoversBeyond(paths, lazy []string) []string {
	if len(lazy) == 0 {
		return paths
	}
	gone := map[string]bool{}
	for _, d := range lazy {
		gone[strings.TrimPrefix(d, "sha256:")] = true
	}
	out := paths[:0:0]
	for _, p := range paths {
		base := filepath.Base(p)
		if i := strings.IndexByte(base, '.'); i > 0 && gone[base[:i]] && filepath.Base(filepath.Dir(p)) == "partial" {
			continue
		}
		out = append(out, p)
	}
	return out
}

// liveDigests returns every digest a chain or a live lease names, and
// drops (records in res) the expired leases and stray lease lock files.
func (m *Manager) liveDigests(tx *metadata.Tx, dryRun bool, res *GCResult) (map[string]bool, error) {
	refs, err := tx.ReferencedLayers()
	if err != nil {
		return nil, err
	}
	leases, err := tx.Leases()
	if err != nil {
		return nil, err
	}
	dir := m.leaseDir()
	known := map[string]bool{}
	for _, l := range leases {
		known[l.ID] = true
		owner, err := checkLeaseOwner(dir, l.ID, !dryRun)
		if err != nil {
			return nil, err
		}
		if owner == ownerAlive {
			for _, d := range l.Digests {
				refs[d] = true
			}
			continue
		}
		res.ExpiredLeases = append(res.ExpiredLeases, l.ID)
		if !dryRun {
			if err := tx.DeleteLease(l.ID); err != nil {
				return nil, err
			}
		}
	}
	// Lock files with no record: an owner that died between locking and
	// recording, or one that has just locked and will record next (its
	// flock is held, so it is kept).
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".lock")
		if !ok || known[id] || metadata.ValidateLeaseID(id) != nil || dryRun {
			continue
		}
		if _, err := checkLeaseOwner(dir, id, true); err != nil {
			return nil, err
		}
	}
	return refs, nil
}

// removeUnreferenced removes the blobs and lazy files of digests not in
// refs; blobs go into trash when it is set (the store is a blobDetacher).
// It stops, returning ctx's error, when ctx ends; what it removed until
// then stays removed (the caller commits).
func (m *Manager) removeUnreferenced(ctx context.Context, refs map[string]bool, dryRun bool, trash string, sizeOf func(string) int64, res *GCResult) error {
	blobs, err := m.blobs.List()
	if err != nil {
		return err
	}
	for _, d := range blobs {
		if refs[d] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		res.Blobs = append(res.Blobs, d)
		if sizeOf != nil {
			res.Bytes += uint64(max(0, sizeOf(d)))
		}
		var err error
		switch {
		case dryRun:
		case trash != "":
			err = m.blobs.(blobDetacher).Detach(d, trash)
		default:
			err = m.blobs.Remove(d)
		}
		if err != nil {
			return err
		}
	}
	lf, ok := m.blobs.(lazyFiles)
	if !ok {
		return nil
	}
	lazy, err := lf.LazyDigests()
	if err != nil {
		return err
	}
	for _, d := range lazy {
		if refs[d] && !lf.Has(d) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		res.Lazy = append(res.Lazy, d)
		if !dryRun {
			if err := lf.RemoveLazy(d); err != nil {
				return err
			}
		}
	}
	return nil
}

// forgetLayer unpins the layer of a blob gc removed and closes it unless
// an open chain still uses it (its file stays readable while open; the
// last release closes it).
func (m *Manager) forgetLayer(d string) {
	m.mu.Lock()
	ol, ok := m.layers[d]
	if ok {
		ol.pinned = false
		if ok = ol.refs <= 0; ok {
			delete(m.layers, d)
		}
	}
	m.mu.Unlock()
	if ok {
		m.closeLayer(ol)
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
	l, err := m.acquireLayer(d, false)
	if err != nil {
		return err
	}
	defer m.releaseLayers([]string{d}, []*snapshot.Layer{l})
	c.Chunks = l.Chunks()
	return l.Verify()
}
