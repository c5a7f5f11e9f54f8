package repo

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Resumable chunked uploads.
//
// A chunked upload (upload_session.go) records where its session is in
// <root>/uploads/<key>.session, key the sha256 of "registry/repository@digest":
// written after the POST that opens the session and again after every
// PATCH the registry took (distribution 2.x cancels a session asked at an
// older state token, so the record follows the last Location). A push that
// dies mid-blob (killed, its context ended, the network gone) leaves the
// record, and the next push of that blob to that repository asks the
// registry where the session stands (GET: Range) and sends the rest; a
// session the registry no longer knows starts over in a new one. The
// record goes when the upload ends with 201, or fails other than by its
// context ending (its session is then cancelled), or when gc finds no push
// holding it (CleanLeftovers: the next push of that blob starts over).
//
// The record file is also the lock: an exclusive flock, taken without
// waiting, held while the upload runs. A second process pushing the same
// blob to the same repository at once gets no record (its upload is not
// resumable) rather than share a session. The record is rewritten in
// place (truncate, write, fdatasync), not renamed, so that the lock stays
// on it; a torn record reads as none and costs a restart, never wrong
// bytes: the registry checks the digest when the session closes.

// uploadRecord is a held record of one blob's chunked upload.
type uploadRecord struct {
	f *os.File
}

// recordedSession is a record's content.
type recordedSession struct {
	Target   string `json:"target"` // registry/repository@digest
	Location string `json:"location"`
}

// maxRecord bounds what is read of a record.
const maxRecord = 64 << 10

// UploadsDir is where a store's chunked uploads are recorded.
func (s *Store) UploadsDir() string { return filepath.Join(s.Root, "uploads") }

// hasUploadRecord reports whether dir holds a record of target's upload
// that is not empty (its content is checked when it is taken).
func hasUploadRecord(dir, target string) bool {
	if dir == "" {
		return false
	}
	fi, err := os.Stat(recordPath(dir, target))
	return err == nil && fi.Size() > 0
}

func recordPath(dir, target string) string {
	sum := sha256.Sum256([]byte(target))
	return filepath.Join(dir, hex.EncodeToString(sum[:])+".session")
}

// openUploadRecord takes the record of target's upload under dir and
// returns the location it holds ("" for none, or a record of another
// target or torn). It returns nil, "" when dir is "" or another process
// holds the record.
func openUploadRecord(dir, target string) (*uploadRecord, string, error) {
	if dir == "" {
		return nil, "", nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", fmt.Errorf("upload record: %w", err)
	}
	f, err := os.OpenFile(recordPath(dir, target), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, "", fmt.Errorf("upload record: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, "", nil // another process uploads it: not recorded
		}
		return nil, "", fmt.Errorf("upload record: lock: %w", err)
	}
	r := &uploadRecord{f: f}
	return r, r.location(target), nil
}

// location is the recorded location of target's session, "" when there
// is none or the record is of something else or unreadable.
func (r *uploadRecord) location(target string) string {
	b := make([]byte, maxRecord)
	n, _ := r.f.ReadAt(b, 0) // a short read ends in io.EOF: n says what there is
	if n == 0 || n == maxRecord {
		return ""
	}
	var rs recordedSession
	if json.Unmarshal(b[:n], &rs) != nil || rs.Target != target {
		return ""
	}
	return rs.Location
}

// save records target's session at loc, durably (a record that is not
// durable only costs a restart; saving fails the upload only when the
// disk refuses it).
func (r *uploadRecord) save(target, loc string) error {
	if r == nil {
		return nil
	}
	b, err := json.Marshal(recordedSession{Target: target, Location: loc})
	if err != nil {
		return err
	}
	if err := r.f.Truncate(0); err != nil {
		return fmt.Errorf("upload record: %w", err)
	}
	if _, err := r.f.WriteAt(b, 0); err != nil {
		return fmt.Errorf("upload record: %w", err)
	}
	if err := unix.Fdatasync(int(r.f.Fd())); err != nil {
		return fmt.Errorf("upload record: %w", err)
	}
	return nil
}

// remove deletes the record (the upload ended) and releases it.
func (r *uploadRecord) remove() {
	if r == nil {
		return
	}
	r.f.Truncate(0) // a process that opened it before the unlink finds none
	os.Remove(r.f.Name())
	r.close()
}

// close releases the record, leaving it for a later push.
func (r *uploadRecord) close() {
	if r == nil || r.f == nil {
		return
	}
	r.f.Close() // drops the flock
	r.f = nil
}

// A registry's chunk size. The 413 fallback (upload.go) learns that a
// registry, or a proxy in front of it, refuses whole blobs: the chunk size
// it settled on is kept in <root>/uploads/<sha256 of the registry>.chunk
// (JSON, written temp + fsync + rename), and later pushes to that
// registry upload in chunks of that size from the start instead of
// sending a whole blob to be refused again. --chunk-size overrides it;
// removing the file forgets it.

// learnedChunk is a .chunk file's content.
type learnedChunk struct {
	Registry  string `json:"registry"`
	ChunkSize int64  `json:"chunk_size"`
}

func chunkPath(dir, registry string) string {
	sum := sha256.Sum256([]byte(registry))
	return filepath.Join(dir, hex.EncodeToString(sum[:])+".chunk")
}

// loadChunkSize returns the chunk size learned for registry, 0 for none
// (or a file that is not one: it is ignored).
func loadChunkSize(dir, registry string) int64 {
	if dir == "" {
		return 0
	}
	b, err := os.ReadFile(chunkPath(dir, registry))
	if err != nil || len(b) > maxRecord {
		return 0
	}
	var lc learnedChunk
	if json.Unmarshal(b, &lc) != nil || lc.Registry != registry || lc.ChunkSize < MinChunkSize || lc.ChunkSize > maxChunkSize {
		return 0
	}
	return lc.ChunkSize
}

// saveChunkSize keeps n as registry's chunk size.
func saveChunkSize(dir, registry string, n int64) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(learnedChunk{Registry: registry, ChunkSize: n})
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".chunk-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(f.Name(), chunkPath(dir, registry)); err != nil {
		return err
	}
	return syncDir(dir)
}
