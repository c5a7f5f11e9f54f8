package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// partialPath is where a resumable download of digest keeps its bytes.
func (s *Store) partialPath(digest string) (string, error) {
	if err := ValidateDigest(digest); err != nil {
		return "", err
	}
	return filepath.Join(s.PartialDir(), digest[len("sha256:"):]+".part"), nil
}

// openPartial opens (creating it) the partial file of digest, holding an
// exclusive flock on it, so that two pulls of the same blob (goroutines or
// processes) never write one file at once: the second waits, polling
// until ctx ends. It returns a nil file and no error when the blob became
// complete in the store while waiting.
//
// The lock is on the open file; a waiter that wins the lock checks that
// the path still names the file it locked (the holder may have renamed it
// into the store or removed it) and opens it again if not.
func (s *Store) openPartial(ctx context.Context, digest string) (*os.File, error) {
	path, err := s.partialPath(digest)
	if err != nil {
		return nil, err
	}
	for {
		if s.Has(digest) {
			return nil, nil
		}
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("content store: %w", err)
		}
		if err := lockWait(ctx, f); err != nil {
			f.Close()
			return nil, err
		}
		if samePath(f, path) {
			if s.Has(digest) { // completed while we waited: the file is of no use
				os.Remove(path)
				f.Close()
				return nil, nil
			}
			return f, nil
		}
		f.Close() // renamed or removed by the previous holder: look again
	}
}

// lockWait takes an exclusive flock on f, polling while another holds it.
func lockWait(ctx context.Context, f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("content store: lock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("content store: waiting for another download of %s: %w", filepath.Base(f.Name()), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// samePath reports whether path still names open file f.
func samePath(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	if err != nil {
		return false
	}
	return os.SameFile(a, b)
}

// adoptPartial makes partial file f, whose content the caller has checked
// against digest (size and sha256), a complete blob: fsync, rename into
// blobs/sha256/<hex>, fsync the directory. f stays open (and locked) for
// the caller to close.
func (s *Store) adoptPartial(f *os.File, digest string) error {
	dst, err := s.Path(digest)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("content store: fsync: %w", err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return fmt.Errorf("content store: %w", err)
	}
	return syncDir(filepath.Dir(dst))
}

// createLocked creates a new temp file in dir (pattern as os.CreateTemp)
// holding an exclusive flock on it. CleanLeftovers may remove the file
// between its creation and our flock; then the path no longer names our
// file and we create another.
func createLocked(dir, pattern string) (*os.File, error) {
	for attempt := 0; ; attempt++ {
		f, err := os.CreateTemp(dir, pattern)
		if err != nil {
			return nil, err
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil && samePath(f, f.Name()) {
			return f, nil
		}
		f.Close()
		if err != nil && !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		if attempt >= 10 {
			return nil, fmt.Errorf("lock a temp file in %s: lost the race with gc %d times", dir, attempt+1)
		}
	}
}

// removeIfUnlocked removes path if nobody holds a flock on it (its
// writer is gone), taking the flock itself meanwhile so that a writer
// cannot take it in between (writers check, after locking, that the path
// still names their file). It returns the bytes the file held, and
// whether it was (or, with dryRun, would be) removed.
func removeIfUnlocked(path string, dryRun bool) (int64, bool, error) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return 0, false, nil // a live writer
		}
		return 0, false, fmt.Errorf("lock %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || !samePath(f, path) {
		return 0, false, err
	}
	if !dryRun {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, false, err
		}
	}
	return fi.Size(), true, nil
}

// CleanLeftovers removes (with dryRun, only lists) what dead writers
// left in the store:
//   - tmp/ files of blob writers (a killed seal or flatten, an aborted
//     ingest) whose flock is free;
//   - partial/*.part downloads whose flock is free (an interrupted pull:
//     the next pull of that blob starts over instead of resuming);
//   - uploads/*.session records of chunked uploads no push holds (an
//     interrupted push: the next push of that blob starts over instead of
//     resuming; upload_record.go);
//   - partial/*.map present-maps whose .lazy file is gone (they would
//     claim pages of a fresh, empty lazy file), and *.segs segment maps
//     whose .part file is gone.
//
// A live writer holds its file's flock, so its files are kept whatever
// their age. Lazy files (.lazy) are not touched here: whether one is
// needed is the catalogue's call (gc, RemoveLazy). It returns the paths
// removed and their bytes.
func (s *Store) CleanLeftovers(dryRun bool) ([]string, int64, error) {
	var paths []string
	var total int64
	sweep := func(dir string, want func(name string) bool) error {
		ents, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("content store: %w", err)
		}
		for _, e := range ents {
			if !e.Type().IsRegular() || !want(e.Name()) {
				continue
			}
			path := filepath.Join(dir, e.Name())
			n, removed, err := removeIfUnlocked(path, dryRun)
			if err != nil {
				return fmt.Errorf("content store: %w", err)
			}
			if removed {
				paths = append(paths, path)
				total += n
			}
		}
		return nil
	}
	if err := sweep(s.tmpDir(), func(string) bool { return true }); err != nil {
		return paths, total, err
	}
	if err := sweep(s.PartialDir(), func(name string) bool { return strings.HasSuffix(name, ".part") }); err != nil {
		return paths, total, err
	}
	if err := sweep(s.UploadsDir(), func(name string) bool { return strings.HasSuffix(name, ".session") }); err != nil {
		return paths, total, err
	}
	// Orphan maps: the .lazy is gone.
	ents, err := os.ReadDir(s.PartialDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return paths, total, fmt.Errorf("content store: %w", err)
	}
	for _, e := range ents {
		base, ok := strings.CutSuffix(e.Name(), ".map")
		data := ".lazy"
		if !ok { // a segment map (oci_fetch_ranges.go) whose .part is gone
			base, ok = strings.CutSuffix(e.Name(), ".segs")
			data = ".part"
		}
		if !ok {
			continue
		}
		if _, err := os.Stat(filepath.Join(s.PartialDir(), base+data)); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		path := filepath.Join(s.PartialDir(), e.Name())
		fi, err := os.Stat(path)
		if err != nil {
			continue
		}
		if !dryRun {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return paths, total, fmt.Errorf("content store: %w", err)
			}
		}
		paths = append(paths, path)
		total += fi.Size()
	}
	return paths, total, nil
}
