package repo

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Evict drops present pages (punching holes in the file) until at most
// keep bytes stay local, skipping the first and last pages (trailer and
// index live at the end; the header at the start). Only call it on blobs
// that can be fetched again. It returns the bytes freed.
//
// Under the blob's lock: the on-disk map without the dropped pages is
// written durably (fsync, rename, directory fsync), the removal counter
// moves, then the holes are punched. A crash in between leaves pages the
// map does not claim (fetched again), never the reverse. A blob that was
// adopted into the store is complete and verified: it is never touched;
// one being filled (by any process) is left alone too.
func (b *LazyBlob) Evict(keep int64) (int64, error) {
	if err := b.lk.lock(); err != nil {
		if errors.Is(err, errLockGone) {
			return 0, nil // adopted or removed
		}
		return 0, err
	}
	defer b.lk.unlock()
	if !samePath(b.f, b.path) || b.filling.Load() > 0 || b.lk.pinned() {
		return 0, nil // adopted, removed, or being filled
	}
	pg := b.page
	pages := lazyPages(b.size, pg)
	disk := readLazyMap(b.mapPath, pg, b.size)
	over := disk.bytes(pg, b.size) - keep
	var drop pageSet
	for _, r := range disk.runs {
		if over <= 0 {
			break
		}
		lo, hi := max(r.first, 1), min(r.end, pages-1) // pages 1..pages-2 are whole
		if lo >= hi {
			continue
		}
		k := min(hi-lo, (over+pg-1)/pg)
		drop.add(lo, lo+k)
		over -= k * pg
	}
	if len(drop.runs) == 0 {
		return 0, nil
	}
	kept := disk.clone()
	for _, r := range drop.runs {
		kept.remove(r.first, r.end)
	}
	if err := writeLazyMap(b.mapPath, pg, b.size, &kept, true); err != nil {
		return 0, fmt.Errorf("lazy blob %s: %w", b.digest, err)
	}
	b.lk.bump()
	b.mu.Lock()
	b.present, b.seen = kept, b.lk.epoch()
	b.mu.Unlock()
	var freed int64
	for _, r := range drop.runs {
		if err := unix.Fallocate(int(b.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, r.first*pg, (r.end-r.first)*pg); err != nil {
			return freed, fmt.Errorf("lazy blob %s: punch hole: %w", b.digest, err)
		}
		freed += (r.end - r.first) * pg
	}
	return freed, nil
}

func (s *Store) lazyBase(digest string) (string, error) {
	if err := ValidateDigest(digest); err != nil {
		return "", err
	}
	return filepath.Join(s.PartialDir(), digest[len("sha256:"):]), nil
}

// LocalBytes is how many bytes of blob digest this host has: all of a
// complete blob, the present pages of a lazy one, else 0. It reads the
// present-map only (no lock: the map is replaced by rename).
func (s *Store) LocalBytes(digest string) int64 {
	if n, err := s.Size(digest); err == nil {
		return n
	}
	base, err := s.lazyBase(digest)
	if err != nil {
		return 0
	}
	fi, err := os.Stat(base + ".lazy")
	if err != nil {
		return 0
	}
	raw, err := os.ReadFile(base + ".map")
	if err != nil {
		return 0
	}
	pg, size, m, err := decodeLazyMap(raw)
	if err != nil || size != fi.Size() {
		return 0
	}
	return m.bytes(pg, size)
}

// LazyDigests lists the blobs that have lazy files: a partial file, or a
// map or lock left without one (which RemoveLazy also removes).
func (s *Store) LazyDigests() ([]string, error) {
	ents, err := os.ReadDir(s.PartialDir())
	if err != nil {
		return nil, err
	}
	var out []string
	seen := map[string]bool{}
	for _, e := range ents {
		for _, ext := range []string{".lazy", ".map", ".lock"} {
			hex, ok := strings.CutSuffix(e.Name(), ext)
			if d := "sha256:" + hex; ok && !seen[d] && ValidateDigest(d) == nil {
				seen[d] = true
				out = append(out, d)
			}
		}
	}
	return out, nil
}

// RemoveLazy deletes a lazy blob's partial file, map and lock, holding its
// lock: map first, so that a crash never leaves a map without its file.
// A LazyBlob still open on it fails its next fetch with ErrNotFound.
func (s *Store) RemoveLazy(digest string) error {
	base, err := s.lazyBase(digest)
	if err != nil {
		return err
	}
	for tries := 0; tries < 3; tries++ {
		lk, err := openBlobLock(base+".lock", false)
		if errors.Is(err, errLockGone) {
			break // no lock file: nobody has the blob open
		}
		if err != nil {
			return err
		}
		err = lk.lock()
		if err == nil {
			err = removeLazyFiles(base)
			lk.bump()
			os.Remove(lk.path)
			lk.unlock()
		}
		lk.close()
		if !errors.Is(err, errLockGone) { // else removed by its holder meanwhile: look again
			return err
		}
	}
	return removeLazyFiles(base)
}

func removeLazyFiles(base string) error {
	for _, p := range []string{base + ".map", base + ".map.tmp", base + ".lazy"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// EvictLazy shrinks lazy blob digest to at most keep local bytes (its
// pages can be fetched again) and returns the bytes freed. A blob that is
// no longer lazy (adopted meanwhile) frees nothing.
func (s *Store) EvictLazy(digest string, keep int64) (int64, error) {
	if ValidateDigest(digest) != nil {
		return 0, fmt.Errorf("invalid digest %q", digest)
	}
	b, err := s.openLazy(digest, -1, nil, LazyOptions{}, false)
	if err != nil || b == nil {
		return 0, err
	}
	defer b.Close()
	return b.Evict(keep)
}
