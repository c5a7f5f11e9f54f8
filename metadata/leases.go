package metadata

import (
	"fmt"
	"slices"
	"time"
)

// LeaseIDLen is the length of a lease ID: hex digits, so that an ID is
// safe as a file name (the owner's lock file, leases/<id>.lock).
const LeaseIDLen = 32

// Lease is the record of an operation that is about to reference blobs
// the catalogue does not reference yet (a pull, a lazy pull, a seal, a
// flatten): the digests it will reference, written before any of those
// blobs is written or fetched and deleted in the transaction that
// references them (or when the operation fails). gc treats leased digests
// as referenced. The owner holds an exclusive flock on its lock file
// (volume decides where) for as long as the lease lives; a lease whose
// lock is free has expired: its owner is gone, and gc deletes it.
type Lease struct {
	ID      string    `json:"id"`            // LeaseIDLen lower-case hex digits
	Op      string    `json:"op"`            // "pull", "seal", "flatten", ...: for people reading it
	Digests []string  `json:"digests"`       // blobs the operation will reference, sorted, no duplicates
	PID     int       `json:"pid,omitempty"` // the owner process, for people reading it (liveness is the flock)
	Created time.Time `json:"created"`
}

// ValidateLeaseID checks that id is LeaseIDLen lower-case hex digits.
func ValidateLeaseID(id string) error {
	if len(id) != LeaseIDLen {
		return fmt.Errorf("lease id %q: want %d hex digits: %w", id, LeaseIDLen, ErrInvalid)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("lease id %q: want %d hex digits: %w", id, LeaseIDLen, ErrInvalid)
		}
	}
	return nil
}

func (l *Lease) validate() error {
	if err := ValidateLeaseID(l.ID); err != nil {
		return err
	}
	if l.Op == "" {
		return fmt.Errorf("lease %s: no operation: %w", l.ID, ErrInvalid)
	}
	if err := validateChain(l.Digests); err != nil {
		return fmt.Errorf("lease %s: %w", l.ID, err)
	}
	return nil
}

func decodeLease(key, val []byte) (*Lease, error) {
	l := new(Lease)
	if err := decode(bucketLeases, key, val, l); err != nil {
		return nil, err
	}
	if l.ID != string(key) {
		return nil, corrupt(bucketLeases, key, fmt.Errorf("record names lease %q", l.ID))
	}
	if err := l.validate(); err != nil {
		return nil, corrupt(bucketLeases, key, err)
	}
	return l, nil
}

// ---- leases ----

// CreateLease records l under l.ID, failing with ErrExists if that ID is
// taken. Its digests are sorted and deduplicated; a zero Created is set
// to now (UTC).
func (tx *Tx) CreateLease(l *Lease) error {
	rec := *l
	rec.Digests = sortedSet(l.Digests)
	if err := rec.validate(); err != nil {
		return err
	}
	b := tx.bucket(bucketLeases)
	if b.Get([]byte(rec.ID)) != nil {
		return fmt.Errorf("lease %s: %w", rec.ID, ErrExists)
	}
	if rec.Created.IsZero() {
		rec.Created = time.Now().UTC()
	}
	if err := put(b, []byte(rec.ID), &rec); err != nil {
		return fmt.Errorf("lease %s: %w", rec.ID, err)
	}
	*l = rec
	return nil
}

// Lease returns the record of lease id, or an error wrapping ErrNotFound.
func (tx *Tx) Lease(id string) (*Lease, error) {
	val := tx.bucket(bucketLeases).Get([]byte(id))
	if val == nil {
		return nil, fmt.Errorf("lease %s: %w", id, ErrNotFound)
	}
	return decodeLease([]byte(id), val)
}

// Leases returns every lease, sorted by ID.
func (tx *Tx) Leases() ([]*Lease, error) {
	leases := []*Lease{}
	err := tx.bucket(bucketLeases).ForEach(func(k, val []byte) error {
		l, err := decodeLease(k, val)
		leases = append(leases, l)
		return err
	})
	if err != nil {
		return nil, err
	}
	return leases, nil
}

// AddLeaseDigests adds digests to lease id. It fails with ErrNotFound when
// the lease is gone (gc found its owner's lock free), so that an owner
// never goes on believing a lease protects what it writes.
func (tx *Tx) AddLeaseDigests(id string, digests ...string) error {
	l, err := tx.Lease(id)
	if err != nil {
		return err
	}
	l.Digests = sortedSet(append(l.Digests, digests...))
	if err := l.validate(); err != nil {
		return err
	}
	if err := put(tx.bucket(bucketLeases), []byte(id), l); err != nil {
		return fmt.Errorf("lease %s: %w", id, err)
	}
	return nil
}

// DeleteLease removes lease id. Removing one that is not there is not an
// error: the owner's commit, its release and gc may all try.
func (tx *Tx) DeleteLease(id string) error {
	if err := tx.bucket(bucketLeases).Delete([]byte(id)); err != nil {
		return fmt.Errorf("lease %s: %w", id, err)
	}
	return nil
}

func sortedSet(ds []string) []string {
	out := slices.Clone(ds)
	slices.Sort(out)
	return slices.Compact(out)
}
