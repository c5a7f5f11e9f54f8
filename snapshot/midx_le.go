//go:build amd64 || arm64 || riscv64 || loong64 || ppc64le || mips64le

package snapshot

import "unsafe"

// On these little-endian 64-bit targets an MExtent in memory is the file's
// 24-byte record (Start, DataOff, Count, Layer, two bytes of padding), so
// the mapped records are the index itself. These fail to compile if the
// layout ever changes.
var (
	_ [24 - unsafe.Sizeof(MExtent{})]struct{}
	_ [unsafe.Sizeof(MExtent{}) - 24]struct{}
	_ [8 - unsafe.Offsetof(MExtent{}.DataOff)]struct{}
	_ [unsafe.Offsetof(MExtent{}.DataOff) - 8]struct{}
	_ [16 - unsafe.Offsetof(MExtent{}.Count)]struct{}
	_ [unsafe.Offsetof(MExtent{}.Count) - 16]struct{}
	_ [20 - unsafe.Offsetof(MExtent{}.Layer)]struct{}
	_ [unsafe.Offsetof(MExtent{}.Layer) - 20]struct{}
)

// recordsView returns n records of b (checked by ParseIndexFile) as
// MExtents: b itself when it is 8-byte aligned (a mapping is page
// aligned, the header a multiple of 8), mapped true; otherwise a copy.
func recordsView(b []byte, n int) (idx []MExtent, mapped bool) {
	if n == 0 {
		return nil, true
	}
	if uintptr(unsafe.Pointer(&b[0]))%unsafe.Alignof(MExtent{}) != 0 {
		return decodeRecords(b, n), false
	}
	return unsafe.Slice((*MExtent)(unsafe.Pointer(&b[0])), n), true
}
