package snapshot

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
)

// midxChain builds a random chain of depth layers over nblocks blocks and
// returns its layers, digests standing for their names, and the
// reference chain with its index on the heap.
func midxChain(t testing.TB, seed int64, depth, nblocks int) ([]*Layer, []string, *Chain) {
	t.Helper()
	r := rand.New(rand.NewSource(seed))
	size := uint64(nblocks * tbs)
	var layers []*Layer
	var digests []string
	for d := 0; d < depth; d++ {
		blocks := map[uint64][]byte{}
		for i := 0; i < 30; i++ {
			start := uint64(r.Intn(nblocks))
			for b := start; b < start+uint64(r.Intn(8)+1) && b < uint64(nblocks); b++ {
				if r.Intn(5) == 0 {
					blocks[b] = nil
				} else {
					blocks[b] = randBlock(r)
				}
			}
		}
		l, err := Open(BytesSource(buildLayer(t, size, CodecZstd, 16<<10, blocks)))
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
		digests = append(digests, fmt.Sprintf("sha256:%064d", seed*1000+int64(d)))
	}
	ref, err := NewChain(layers, size, tbs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ref.Index()) == 0 {
		t.Fatal("precondition: the chain has no data")
	}
	return layers, digests, ref
}

// sameReads compares random reads (and the index) of two chains.
func sameReads(t *testing.T, got, want *Chain, seed int64) {
	t.Helper()
	if !slices.Equal(got.Index(), want.Index()) {
		t.Fatalf("index of %d extents differs from the built one's %d", len(got.Index()), len(want.Index()))
	}
	r := rand.New(rand.NewSource(seed))
	size := int64(want.Size())
	for k := 0; k < 200; k++ {
		off := r.Int63n(size)
		n := r.Int63n(size-off) % 40000
		a, b := make([]byte, n), make([]byte, n)
		if _, err := got.ReadAt(a, off); err != nil {
			t.Fatal(err)
		}
		if _, err := want.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("read [%d,+%d) differs", off, n)
		}
	}
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

// A chain opened from its merged-index file maps it and reads exactly
// what the chain built in memory reads; a second open maps the same
// file without rewriting it.
func TestIndexFileMapped(t *testing.T) {
	layers, digests, ref := midxChain(t, 1, 6, 400)
	dir := filepath.Join(t.TempDir(), "index")
	key := NewChainKey(tbs, ref.Size(), digests)
	f := IndexFile{Dir: dir, Key: key}
	c, err := OpenChain(layers, ref.Size(), tbs, NewCache(1<<20), f)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Mapped() {
		t.Fatal("the index is not mapped from its file")
	}
	sameReads(t, c, ref, 1)
	path := filepath.Join(dir, IndexFileName(key))
	ino := inode(t, path)
	c2, err := OpenChain(layers, ref.Size(), tbs, nil, f)
	if err != nil {
		t.Fatal(err)
	}
	if !c2.Mapped() || inode(t, path) != ino {
		t.Fatal("a valid file was not mapped as it is")
	}
	sameReads(t, c2, ref, 2)
	if err := c2.Close(); err != nil {
		t.Fatal(err)
	}
	if c2.Mapped() || c2.Index() != nil {
		t.Fatal("Close left the mapping")
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want, AppendIndexFile(nil, key, ref)) {
		t.Fatal("the file is not the documented encoding of the built index")
	}
	if len(want) != IndexFileHeaderSize+IndexRecordSize*len(ref.Index()) {
		t.Fatalf("file of %d bytes for %d records", len(want), len(ref.Index()))
	}
}

