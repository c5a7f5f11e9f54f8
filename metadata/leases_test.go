package metadata

import (
	"errors"
	"slices"
	"testing"

	bolt "go.etcd.io/bbolt"
)

const leaseA = "0123456789abcdef0123456789abcdef"

func TestLeases(t *testing.T) {
	c := newCatalog(t)
	l := &Lease{ID: leaseA, Op: "pull", Digests: []string{digest(2), digest(1), digest(2)}, PID: 7}
	mustUpdate(t, c, func(tx *Tx) error { return tx.CreateLease(l) })
	if !slices.Equal(l.Digests, []string{digest(1), digest(2)}) || l.Created.IsZero() {
		t.Fatalf("CreateLease did not sort, dedupe and date the record: %+v", l)
	}
	if err := c.Update(func(tx *Tx) error { return tx.CreateLease(&Lease{ID: leaseA, Op: "seal"}) }); !errors.Is(err, ErrExists) {
		t.Fatalf("second lease with the same id: %v, want ErrExists", err)
	}
	mustUpdate(t, c, func(tx *Tx) error { return tx.AddLeaseDigests(leaseA, digest(3), digest(1)) })
	mustView(t, c, func(tx *Tx) error {
		got, err := tx.Lease(leaseA)
		if err != nil {
			return err
		}
		if !slices.Equal(got.Digests, []string{digest(1), digest(2), digest(3)}) || got.Op != "pull" || got.PID != 7 {
			t.Errorf("lease after AddLeaseDigests: %+v", got)
		}
		all, err := tx.Leases()
		if err != nil || len(all) != 1 {
			t.Errorf("Leases = %v, %v", all, err)
		}
		return nil
	})
	for _, bad := range []*Lease{
		{ID: "../../etc", Op: "pull"},
		{ID: "0123456789ABCDEF0123456789ABCDEF", Op: "pull"},
		{ID: leaseA[:31] + "0", Op: ""},
		{ID: leaseA[:31] + "1", Op: "pull", Digests: []string{"sha256:nope"}},
	} {
		if err := c.Update(func(tx *Tx) error { return tx.CreateLease(bad) }); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateLease(%+v) = %v, want ErrInvalid", bad, err)
		}
	}
	if err := c.Update(func(tx *Tx) error { return tx.AddLeaseDigests(leaseA, "sha256:nope") }); !errors.Is(err, ErrInvalid) {
		t.Errorf("AddLeaseDigests with a bad digest = %v, want ErrInvalid", err)
	}
	mustUpdate(t, c, func(tx *Tx) error { return tx.DeleteLease(leaseA) })
	mustUpdate(t, c, func(tx *Tx) error { return tx.DeleteLease(leaseA) }) // idempotent
	if err := c.Update(func(tx *Tx) error { return tx.AddLeaseDigests(leaseA, digest(4)) }); !errors.Is(err, ErrNotFound) {
		t.Errorf("AddLeaseDigests on a deleted lease = %v, want ErrNotFound", err)
	}
}

// A version 1 catalogue (no leases bucket) is migrated by Open, and a
// handle on an unmigrated file refuses to run transactions on it.
func TestMigrateV1(t *testing.T) {
	c := newCatalog(t)
	mustUpdate(t, c, func(tx *Tx) error { return tx.CreateVolume(testVolume("db")) })
	rawUpdate(t, c.Path(), func(btx *bolt.Tx) error {
		if err := btx.DeleteBucket(bucketLeases); err != nil {
			return err
		}
		return btx.Bucket(bucketMeta).Put(keySchema, encodeSchema(1))
	})
	if err := c.View(func(*Tx) error { return nil }); !errors.Is(err, ErrSchema) {
		t.Fatalf("View on a version 1 file = %v, want ErrSchema", err)
	}
	c2, err := Open(c.Path())
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, c2, func(tx *Tx) error {
		if _, err := tx.Volume("db"); err != nil {
			return err
		}
		return tx.CreateLease(&Lease{ID: leaseA, Op: "pull"})
	})
	rawUpdate(t, c.Path(), func(btx *bolt.Tx) error {
		if v, err := decodeSchema(btx.Bucket(bucketMeta).Get(keySchema)); v != SchemaVersion {
			t.Errorf("schema after migration %d (%v), want %d", v, err, SchemaVersion)
		}
		return nil
	})
}
