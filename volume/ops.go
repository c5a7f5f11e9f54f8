package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/obdvol/obdvol/metadata"
	"golang.org/x/sys/unix"
)

func (m *Manager) addIntent(op, vol string, args map[string]string) (uint64, error) {
	var id uint64
	err := m.cat.Update(func(tx *metadata.Tx) (err error) {
		id, err = tx.AddIntent(&metadata.Intent{Op: op, Volume: vol, Args: args})
		return err
	})
	return id, err
}

func (m *Manager) dropIntent(id uint64) {
	m.cat.Update(func(tx *metadata.Tx) error { return tx.DeleteIntent(id) })
}

// ErrOutcomeUnknown wraps the error of a catalogue transaction whose
// checks passed but whose commit failed (an fdatasync or close error):
// bbolt may already have written its meta page, so the change may be
// visible to the next reader, or lost at a power cut. Nothing may act on
// either outcome: the caller stops the volume (fail-stop) and the next
// open goes by what the catalogue then says.
var ErrOutcomeUnknown = errors.New("catalogue commit failed, outcome unknown")

// testHookAfterCommit, when set, runs after a committed transaction of
// update and may fail it (a test's stand-in for an fdatasync error after
// bbolt wrote its meta page).
var testHookAfterCommit func() error

// update runs fn in one write transaction. An error of fn (or of opening
// the catalogue) means nothing changed; an error after fn succeeded is
// returned wrapping ErrOutcomeUnknown.
func (m *Manager) update(fn func(tx *metadata.Tx) error) error {
	ran := false
	var fnErr error
	err := m.cat.Update(func(tx *metadata.Tx) error {
		ran = true
		fnErr = fn(tx)
		return fnErr
	})
	if err == nil && ran && testHookAfterCommit != nil {
		err = testHookAfterCommit()
	}
	if err != nil && ran && fnErr == nil {
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
	}
	return err
}

// commit runs fn and removes the intent in one transaction.
func (m *Manager) commit(intent uint64, fn func(tx *metadata.Tx) error) error {
	err := m.cat.Update(func(tx *metadata.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return tx.DeleteIntent(intent)
	})
	if err != nil {
		m.dropIntent(intent)
	}
	return err
}

// Recover finishes what crashed processes left: an intent still recorded
// means its catalogue transaction never committed, so the volume is as it
// was before the operation; the intent is dropped (the blob it may have
// written is unreferenced and gc removes it). The directory of a volume
// is removed only when the catalogue positively says it does not exist
// (see removeIfDeleted); a lookup that fails otherwise keeps it and makes
// Recover return an error after looking at the other volumes. Volumes
// locked by a live process are left alone.
func (m *Manager) Recover() (recovered []string, err error) {
	var intents []*metadata.Intent
	if err := m.cat.View(func(tx *metadata.Tx) (err error) { intents, err = tx.Intents(); return }); err != nil {
		return nil, err
	}
	for _, in := range intents {
		lock, err := m.lockVolume(in.Volume)
		if errors.Is(err, ErrInUse) {
			continue // its operation is still running
		}
		if err != nil {
			return recovered, err
		}
		m.dropIntent(in.ID)
		lock.release()
		recovered = append(recovered, fmt.Sprintf("%s %s (rolled back)", in.Op, in.Volume))
	}
	if err := m.emptyTrash(); err != nil {
		return recovered, err
	}
	ents, err := os.ReadDir(filepath.Join(m.root, "volumes"))
	if errors.Is(err, os.ErrNotExist) {
		return recovered, nil
	}
	if err != nil {
		return recovered, err
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		gone, err := m.removeIfDeleted(name)
		if errors.Is(err, metadata.ErrCorrupt) || errors.Is(err, metadata.ErrBusy) {
			// The catalogue itself cannot answer: the same for every
			// volume, so one error, and nothing removed.
			return recovered, err
		}
		if err != nil {
			errs = append(errs, err) // keep the directory; look at the others
			continue
		}
		if gone {
			recovered = append(recovered, "removed leftover directory of volume "+name)
		}
	}
	if len(errs) > 0 {
		return recovered, fmt.Errorf("recovery kept volume directories it could not check: %w", errors.Join(errs...))
	}
	return recovered, nil
}

