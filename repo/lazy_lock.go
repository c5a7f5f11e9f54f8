package repo

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// blobLock is the lock of one lazy blob, shared by every process and
// every LazyBlob on the store: an exclusive flock on
// Root/partial/<hex>.lock. Whoever changes the blob's data file or its
// present-map holds it (merging fetched pages, evicting, invalidating,
// adopting, removing), for disk work only, never across a network fetch.
//
// The lock file's first 8 bytes count removals: every change that makes a
// page absent (eviction, invalidation, adoption, removal) adds one, after
// the map that no longer names the page is in place and before any hole
// is punched. A reader loads the counter (pread: page-cache coherent
// across processes, and safe against Close, unlike a shared mapping)
// before and after it reads local bytes and reads again if it moved (a
// seqlock): it never returns bytes of a page evicted under it.
type blobLock struct {
	path string

	mu     sync.Mutex // holders in this LazyBlob; flock does not exclude them
	f      *os.File
	closed bool // under mu once the LazyBlob is shared
}

var errLockGone = errors.New("lazy blob was adopted or removed")

// openBlobLock opens the lock file (creating it when create is set).
func openBlobLock(path string, create bool) (*blobLock, error) {
	l := &blobLock{path: path}
	if err := l.open(create); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *blobLock) open(create bool) error {
	flag := os.O_RDWR
	if create {
		flag |= os.O_CREATE
	}
	f, err := os.OpenFile(l.path, flag, 0o600)
	if errors.Is(err, os.ErrNotExist) && !create {
		return errLockGone
	}
	if err != nil {
		return fmt.Errorf("lazy blob lock: %w", err)
	}
	if fi, err := f.Stat(); err != nil || fi.Size() < 8 {
		if err == nil {
			err = f.Truncate(8) // only ever grows: a racing truncate to 8 is a no-op
		}
		if err != nil {
			f.Close()
			return fmt.Errorf("lazy blob lock: %w", err)
		}
	}
	l.close()
	l.f, l.closed = f, false
	return nil
}

// epochUnknown is what epoch reads when the counter cannot be read (the
// LazyBlob was closed: its data file fails the read too).
const epochUnknown = ^uint64(0)

// epoch is the removal counter (see blobLock).
func (l *blobLock) epoch() uint64 {
	var b [8]byte
	if _, err := l.f.ReadAt(b[:], 0); err != nil {
		return epochUnknown
	}
	return binary.LittleEndian.Uint64(b[:])
}

// bump adds one to the removal counter; call it holding the lock (which
// makes the read-modify-write atomic across processes).
func (l *blobLock) bump() {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], (l.epoch()+1)%epochUnknown)
	l.f.WriteAt(b[:], 0)
}

// lock takes the lock. When the lock file was removed or replaced (the
// blob was adopted or removed by its holder) it returns errLockGone.
func (l *blobLock) lock() error {
	l.mu.Lock()
	for {
		if err := unix.Flock(int(l.f.Fd()), unix.LOCK_EX); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			l.mu.Unlock()
			return fmt.Errorf("lazy blob lock %s: %w", l.path, err)
		}
		if samePath(l.f, l.path) {
			return nil
		}
		unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
		l.mu.Unlock()
		return errLockGone
	}
}

func (l *blobLock) unlock() {
	unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	l.mu.Unlock()
}

// A fill pins the blob with a shared OFD lock on byte 8 of the lock file
// (released by the kernel if the process dies); eviction skips a pinned
// blob, so that a fill and a cache bound do not undo each other for ever.
var pinRange = unix.Flock_t{Whence: 0, Start: 8, Len: 1}

// pin takes the fill pin (shared: several fills may pin at once).
func (l *blobLock) pin() error {
	fl := pinRange
	fl.Type = unix.F_RDLCK
	for {
		err := unix.FcntlFlock(l.f.Fd(), unix.F_OFD_SETLKW, &fl)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func (l *blobLock) unpin() {
	fl := pinRange
	fl.Type = unix.F_UNLCK
	unix.FcntlFlock(l.f.Fd(), unix.F_OFD_SETLK, &fl)
}

// pinned reports whether another open lock file holds the fill pin.
func (l *blobLock) pinned() bool {
	fl := pinRange
	fl.Type = unix.F_WRLCK
	if err := unix.FcntlFlock(l.f.Fd(), unix.F_OFD_GETLK, &fl); err != nil {
		return false
	}
	return fl.Type != unix.F_UNLCK
}

// close closes the lock file (the pointer stays: a read racing with
// Close gets os.ErrClosed, not a nil dereference).
func (l *blobLock) close() {
	if l.f != nil && !l.closed {
		l.f.Close()
		l.closed = true
	}
}

func syncDirOf(path string) error { return syncDir(filepath.Dir(path)) }
