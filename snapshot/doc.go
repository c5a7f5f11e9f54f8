// Package snapshot is the sealed layer format and the merged chain index.
//
// Glossary:
//   - block: the unit of addressing of a volume (4096 bytes by default).
//   - layer: one immutable blob, named by its sha256, holding the blocks a
//     writable layer had when it was sealed. Self-describing: a header,
//     compressed chunks, an index (extents and chunk records) and a fixed
//     trailer at the end, so it opens from its tail in two reads.
//   - data stream: the concatenation of a layer's live data blocks, cut into
//     chunks of ChunkSize bytes, each compressed on its own and checksummed.
//   - extent: a run of blocks that is either data (at a data-stream offset)
//     or zero (reads as zeros, hiding lower layers).
//   - chain: layers stacked base first; its merged index answers "which
//     layer holds block b" with one binary search whatever the depth.
//   - chain key: sha256 of a chain's block size, size and layer digests;
//     equal keys, equal merged indexes.
//   - merged-index file: a chain's merged index stored under its key
//     (derived data, rebuilt when invalid) and mapped read-only by
//     OpenChain, so its pages are the kernel's to reclaim and shared.
//
// The package knows nothing of where blobs live: a layer reads through a
// BlobSource (a local file, a partial file, or range requests), chosen by
// package repo. docs/format.md is the byte-level specification.
package snapshot
