// Package repo holds the host's content store and moves snapshot chains
// between it and OCI registries or OCI image layouts.
//
// Glossary:
//
//   - blob: an immutable file named by the sha256 of its bytes (a layer,
//     or an artifact's config or manifest).
//   - Store: the host's content store, Root/blobs/sha256/<hex>; a path
//     that exists holds a complete, verified blob.
//   - partial file: Root/partial/<hex>.part, a download in progress that
//     a later pull resumes (<hex>.segs: its segments present, when it
//     downloads over several range requests); <hex>.lazy, <hex>.map and <hex>.lock hold a
//     lazy blob shared by every process (see LazyBlob).
//   - leftover: a tmp/ or .part file whose writer is gone (its flock is
//     free: writers hold one from creation to rename), or a .map whose
//     .lazy is gone; CleanLeftovers (gc) removes them, never by age.
//   - artifact: one snapshot as an OCI 1.1 image manifest whose layers
//     are the chain, base first, and whose config is a ChainConfig
//     (docs/artifact.md).
//   - Ref: where an artifact lives: host[:port]/repo:tag, ...@sha256:...,
//     or oci:DIR[:tag].
//   - Target: an opened Ref (a registry repository or a layout).
//   - origin: a repository a layer was pushed to or pulled from, which
//     lazy reads and cross-repository mounts use.
//   - upload session: a registry's blob upload opened by POST and named
//     by the Location of each answer; a whole upload closes it with one
//     PUT of the blob, a chunked upload (upload*.go) sends PATCHes of at
//     most the chunk size in order, then a PUT with the digest.
//   - upload record: Root/uploads/<sha256 of registry/repo@digest>.session,
//     a chunked upload's last session Location (and its lock, flock), so
//     that the next push of the blob there resumes it (upload_record.go).
//   - part: a byte range of a layer larger than PushOptions.MaxBlob,
//     pushed as a blob of its own (parts.go); parts exist only in
//     registries: a pull writes them at their offsets in the layer's
//     partial file. The store, the catalogue and lazy blobs know only the
//     layer.
//
// Push and Pull report through TransferResult and the Progress hooks and
// never print. Pull stores blobs only after checking them; recording a
// volume in the catalogue is the caller's step, after Pull succeeds, under
// the lease PullOptions.Lease took before any layer was looked at.
package repo
