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
//
// Crash safety: see Snapshot (seal ordering), writable (flush ordering)
// and Manager.Recover. docs/design.md has the whole picture.
package volume
