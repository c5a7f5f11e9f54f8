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
//
// # Layout
//
// Buckets, values JSON of the record types:
//
//	meta       "schema" -> uint32 big-endian (SchemaVersion)
//	volumes    name -> Volume
//	snapshots  vol@snap -> Snapshot (a volume's snapshots are one key range)
//	layers     digest -> Layer
//	intents    uint64 big-endian id -> Intent (id = the bucket's sequence)
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
// name, digest or path concerned.
package metadata