// A corrupt, truncated, extended or foreign file is rebuilt, never
// trusted: each damaged file is detected, the chain reads what the built
// one reads, and the file is valid again afterwards.
func TestIndexFileCorruptRebuilt(t *testing.T) {
	layers, digests, ref := midxChain(t, 2, 5, 300)
	dir := t.TempDir()
	key := NewChainKey(tbs, ref.Size(), digests)
	path := filepath.Join(dir, IndexFileName(key))
	good := AppendIndexFile(nil, key, ref)
	// Another chain's file: the same layers at another size, and a chain
	// of fewer layers.
	small := ref.Size() - 64*tbs
	refSmall, err := NewChain(layers, small, tbs, nil)
	if err != nil {
		t.Fatal(err)
	}
	other := AppendIndexFile(nil, NewChainKey(tbs, small, digests), refSmall)
	refShort, err := NewChain(layers[:3], ref.Size(), tbs, nil)
	if err != nil {
		t.Fatal(err)
	}
	renamed := AppendIndexFile(nil, key, refShort) // right name and key, wrong content and layer count
	r := rand.New(rand.NewSource(3))
	damaged := map[string][]byte{
		"empty":          {},
		"header only":    good[:IndexFileHeaderSize],
		"torn record":    good[:len(good)-7],
		"record missing": good[:len(good)-IndexRecordSize],
		"extended":       append(slices.Clone(good), good[IndexFileHeaderSize:IndexFileHeaderSize+IndexRecordSize]...),
		"other chain":    other,
		"fewer layers":   renamed,
		"garbage":        bytes.Repeat([]byte{0xa5}, len(good)),
	}
	for i := 0; i < 20; i++ {
		b := slices.Clone(good)
		b[r.Intn(len(b))] ^= byte(1 << r.Intn(8))
		damaged[fmt.Sprintf("bit flip %d", i)] = b
	}
	for name, b := range damaged {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseIndexFile(b, key, layers, ref.Size(), tbs); err == nil {
				t.Fatal("precondition: the damaged file parses")
			}
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := OpenChain(layers, ref.Size(), tbs, nil, IndexFile{Dir: dir, Key: key})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if !c.Mapped() {
				t.Fatal("the rebuilt index is not mapped")
			}
			sameReads(t, c, ref, 4)
			now, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(now, good) {
				t.Fatal("the damaged file was not rewritten")
			}
		})
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("%d files in the index directory, want 1 (temp files left?)", len(ents))
	}
}

