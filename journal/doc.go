// Package journal is the record of a writable layer: which of its blocks
// hold data in its data file and which read as zeros. Package volume keeps
// the data file and the in-memory bitmap; this package keeps the file that
// makes the bitmap durable.
//
// Glossary:
//   - record: one extent (start block, count, state Zero or Data);
//     records apply in order, a later one overriding an earlier one where
//     they overlap.
//   - append: writing records after the last valid one and fsyncing; the
//     caller acknowledges the writes they describe only after it returns.
//   - torn tail: what a crash during an append leaves after the last valid
//     record: a partial record, or records failing their checksum with no
//     valid record after them.
//   - rewrite (compaction): replacing the file with the minimal records
//     of the current state.
//   - fail-stop: after a failed fsync the Journal refuses every later
//     call; reopening replays what reached the disk.
//
// Format (all integers little-endian):
//
//	header  16 bytes: "OBDVJRN1", block size uint32, crc32c (Castagnoli)
//	        of the first 12 bytes uint32
//	record  24 bytes: start uint64, count uint64, state byte (1 zero,
//	        2 data), three zero bytes, crc32c of the first 20 bytes uint32
//
// A record with count 0, a state other than 1 or 2, non-zero padding or
// start+count overflowing is impossible; with a valid checksum it is
// damage. Records past the volume's size are the reader's to ignore.
//
// Invariants (what a crash at any moment leaves):
//   - the caller appends a record only after the data it describes was
//     fdatasynced, so every record in the file describes durable data;
//   - records are written at offset 16+24*n, n the valid records known to
//     be in the file: a failed write is cut back off (Truncate, checked)
//     before anything else is appended, so valid records are never
//     followed by garbage they did not come before;
//   - Read (a read-only open) changes nothing: it creates no file,
//     ignores a torn tail in memory and refuses damage as Open does;
//   - only a torn tail is dropped at Open (and the file truncated there).
//     A bad record followed by a valid one cannot come from a crash: Open
//     fails with an error wrapping ErrCorrupt and changes nothing. Damage
//     to the last record cannot be told from a torn tail;
//   - a failed fsync (of the journal, or of the new file or directory
//     after a rewrite's rename) is fail-stop: Linux may have dropped the
//     dirty pages and cleared the error, so a retried fsync could report
//     success without them;
//   - Rewrite writes journal.tmp, fsyncs it, renames it over the journal,
//     fsyncs the directory: a failure before the rename leaves the old
//     journal in force (the call may be retried), one after it is
//     fail-stop.
package journal
