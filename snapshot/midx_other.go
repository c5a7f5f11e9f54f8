//go:build !(amd64 || arm64 || riscv64 || loong64 || ppc64le || mips64le)

package snapshot

// recordsView decodes the records on targets where the file's layout is
// not MExtent's in memory (big-endian, 32-bit): the index is on the heap.
func recordsView(b []byte, n int) (idx []MExtent, mapped bool) {
	return decodeRecords(b, n), false
}