// Where the file cannot be written (the directory cannot be made, a
// read-only open) the index stays on the heap and the chain works.
func TestIndexFileUnwritableFallsBack(t *testing.T) {
	layers, digests, ref := midxChain(t, 5, 4, 200)
	key := NewChainKey(tbs, ref.Size(), digests)
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A regular file where the directory should be: MkdirAll fails even
	// for root (as on a read-only or full filesystem).
	c, err := OpenChain(layers, ref.Size(), tbs, nil, IndexFile{Dir: filepath.Join(blocker, "index"), Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if c.Mapped() {
		t.Fatal("mapped an index that could not be written")
	}
	sameReads(t, c, ref, 6)
	c.Close()

	dir := t.TempDir()
	c, err = OpenChain(layers, ref.Size(), tbs, nil, IndexFile{Dir: dir, Key: key, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if c.Mapped() {
		t.Fatal("a read-only open mapped a file it had no business writing")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatal("a read-only open wrote the index file")
	}
	sameReads(t, c, ref, 7)
	// A read-only open maps a valid file that is there.
	if err := os.WriteFile(filepath.Join(dir, IndexFileName(key)), AppendIndexFile(nil, key, ref), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err = OpenChain(layers, ref.Size(), tbs, nil, IndexFile{Dir: dir, Key: key, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Mapped() {
		t.Fatal("a read-only open did not map a valid file")
	}
	sameReads(t, c, ref, 8)
}

// Many openers building the same index at once (as two processes on one
// root may) all end with a correct index, and the file left is valid
// and whole.
func TestIndexFileConcurrentBuilders(t *testing.T) {
	layers, digests, ref := midxChain(t, 9, 6, 300)
	dir := t.TempDir()
	key := NewChainKey(tbs, ref.Size(), digests)
	path := filepath.Join(dir, IndexFileName(key))
	for round := 0; round < 5; round++ {
		os.Remove(path)
		var wg sync.WaitGroup
		chains := make([]*Chain, 8)
		errs := make([]error, 8)
		for i := range chains {
			wg.Add(1)
			go func() {
				defer wg.Done()
				chains[i], errs[i] = OpenChain(layers, ref.Size(), tbs, nil, IndexFile{Dir: dir, Key: key})
			}()
		}
		wg.Wait()
		for i, c := range chains {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			if !slices.Equal(c.Index(), ref.Index()) {
				t.Fatalf("round %d: opener %d has a wrong index", round, i)
			}
			c.Close()
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, AppendIndexFile(nil, key, ref)) {
			t.Fatalf("round %d: the file left is not the index", round)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("%d files in the index directory, want 1", len(ents))
	}
}

// The read path over a mapped index allocates nothing.
func TestIndexFileReadAllocatesNothing(t *testing.T) {
	layers, digests, ref := midxChain(t, 11, 3, 200)
	c, err := OpenChain(layers, ref.Size(), tbs, NewCache(1<<20), IndexFile{Dir: t.TempDir(), Key: NewChainKey(tbs, ref.Size(), digests)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Mapped() {
		t.Fatal("precondition: not mapped")
	}
	p := make([]byte, tbs)
	off := int64(c.Index()[0].Start * tbs)
	c.ReadAt(p, off)
	if a := testing.AllocsPerRun(100, func() { c.ReadAt(p, off) }); a != 0 {
		t.Fatalf("a 4K read allocates %v times", a)
	}
}

func TestChainKey(t *testing.T) {
	a := NewChainKey(4096, 1<<20, []string{"ab", "c"})
	for _, b := range []ChainKey{
		NewChainKey(512, 1<<20, []string{"ab", "c"}),
		NewChainKey(4096, 2<<20, []string{"ab", "c"}),
		NewChainKey(4096, 1<<20, []string{"a", "bc"}),
		NewChainKey(4096, 1<<20, []string{"c", "ab"}),
		NewChainKey(4096, 1<<20, []string{"ab"}),
	} {
		if a == b {
			t.Fatal("two chains share a key")
		}
	}
	if a != NewChainKey(4096, 1<<20, []string{"ab", "c"}) {
		t.Fatal("key is not deterministic")
	}
	if k, ok := IsIndexFileName(IndexFileName(a)); !ok || k != a {
		t.Fatal("IsIndexFileName does not parse IndexFileName")
	}
	for _, n := range []string{"x.midx", a.String(), a.String() + ".mid", ".midx-tmp-1", "zz" + IndexFileName(a)[2:]} {
		if _, ok := IsIndexFileName(n); ok {
			t.Fatalf("%q taken for an index file", n)
		}
	}
}

// FuzzMergedIndexFile feeds arbitrary bytes to the merged-index file's
// parser, then as the file itself to OpenChain: nothing panics; a file
// the parser rejects is rebuilt (the chain reads as the built one); one it
// accepts reads only within the chain's layers.
func FuzzMergedIndexFile(f *testing.F) {
	layers, digests, ref := midxChain(f, 13, 3, 64)
	key := NewChainKey(tbs, ref.Size(), digests)
	good := AppendIndexFile(nil, key, ref)
	f.Add(good)
	f.Add(good[:IndexFileHeaderSize])
	f.Add(good[:len(good)-5])
	f.Add([]byte(indexFileMagic))
	empty, _ := NewChain(layers[:1], ref.Size(), tbs, nil)
	f.Add(AppendIndexFile(nil, key, empty))
	dir := f.TempDir()
	path := filepath.Join(dir, IndexFileName(key))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := ParseIndexFile(b, key, layers, ref.Size(), tbs)
		if err == nil {
			idx := decodeRecords(b[IndexFileHeaderSize:], n)
			c := &Chain{layers: layers, idx: idx, bs: tbs, size: ref.Size()}
			p := make([]byte, 3*tbs)
			for off := uint64(0); off+uint64(len(p)) <= c.size; off += uint64(len(p)) {
				c.ReadAt(p, int64(off))
			}
			c.Span(0, 1<<20)
			return
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := OpenChain(layers, ref.Size(), tbs, nil, IndexFile{Dir: dir, Key: key})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if !slices.Equal(c.Index(), ref.Index()) {
			t.Fatal("a rejected file was not rebuilt")
		}
	})
}
