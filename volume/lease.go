package volume

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/obdvol/obdvol/metadata"
)

// Lease keeps gc away from blobs an operation is about to reference (the
// containerd leases pattern; see metadata's "Lease invariants"). The
// lifecycle:
//
//	l, err := m.Lease("pull", digests...) // before any blob is fetched or looked at
//	if err != nil { ... }
//	defer l.Release()                      // a failure leaves nothing leased
//	... fetch or write the blobs; l.Add(d) for a digest learnt on the way ...
//	err = m.Catalog().Update(func(tx *metadata.Tx) error {
//		... reference the digests (a volume, a snapshot) ...
//		return l.Commit(tx)                // the lease ends with the reference
//	})
//
// The owner holds an exclusive flock on root/leases/<id>.lock from before
// the record exists until Release; the kernel drops it when the process
// dies, and gc then drops the lease (see checkLeaseOwner). A Lease is
// safe for concurrent use.
type Lease struct {
	m  *Manager
	id string
	op string

	mu        sync.Mutex // held across Add's transaction: Adds are serial
	lock      *os.File   // nil once released
	recorded  bool       // the catalogue has (or had) the record
	committed bool       // Commit was called in a transaction
}

func (m *Manager) leaseDir() string { return filepath.Join(m.root, "leases") }

func leaseLockPath(dir, id string) string { return filepath.Join(dir, id+".lock") }

// Lease starts a lease of op on digests. It takes the owner lock first,
// then commits the record, so that gc never sees a record whose owner has
// not locked it yet. With no digests (a seal, which learns its digest at
// the end) nothing is recorded until the first Add.
func (m *Manager) Lease(op string, digests ...string) (*Lease, error) {
	id, lock, err := m.newLeaseLock()
	if err != nil {
		return nil, err
	}
	l := &Lease{m: m, id: id, op: op, lock: lock}
	if len(digests) == 0 {
		return l, nil
	}
	if err := l.Add(digests...); err != nil {
		l.unlock()
		return nil, err
	}
	return l, nil
}

// newLeaseLock creates and locks a fresh lock file. gc removes lock files
// whose flock it obtains; one it removed between our create and our
// flock is detected (the path no longer names our file) and we start
// over with a new id.
func (m *Manager) newLeaseLock() (string, *os.File, error) {
	dir := m.leaseDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	for attempt := 0; ; attempt++ {
		var b [metadata.LeaseIDLen / 2]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", nil, err
		}
		id := hex.EncodeToString(b[:])
		path := leaseLockPath(dir, id)
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return "", nil, fmt.Errorf("lease lock: %w", err)
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil && sameFile(f, path) {
			f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
			return id, f, nil
		}
		f.Close()
		if err != nil && !errors.Is(err, unix.EWOULDBLOCK) {
			return "", nil, fmt.Errorf("lease lock %s: %w", path, err)
		}
		if attempt >= 10 {
			return "", nil, fmt.Errorf("lease lock: lost the race with gc %d times", attempt+1)
		}
	}
}

// sameFile reports whether path still names open file f.
func sameFile(f *os.File, path string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(path)
	return err == nil && os.SameFile(a, b)
}

// ID is the lease's catalogue ID.
func (l *Lease) ID() string { return l.id }

// Add names more digests in the lease, before the blobs they name are
// written or fetched. It fails when the lease is released or gone.
func (l *Lease) Add(digests ...string) error {
	if len(digests) == 0 {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lock == nil {
		return fmt.Errorf("lease %s: released", l.id)
	}
	err := l.m.cat.Update(func(tx *metadata.Tx) error {
		if l.recorded {
			return tx.AddLeaseDigests(l.id, digests...)
		}
		return tx.CreateLease(&metadata.Lease{ID: l.id, Op: l.op, Digests: digests, PID: os.Getpid()})
	})
	if err != nil {
		return fmt.Errorf("lease for %s: %w", l.op, err)
	}
	l.recorded = true
	return nil
}

// Commit deletes the lease in tx, the transaction that references its
// digests; the caller still calls Release afterwards, to drop the lock.
// If tx does not commit after all, the record stays until gc finds its
// lock free, which is harmless (it only keeps blobs a little longer).
func (l *Lease) Commit(tx *metadata.Tx) error {
	if l == nil {
		return nil
	}
	if err := tx.DeleteLease(l.id); err != nil {
		return err
	}
	l.mu.Lock()
	l.committed = true
	l.mu.Unlock()
	return nil
}

// Release ends the lease: it deletes the record unless Commit did, then
// removes and unlocks the lock file. It is safe to call more than once
// and on a nil Lease. When the catalogue cannot be reached the record
// stays behind with a free lock, and the next gc drops it.
func (l *Lease) Release() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lock == nil {
		return nil
	}
	var err error
	if l.recorded && !l.committed {
		err = l.m.cat.Update(func(tx *metadata.Tx) error { return tx.DeleteLease(l.id) })
	}
	l.unlockLocked()
	return err
}

func (l *Lease) unlock() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unlockLocked()
}

func (l *Lease) unlockLocked() {
	if l.lock == nil {
		return
	}
	os.Remove(l.lock.Name()) // before unlocking: nobody can lock a removed path's file in our place
	unix.Flock(int(l.lock.Fd()), unix.LOCK_UN)
	l.lock.Close()
	l.lock = nil
}

// leaseOwner is gc's view of a lease's lock file.
type leaseOwner int

const (
	ownerAlive leaseOwner = iota // someone holds the flock
	ownerGone                    // the file is missing, or we obtained the flock (and removed the file)
)

// checkLeaseOwner tells whether lease id's owner still holds its lock.
// When it does not and remove is set, the lock file is removed (while we
// hold its flock: a new lease never reuses a file, it creates a fresh
// one) and the caller drops the record.
func checkLeaseOwner(dir, id string, remove bool) (leaseOwner, error) {
	path := leaseLockPath(dir, id)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return ownerGone, nil
	}
	if err != nil {
		return ownerAlive, err
	}
	defer f.Close()
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return ownerAlive, nil
	}
	if err != nil {
		return ownerAlive, fmt.Errorf("lease lock %s: %w", path, err)
	}
	if remove && sameFile(f, path) {
		os.Remove(path)
	}
	return ownerGone, nil
}

// blobDigester is implemented by blob writers that can say the digest of
// what they hold before Commit makes it visible (repo.Writer).
type blobDigester interface {
	Digest() string
}

// commitBlob commits a finished blob into the content store under a
// lease: the digest is added to l before the blob appears under it, so
// gc never sees it unleased and unreferenced. A writer that cannot say
// its digest first is committed, then leased: a gc in between could take
// it, which the transaction referencing it would then not notice, so
// stores used with gc must implement blobDigester.
func (l *Lease) commitBlob(bw BlobWriter) (string, int64, error) {
	bd, ok := bw.(blobDigester)
	if !ok {
		d, n, err := bw.Commit("")
		if err == nil {
			err = l.Add(d)
		}
		return d, n, err
	}
	d := bd.Digest()
	if err := l.Add(d); err != nil {
		bw.Abort()
		return "", 0, err
	}
	return bw.Commit(d)
}
