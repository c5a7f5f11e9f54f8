package volume

import (
	"errors"
	"os"
	"path/filepath"
	"slices"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/snapshot"
)

// gcIndexFiles removes the merged-index files (root/index) of chains
// that no volume or snapshot in the catalogue has and that this manager
// does not have open, and every temp file of their writers. It is
// derived data, so no removal can lose anything, and no lock is needed:
// a process that maps a file keeps a valid mapping after the unlink
// (Linux keeps the inode while it is mapped), one whose chain was
// recorded after the catalogue was read here rebuilds the file at its
// next open, and a writer whose temp file is removed fails its rename
// and serves the index from its heap. A file it cannot remove is left
// (and not listed): derived data never fails a gc.
func (m *Manager) gcIndexFiles(dryRun bool, res *GCResult) error {
	dir := filepath.Join(m.root, "index")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil // none, or not a directory: nothing derived to remove
	}
	keep := map[snapshot.ChainKey]bool{}
	err = m.cat.View(func(tx *metadata.Tx) error {
		vols, err := tx.Volumes()
		if err != nil {
			return err
		}
		bs := map[string]uint32{}
		for _, v := range vols {
			bs[v.Name] = v.BlockSize
			keep[snapshot.NewChainKey(v.BlockSize, v.Size, v.Layers)] = true
		}
		snaps, err := tx.AllSnapshots()
		if err != nil {
			return err
		}
		for _, s := range snaps {
			if b, ok := bs[s.Volume]; ok {
				keep[snapshot.NewChainKey(b, s.Size, s.Layers)] = true
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	m.chainMu.Lock()
	for k := range m.chains {
		keep[k] = true
	}
	m.chainMu.Unlock()
	for _, e := range ents {
		name := e.Name()
		if k, ok := snapshot.IsIndexFileName(name); !(ok && !keep[k]) && !snapshot.IsIndexTempFile(name) {
			continue
		}
		path := filepath.Join(dir, name)
		if !dryRun {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				continue // derived data: left for the next gc
			}
		}
		res.IndexFiles = append(res.IndexFiles, path)
	}
	slices.Sort(res.IndexFiles)
	return nil
}
