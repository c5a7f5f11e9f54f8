// Package device holds what the block-device frontends (device/ublk,
// device/nbd) share: the Backend they serve. device never imports volume;
// volume.Volume satisfies Backend.
//
// Glossary:
//   - backend: the thing a frontend serves, a virtual disk of Size bytes.
//   - frontend: a protocol server exposing a backend as a block device:
//     ublk (/dev/ublkbN through the kernel) or NBD (a socket).
//   - flush: the point after which every completed write survives a crash.
package device

// Backend is a virtual disk. All methods are safe for concurrent use.
// Offsets and lengths are in bytes; requests never cross Size (frontends
// check). Writes are durable only after Flush returns nil. WriteZeroes
// and Discard make the range read as zeros afterwards (a thin backend
// stores nothing for them).
type Backend interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Flush() error
	Discard(off, n int64) error
	WriteZeroes(off, n int64) error
	Size() uint64
}

// Mapper is implemented by backends that know which ranges hold data:
// NBD's BLOCK_STATUS (base:allocation) uses it so clients skip holes.
//
// Map calls fn for consecutive ranges covering [off, off+n) in order,
// each with whether it is a hole (nothing allocated: reads as zeros) and
// whether it reads as zeros. fn returns false to stop early.
type Mapper interface {
	Map(off, n int64, fn func(length int64, hole, zero bool) bool) error
}
