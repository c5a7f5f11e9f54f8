package repo

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrNotFound is returned when a blob is not in the store.
var ErrNotFound = errors.New("blob not found")

// ErrDigestMismatch is returned when content does not hash to the digest it claims.
var ErrDigestMismatch = errors.New("digest mismatch")

// Store is the host's content store: one file per complete blob, named by
// its sha256, under Root/blobs/sha256/<hex>. Blobs are written to
// Root/tmp, fsynced and renamed into place, so a blob path that exists is
// always complete. Root/partial holds fetches in progress.
//
// A Store has no state besides the directory; any number of processes may
// use one at once (renames are atomic, identical content wins either way).
type Store struct {
	Root string
}

// NewStore returns the store under root, creating its directories.
func NewStore(root string) (*Store, error) {
	s := &Store{Root: root}
	for _, d := range []string{s.blobDir(), s.tmpDir(), s.PartialDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("content store: %w", err)
		}
	}
	return s, nil
}

func (s *Store) blobDir() string { return filepath.Join(s.Root, "blobs", "sha256") }
func (s *Store) tmpDir() string  { return filepath.Join(s.Root, "tmp") }

// PartialDir is where resumable downloads keep their partial files.
func (s *Store) PartialDir() string { return filepath.Join(s.Root, "partial") }

// ValidateDigest checks that d is "sha256:" followed by 64 lower-case hex
// digits, so that it can never name a path outside the store.
func ValidateDigest(d string) error {
	hexPart, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hexPart) != 64 {
		return fmt.Errorf("invalid digest %q: want sha256:<64 hex digits>", d)
	}
	for _, c := range hexPart {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("invalid digest %q: want sha256:<64 hex digits>", d)
		}
	}
	return nil
}

// Path returns the file of a complete blob (which may not exist).
func (s *Store) Path(digest string) (string, error) {
	if err := ValidateDigest(digest); err != nil {
		return "", err
	}
	return filepath.Join(s.blobDir(), digest[len("sha256:"):]), nil
}

// Has reports whether the complete blob is present.
func (s *Store) Has(digest string) bool {
	p, err := s.Path(digest)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

// Size returns the size of a complete blob.
func (s *Store) Size(digest string) (int64, error) {
	p, err := s.Path(digest)
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("%s: %w", digest, ErrNotFound)
	}
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// Open opens a complete blob for reading.
func (s *Store) Open(digest string) (*os.File, error) {
	p, err := s.Path(digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", digest, ErrNotFound)
	}
	return f, err
}

// Remove deletes a blob. Callers must have removed every catalogue
// reference first (the catalogue is the authority on what is live).
func (s *Store) Remove(digest string) error {
	p, err := s.Path(digest)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Detach moves blob digest out of the store into directory dir, which
// must be on the same filesystem: a rename, however large the blob, so
// that gc can take blobs out while it holds the catalogue's lock and
// unlink them after. Callers must have removed every catalogue reference
// first. A missing blob is not an error.
func (s *Store) Detach(digest, dir string) error {
	p, err := s.Path(digest)
	if err != nil {
		return err
	}
	if err := os.Rename(p, filepath.Join(dir, digest[len("sha256:"):])); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("content store: %w", err)
	}
	return nil
}

// List returns the digests of every complete blob.
func (s *Store) List() ([]string, error) {
	ents, err := os.ReadDir(s.blobDir())
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		d := "sha256:" + e.Name()
		if ValidateDigest(d) == nil {
			out = append(out, d)
		}
	}
	return out, nil
}

// Writer writes a new blob: bytes go to a temporary file while their sha256
// is taken; Commit fsyncs and renames the file into place under its digest.
// The writer holds an exclusive flock on its temp file from creation to
// the rename, so CleanLeftovers (gc) tells a live writer's file from a
// dead one's by the lock, not by its age. Abort removes the file; a crash
// leaves it, unlocked, for CleanLeftovers.
type Writer struct {
	s    *Store
	f    *os.File
	pw   *pipeWriter
	h    hash.Hash
	n    int64
	done bool
}

// Create starts a new blob.
func (s *Store) Create() (*Writer, error) {
	f, err := createLocked(s.tmpDir(), "blob-*")
	if err != nil {
		return nil, fmt.Errorf("content store: %w", err)
	}
	h := sha256.New()
	return &Writer{s: s, f: f, pw: newPipeWriter(f, h), h: h}, nil
}

// Write appends p to the blob.
func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.pw.Write(p)
	w.n += int64(n)
	return n, err
}

// Size is the number of bytes written so far.
func (w *Writer) Size() int64 { return w.n }

// Digest is the digest of the bytes written so far; it waits for writes
// in flight. Call it only when done writing (it ends the pipeline).
func (w *Writer) Digest() string {
	w.pw.finish()
	return "sha256:" + hex.EncodeToString(w.h.Sum(nil))
}

// Commit makes the blob durable and visible under its digest. If expected
// is not empty, the content must hash to it or ErrDigestMismatch is returned
// and nothing is stored.
func (w *Writer) Commit(expected string) (digest string, size int64, err error) {
	if w.done {
		return "", 0, errors.New("content store: writer already closed")
	}
	w.done = true
	defer func() {
		if err != nil {
			os.Remove(w.f.Name())
		}
	}()
	if err := w.pw.finish(); err != nil {
		w.f.Close()
		return "", 0, fmt.Errorf("content store: %w", err)
	}
	digest = w.Digest()
	if expected != "" && expected != digest {
		w.f.Close()
		return "", 0, fmt.Errorf("content store: got %s, want %s: %w", digest, expected, ErrDigestMismatch)
	}
	if err := w.f.Sync(); err != nil {
		w.f.Close()
		return "", 0, fmt.Errorf("content store: fsync: %w", err)
	}
	dst, err := w.s.Path(digest)
	if err != nil {
		w.f.Close()
		return "", 0, err
	}
	// Rename while the file is still open and locked: once closed, gc
	// would take it for a dead writer's.
	if err := os.Rename(w.f.Name(), dst); err != nil {
		w.f.Close()
		return "", 0, fmt.Errorf("content store: %w", err)
	}
	if err := w.f.Close(); err != nil {
		return "", 0, fmt.Errorf("content store: %w", err)
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return "", 0, err
	}
	return digest, w.n, nil
}

// Abort discards the blob.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.pw.finish()
	os.Remove(w.f.Name()) // while locked: gc never sees it unlocked
	w.f.Close()
}

// Ingest copies r into the store, checking it against expected (if set).
func (s *Store) Ingest(r io.Reader, expected string) (string, int64, error) {
	w, err := s.Create()
	if err != nil {
		return "", 0, err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Abort()
		return "", 0, fmt.Errorf("content store: %w", err)
	}
	return w.Commit(expected)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
