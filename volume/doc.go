// Package volume implements volumes over snapshot chains.
//
// Glossary:
//   - volume: a named virtual disk: a chain of sealed layers plus one
//     writable layer on top, recorded in the catalogue.
//   - writable layer: the directory volumes/<name>/w-<gen> holding a sparse
//     data file and a journal of which blocks are data or zero there.
//   - seal / snapshot: turning the writable layer into a sealed layer and
//     starting a fresh writable layer (generation gen+1).
//   - clone: a new volume whose chain is a snapshot's chain; it shares every
//     layer and copies nothing.
//   - rollback: pointing a volume back at a snapshot's chain and dropping
//     its writable layer.
//   - intent: a catalogue record written before an operation's side effects
//     on files and removed in the transaction that completes it.
//   - chain reference (chainRef): a counted use of an open chain; a volume
//     holds one on its current chain and each read of the layers made
//     outside the I/O lock holds one. A Manager has one open chain per
//     distinct chain (block size, size, layer digests), so clones of one
//     snapshot share its merged index. Each open chain in turn holds a
//     reference to each of its layers in the Manager, which closes a layer
//     (and drops its cached chunks) when the last chain using it goes.
//
// Invariants:
//   - At most one open chain per chain key in a Manager; it is removed,
//     its merged-index mapping unmapped and its layers released only by
//     the release that leaves it with no reference, under chainMu.
//   - Volume.ioMu (exclusive only to swap layers) is never held across a
//     read of a sealed layer, which may wait on a registry: readers and
//     writers resolve what they need under it, reference the chain and
//     read with it released.
//   - A layer is closed only when no chain references it and no one-shot
//     caller pinned it (Manager.Layer, Manager.Chain).
//   - A volume's device record names a live server only while that server
//     holds the volume lock: it opens the volume before recording its
//     device and clears the record before closing it. Liveness is judged
//     by the lock, never by the record's PID (see Manager.Device).
//
// Crash safety: see Snapshot (seal ordering), writable (flush ordering)
// and Manager.Recover. docs/design.md has the whole picture.
package volume