// removeIfDeleted removes the directory of volume name when the catalogue
// positively says the volume does not exist (metadata.ErrNotFound), as
// checked while holding the volume's lock: a volume being created holds
// that lock until its record is committed, and one in use by another
// process is left alone. Any other answer (a busy catalogue, a record
// that does not decode) keeps the directory and is returned: a writable
// layer is never removed on a guess.
func (m *Manager) removeIfDeleted(name string) (bool, error) {
	lookup := func() error {
		return m.cat.View(func(tx *metadata.Tx) error { _, err := tx.Volume(name); return err })
	}
	// A cheap look first, without the lock, so that recovery does not
	// make a concurrent Open of a live volume fail with ErrInUse.
	err := lookup()
	if err == nil {
		return false, nil
	}
	if !errors.Is(err, metadata.ErrNotFound) {
		return false, fmt.Errorf("volume directory %s: %w", name, err)
	}
	lock, err := m.lockVolume(name)
	if errors.Is(err, ErrInUse) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer lock.release()
	if err := lookup(); err == nil {
		return false, nil // created meanwhile
	} else if !errors.Is(err, metadata.ErrNotFound) {
		return false, fmt.Errorf("volume directory %s: %w", name, err)
	}
	if err := os.RemoveAll(m.volDir(name)); err != nil {
		return false, fmt.Errorf("volume directory %s: %w", name, err)
	}
	return true, nil
}

// SnapshotChain opens vol@snap read-only (no lock needed: layers are
// immutable).
func (m *Manager) SnapshotChain(vol, snap string) (*metadata.Snapshot, error) {
	var s *metadata.Snapshot
	err := m.cat.View(func(tx *metadata.Tx) (err error) { s, err = tx.Snapshot(vol, snap); return })
	return s, err
}

// Rollback returns vol to exactly snapshot snap: its chain becomes the
// snapshot's and it gets a fresh, empty writable layer; no data is
// rewritten, so it takes the same time whatever the volume's size.
// Snapshots newer than snap are removed, which requires force; it is
// refused if a clone was made from one of them. It returns the removed
// snapshot names.
func (m *Manager) Rollback(vol, snap string, force bool) ([]string, error) {
	lock, err := m.lockVolume(vol)
	if err != nil {
		return nil, err
	}
	defer lock.release()
	var removed []string
	var oldGen, oldFrozen uint64
	var socket string
	err = m.cat.Update(func(tx *metadata.Tx) error {
		v, err := tx.Volume(vol)
		if err != nil {
			return err
		}
		// We hold the lock: a server its device record names is gone.
		socket = clearStaleNBD(v)
		if err := refuseUnderDevice(v); err != nil {
			return err
		}
		target, err := tx.Snapshot(vol, snap)
		if err != nil {
			return err
		}
		snaps, err := tx.Snapshots(vol)
		if err != nil {
			return err
		}
		newer := false
		for _, s := range snaps {
			if s.Name == snap {
				newer = true
				continue
			}
			if newer {
				removed = append(removed, s.Name)
			}
		}
		if len(removed) > 0 && !force {
			return fmt.Errorf("rolling %s back to %s would remove newer snapshots %s: use --force: %w",
				vol, snap, strings.Join(removed, ", "), ErrRefused)
		}
		for _, s := range removed {
			clones, err := tx.ClonesOf(vol, s)
			if err != nil {
				return err
			}
			if len(clones) > 0 {
				return fmt.Errorf("snapshot %s@%s is the origin of clone %s: %w", vol, s, strings.Join(clones, ", "), ErrRefused)
			}
		}
		for _, s := range removed {
			if err := tx.DeleteSnapshot(vol, s); err != nil {
				return err
			}
		}
		oldGen, oldFrozen = v.Writable, v.Frozen
		v.Frozen, v.FrozenSnapshot = 0, ""
		v.Layers = append([]string(nil), target.Layers...)
		v.Size = target.Size
		v.Writable++
		return tx.PutVolume(v)
	})
	if err != nil {
		return nil, err
	}
	removeStaleSocket(socket)
	if oldFrozen != 0 {
		if err := m.discard(m.writableDir(vol, oldFrozen)); err != nil {
			return removed, err
		}
	}
	return removed, m.discard(m.writableDir(vol, oldGen))
}

// Delete removes a volume and its snapshots. Layers stay in the store
// while anything else references them (gc removes the rest). Refused when
// clones were made from its snapshots, unless force (the clones keep their
// layers; only their origin becomes history).
func (m *Manager) Delete(vol string, force bool) error {
	lock, err := m.lockVolume(vol)
	if err != nil {
		return err
	}
	defer lock.release()
	var socket string
	err = m.cat.Update(func(tx *metadata.Tx) error {
		v, err := tx.Volume(vol)
		if err != nil {
			return err
		}
		// We hold the lock: a server its device record names is gone.
		socket = clearStaleNBD(v)
		if err := refuseUnderDevice(v); err != nil {
			return err
		}
		clones, err := tx.ClonesOf(vol, "")
		if err != nil {
			return err
		}
		if len(clones) > 0 && !force {
			return fmt.Errorf("volume %s has clones %s (they keep their data): use --force: %w", vol, strings.Join(clones, ", "), ErrRefused)
		}
		return tx.DeleteVolume(vol)
	})
	if err != nil {
		return err
	}
	removeStaleSocket(socket)
	return m.discard(m.volDir(vol))
}

