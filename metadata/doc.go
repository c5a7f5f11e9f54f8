// Package metadata is obdvol's catalogue: one bbolt file (catalog.db under
// --root) that says which volumes, snapshots and layers exist and which
// operations were in flight when a process stopped.
//
// # Glossary
//
//   - Catalogue: the bbolt file and the Catalog handle on it. It is the
//     truth: a blob in the content store that no record references is
//     garbage, a volume directory with no volume record is debris.
//   - Volume: a named block device image: a chain of sealed layers plus
//     one writable layer, the directory volumes/<name>/w-<gen> where gen is
//     Volume.Writable. Bumping Writable switches to a fresh, empty one.
//   - Layer: an immutable sealed layer, named by the sha256 digest of its
//     blob ("sha256:<64 hex>"). Shared by every chain that names it.
//     Its Parts say, per origin, the blobs an origin holds it in when it
//     was pushed in parts (they add up to the layer's bytes).
//   - Chain: a list of layer digests, base first; later layers win.
//   - Snapshot: a named, frozen chain of a volume, addressed vol@snap.
//   - Clone: a volume made from a snapshot, sharing its layers; its Origin
//     is "vol@snap".
//   - Ref: "vol" or "vol@snap" (ParseRef, Ref). Names are 1 to 128 bytes
//     of [A-Za-z0-9._-] starting with a letter or digit, so '@' and '/'
//     never occur in one (ValidateName).
//   - Intent: a record of an operation written before its side effects on
//     files and removed in the transaction that records its outcome; one
//     still present at the next start marks a crash to recover from.
//   - Lease: a record naming the blobs (layer digests) an operation in
//     flight is about to reference: a pull, a lazy pull, a seal, a flatten.
//     gc treats leased digests as referenced. Its owner holds a lock (an
//     flock on a file outside the catalogue) while it lives; a lease whose
//     lock is free has expired.
//
// # Layout
//
// Buckets, values JSON of the record types:
//
//	meta       "schema" -> uint32 big-endian (SchemaVersion)
//	volumes    name -> Volume (with its Device, where it is served now,
//	           and its Activation, how the host daemon should serve it
//	           whenever it runs; both optional fields, so no schema bump:
//	           an older obdvol ignores and, rewriting the record, drops an
//	           Activation, which only makes that activation non-persistent)
//	snapshots  vol@snap -> Snapshot (a volume's snapshots are one key range)
//	layers     digest -> Layer
//	intents    uint64 big-endian id -> Intent (id = the bucket's sequence)
//	leases     id (32 hex digits) -> Lease (since schema version 2)
//
// # Lease invariants
//
// The containerd leases pattern, for a catalogue shared by processes:
//
//  1. A lease is recorded (CreateLease or AddLeaseDigests, committed)
//     before any blob it names is written, fetched or opened lazily, and
//     before the operation looks at whether the store already has it.
//  2. It is deleted (DeleteLease) in the same transaction that makes a
//     volume or snapshot reference its digests, or after the operation
//     failed. A digest is therefore always either referenced by a chain,
//     or leased, or free for gc to take.
//  3. gc decides and deletes in one Update: it reads the chains and the
//     leases, drops the leases whose owner's lock is free, and removes the
//     layer records and blobs neither references before that transaction
//     ends, so that a lease recorded after its decision (which waits for
//     the catalogue's lock) finds a blob either gone or kept.
//  4. A lease whose owner is gone is harmless until gc drops it: it only
//     keeps blobs that gc would otherwise have removed.
//
// # Processes and locking
//
// Many short-lived obdvol processes share the file, so a Catalog keeps it
// closed between calls: each View or Update opens it, takes bbolt's file
// lock (shared for View, exclusive for Update) waiting at most
// Catalog.Timeout, runs one transaction and closes it. A lock not obtained
// in time is ErrBusy. Every change is one closure transaction, as in
// containerd's snapshot metastore: fn returns nil to commit, an error to
// leave the catalogue as it was.
//
// Records that come out of a transaction are copies: to change one, get
// it, change it, Put it back, all in one Update.
//
//	err := cat.Update(func(tx *metadata.Tx) error {
//		v, err := tx.Volume("db")
//		if err != nil {
//			return err
//		}
//		snap := &metadata.Snapshot{Volume: v.Name, Name: "nightly", Layers: v.Layers, Size: v.Size}
//		return tx.CreateSnapshot(snap) // ErrExists if db@nightly is taken
//	})
//
// # Errors
//
// Errors wrap the sentinels of errors.go (ErrNotFound, ErrExists,
// ErrInvalidName, ErrInvalid, ErrBusy, ErrSchema, ErrCorrupt) with the
// name, digest, lease or path concerned.
package metadata
