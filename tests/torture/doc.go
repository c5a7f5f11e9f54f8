// Package torture is a randomized, seeded, multi-process torture test of
// obdvol, in the spirit of FoundationDB's simulation and Jepsen's checkers.
//
// TestTorture builds the real binary and drives several obdvol processes on
// one --root (a small tmpfs when it can mount one) and a real local registry
// (tests/regtest): NBD servers (`obdvol serve`) that receive batches of
// writes and write-zeroes of any size and alignment, several in flight at
// once (often in one block, on distinct 512-byte sectors), through a
// minimal pipelining NBD client; flushes and reads; import; snapshot (also
// through a live server), clone, rollback, delete, flatten, resize; gc and
// eviction (--cache-max, --lazy-cache-max), often in the background while
// other commands run; push, pull, pull --lazy, fill, with tags pushed both
// from this root and from a second root (another host), so that pulls
// download. Faults drawn from the same seed: kill -9 of a random server or
// background command; a kill at the Nth fdatasync/fsync/rename/unlink/
// ftruncate/write of a command (strace -e inject); a pull slowed after each
// rename while gc runs; clone racing delete and gc; a disk filled to ENOSPC
// (a ballast file on the tmpfs) and given back; the catalogue's lock held
// longer than commands wait for it, taken in the middle of a command (a
// stalled process); one flipped bit in a journal record that valid records
// follow; one garbage page in the catalogue; the registry stopped (every
// volume pulled whole, filled or made here must read without it); serve
// asked to listen on a regular file or on a live server's socket.
//
// The model (model.go) holds what was acknowledged: per volume, the content
// at its last acknowledged flush and the writes sent since (after a kill,
// each byte they cover may hold the old or any new value; every other byte
// must hold the flushed one); per snapshot, its content at commit; after a
// failed or killed command, each state it may have left. A check exports
// the volume and its snapshots and resolves the model to the state it
// matches. Findings: a volume, snapshot or read through a server that
// matches no possible state; a listed volume or snapshot that cannot be
// exported; a crash (panic, fatal error); a command that hangs; a failed
// verify; files left under the root after deleting everything and gc;
// an NBD socket that others may open, or serve replacing a file or a live
// socket; a volume refused as active after its server was killed; a
// journal rewritten by a read-only export. Commands that fail with a clear
// error are not findings.
//
// Every run prints its seed; a failing run prints its findings and op log
// and replays (as far as process timing allows) with
//
//	go test ./tests/torture -run TestTorture -torture.duration=30s -torture.seed=N
//
// Without -torture.duration the test is skipped; make torture-short runs a
// bounded run, make torture DURATION=30m SEED=N a long one. It needs root
// for the tmpfs (without it, it runs without ENOSPC), docker-registry
// (make deps) and strace (without it, the syscall-level faults are off).
package torture