// DeleteSnapshot removes snapshot vol@snap. Its layers stay while the
// volume's chain or another snapshot or clone uses them. Refused when a
// clone was made from it, unless force.
func (m *Manager) DeleteSnapshot(vol, snap string, force bool) error {
	return m.cat.Update(func(tx *metadata.Tx) error {
		if _, err := tx.Snapshot(vol, snap); err != nil {
			return err
		}
		clones, err := tx.ClonesOf(vol, snap)
		if err != nil {
			return err
		}
		if len(clones) > 0 && !force {
			return fmt.Errorf("snapshot %s@%s is the origin of clone %s (it keeps its data): use --force: %w",
				vol, snap, strings.Join(clones, ", "), ErrRefused)
		}
		return tx.DeleteSnapshot(vol, snap)
	})
}

// Resize changes the volume's size. Shrinking drops data past the new end
// and requires shrink. Grown space reads as zeros.
//
// Order (each step durable before the next; the catalogue's size is the
// truth, and blocks of the writable layer past it are ignored at open):
//
//	grow:   1. a zero extent for the new range is journaled (flushed);
//	        2. one transaction records the new size;
//	        3. the data file is extended.
//	shrink: 1. one transaction records the new size;
//	        2. the bitmap forgets the blocks past the end and the data
//	           file is truncated.
//
// A crash before the transaction leaves the old volume intact (a journaled
// zero extent past the old end is ignored at open); a crash after it leaves
// the new size, and open finishes step 3 / 2 (extends or truncates the data
// file to the recorded size).
func (m *Manager) Resize(vol string, size uint64, shrink bool) error {
	v, err := m.Open(vol)
	if err != nil {
		return err
	}
	defer v.Close()
	v.sealMu.Lock()
	defer v.sealMu.Unlock()
	if err := refuseUnderDevice(v.rec); err != nil {
		return err // Open cleared a stale NBD record: a dead ublk server's is left
	}
	if err := checkSize(size, v.rec.BlockSize); err != nil {
		return err
	}
	if size < v.size && !shrink {
		return fmt.Errorf("shrinking %s from %d to %d bytes drops data: use --shrink: %w", vol, v.size, size, ErrRefused)
	}
	if v.frozen != nil {
		// The frozen layer is sized like the old volume: seal it first.
		if _, err := v.sealFrozen(context.Background()); err != nil {
			return fmt.Errorf("finishing the previous snapshot of %s: %w", vol, err)
		}
	}
	v.ioMu.Lock()
	defer v.ioMu.Unlock()
	old := v.size
	if size > old {
		if err := v.w.growZero(old, size); err != nil {
			v.w.setBlocks(old)
			return err
		}
	}
	if err := resizeHook("before-commit"); err != nil {
		return err
	}
	rec := *v.rec
	rec.Size = size
	err = m.cat.Update(func(tx *metadata.Tx) error {
		cur, err := tx.Volume(vol)
		if err != nil {
			return err
		}
		if cur.Writable != rec.Writable || cur.Size != old {
			return fmt.Errorf("volume %s changed under the resize", vol)
		}
		rec.Device, rec.Activation = cur.Device, cur.Activation // set by the serving process, the daemon
		return tx.PutVolume(&rec)
	})
	if err != nil {
		if size > old {
			v.w.setBlocks(old)
		}
		return err
	}
	if err := resizeHook("committed"); err != nil {
		return err
	}
	if err := v.w.setSize(size); err != nil {
		return err
	}
	chain, err := m.openChain(rec.Layers, rec.Size, rec.BlockSize, false)
	if err != nil {
		v.broken = fmt.Errorf("volume %s: chain after resize: %w (reopen the volume)", vol, err)
		return v.broken
	}
	v.chain.release() // reads in flight hold their own references
	v.rec, v.chain, v.size = &rec, chain, size
	return nil
}

