package repo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