// Grow grows the open volume to size bytes in place, with I/O running:
// the online grow of a served volume (obdvol resize of an active volume,
// asked of the daemon that holds it open). Grown space reads as zeros.
//
// Order, as Resize's grow (the catalogue's size is the truth):
//
//  0. the merged index of the new chain (its key holds the size) is
//     opened: a failure here changes nothing;
//  1. a zero extent for the new range is journaled (flushed): nothing a
//     lower layer had past the old end may reappear;
//  2. one transaction records the new size;
//  3. the size and chain pointers are swapped (I/O pauses for that only;
//     before it every request sees the old size, and requests past it
//     fail with ErrRange, so nobody touches the new blocks meanwhile);
//  4. the data file is extended (best effort: reads past its end read
//     zeros, writes extend it, and the next open extends it).
//
// A failure before or in step 2 leaves the old size in the volume and
// returns the error; if the commit's outcome is unknown (ErrOutcomeUnknown)
// the catalogue may say either size, and both are safe: the zero extent is
// durable, so the next open of the new size reads zeros past the old end,
// and this process goes on with the old size (a later snapshot records it
// again). A smaller size is refused with ErrRefused (shrinking a disk
// under its filesystem loses data: deactivate, resize --shrink,
// activate); the same size does nothing.
func (v *Volume) Grow(size uint64) error {
	if v.readOnly {
		return fmt.Errorf("volume %s: %w", v.name, ErrReadOnly)
	}
	v.sealMu.Lock()
	defer v.sealMu.Unlock()
	v.ioMu.RLock()
	w, old, broken := v.w, v.size, v.broken
	bs := v.rec.BlockSize
	v.ioMu.RUnlock()
	switch {
	case w == nil:
		return fmt.Errorf("volume %s: %w", v.name, ErrClosed)
	case broken != nil:
		return broken
	}
	if err := w.writeErr(); err != nil {
		return fmt.Errorf("volume %s: %w", v.name, err)
	}
	if err := checkSize(size, bs); err != nil {
		return err
	}
	if size < old {
		return fmt.Errorf("volume %s is in use: shrinking it from %d to %d bytes under its user loses data (deactivate, resize --shrink, activate): %w",
			v.name, old, size, ErrRefused)
	}
	if size == old {
		return nil
	}
	if v.frozen != nil {
		// The frozen layer is sized like the old volume: seal it first.
		if _, err := v.sealFrozen(context.Background()); err != nil {
			return fmt.Errorf("finishing the previous snapshot of %s: %w", v.name, err)
		}
	}
	// The chain and record change only under sealMu, which is held.
	v.ioMu.RLock()
	rec := *v.rec
	rec.Layers = append([]string(nil), v.rec.Layers...)
	v.ioMu.RUnlock()
	chain, err := v.m.openChain(rec.Layers, size, rec.BlockSize, false)
	if err != nil {
		return fmt.Errorf("volume %s: chain of the grown volume: %w", v.name, err)
	}
	undo := func(err error) error {
		w.setBlocks(old)
		chain.release()
		return err
	}
	if err := w.growZero(old, size); err != nil {
		return undo(err)
	}
	if err := resizeHook("before-commit"); err != nil {
		return undo(err)
	}
	rec.Size = size
	err = v.m.update(func(tx *metadata.Tx) error {
		cur, err := tx.Volume(v.name)
		if err != nil {
			return err
		}
		if cur.Writable != rec.Writable || cur.Size != old {
			return fmt.Errorf("volume %s changed under the grow", v.name)
		}
		rec.Device, rec.Activation = cur.Device, cur.Activation // set by the serving process, the daemon
		return tx.PutVolume(&rec)
	})
	if err != nil {
		return undo(fmt.Errorf("volume %s: grow to %d bytes: %w", v.name, size, err))
	}
	if err := resizeHook("committed"); err != nil {
		// Stands for a crash after the commit: the process is gone and
		// the next open goes by the catalogue.
		v.ioMu.Lock()
		v.broken = fmt.Errorf("volume %s: %w", v.name, err)
		v.ioMu.Unlock()
		chain.release()
		return err
	}
	v.ioMu.Lock()
	oldChain := v.chain
	v.rec, v.chain, v.size = &rec, chain, size
	v.ioMu.Unlock()
	oldChain.release() // reads in flight hold their own references
	w.data.Truncate(int64(size))
	return nil
}

// resizeHook is called between Resize's steps; tests make it fail to
// stand for a crash there.
var resizeHook = func(step string) error { return nil }

// WritableUsage is the disk space of a volume's writable layer, read
// without opening (or locking) the volume.
func (m *Manager) WritableUsage(rec *metadata.Volume) uint64 {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(m.writableDir(rec.Name, rec.Writable), "data"), &st); err != nil {
		return 0
	}
	return uint64(st.Blocks) * 512
}

// emptyTrash removes directories discarded by processes that exited (or
// crashed) before their background removal finished. A directory still
// being removed by a live process is harmless to remove twice.
func (m *Manager) emptyTrash() error {
	ents, err := os.ReadDir(filepath.Join(m.root, "trash"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(m.root, "trash", e.Name())); err != nil {
			return err
		}
	}
	return nil
}
