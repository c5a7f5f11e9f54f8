package volume_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/volume"
)

const goldenSize = 16 << 20

// newSharingManager is newManager with a chunk cache big enough for the
// whole golden image.
func newSharingManager(t testing.TB, root string) *volume.Manager {
	t.Helper()
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := repo.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	m := volume.NewManager(root, cat, repo.Blobs{Store: st}, volume.Options{CacheBytes: 256 << 20})
	t.Cleanup(func() { m.Close() })
	return m
}

// makeGolden creates volume "golden" with snapshots s1 and s2 (a chain
// of two layers, many extents) and returns its contents at s2.
func makeGolden(t testing.TB, m *volume.Manager) []byte {
	t.Helper()
	if _, err := m.Create("golden", goldenSize, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("golden")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	r := rand.New(rand.NewSource(1))
	img := make([]byte, goldenSize)
	write := func(blk int, fill func([]byte)) {
		p := img[blk*4096 : (blk+1)*4096]
		fill(p)
		if _, err := v.WriteAt(p, int64(blk)*4096); err != nil {
			t.Fatal(err)
		}
	}
	for blk := 0; blk < goldenSize/4096; blk += 2 { // every other block: many extents
		write(blk, func(p []byte) { r.Read(p[:2048]); clear(p[2048:]) })
	}
	if _, err := v.Snapshot(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	for blk := 1; blk < goldenSize/4096; blk += 7 {
		write(blk, func(p []byte) { r.Read(p) })
	}
	if _, err := v.Snapshot(context.Background(), "s2"); err != nil {
		t.Fatal(err)
	}
	return img
}

// chunksUsed is the number of distinct chunks of its layers that a full
// read of chain c decompresses.
func chunksUsed(c *snapshot.Chain) int {
	type key struct {
		l     *snapshot.Layer
		chunk uint64
	}
	seen := map[key]bool{}
	bs := uint64(c.BlockSize())
	for _, e := range c.Index() {
		l := c.Layers()[e.Layer]
		cs := uint64(l.Trailer().ChunkSize)
		for ch := e.DataOff * bs / cs; ch <= ((e.DataOff+uint64(e.Count))*bs-1)/cs; ch++ {
			seen[key{l, ch}] = true
		}
	}
	return len(seen)
}

func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func readAll(t testing.TB, v *volume.Volume) []byte {
	t.Helper()
	got := make([]byte, v.Size())
	for off := 0; off < len(got); off += 1 << 20 {
		if _, err := v.ReadAt(got[off:off+1<<20], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	return got
}

// 16 clones of one golden snapshot (and a 17th with a few writes) open
// in one Manager share one merged index (one chain, one .midx file) and
// the same layers; each reads back byte-exact; the golden's chunks are
// decompressed once; the heap grows little per clone.
func TestClonesShareOneChain(t *testing.T) {
	root := t.TempDir()
	m := newSharingManager(t, root)
	img := makeGolden(t, m)
	const n = 16
	for i := 0; i <= n; i++ {
		if _, err := m.Clone(fmt.Sprintf("c%d", i), "golden", "s2"); err != nil {
			t.Fatal(err)
		}
	}
	if m.OpenChains() != 0 || m.OpenLayers() != 0 {
		t.Fatalf("precondition: %d chains, %d layers open with no volume open", m.OpenChains(), m.OpenLayers())
	}
	// The golden's seals wrote the index files of its chains: start
	// without them (derived data), so the clones' opens show what they write.
	if err := os.RemoveAll(filepath.Join(root, "index")); err != nil {
		t.Fatal(err)
	}
	statsBefore := m.Cache().Stats()
	vols := make([]*volume.Volume, 0, n+1)
	defer func() {
		for _, v := range vols {
			v.Close()
		}
	}()
	open := func(i int) *volume.Volume {
		v, err := m.Open(fmt.Sprintf("c%d", i))
		if err != nil {
			t.Fatal(err)
		}
		vols = append(vols, v)
		return v
	}
	open(0)
	heap1 := heapInUse()
	for i := 1; i < n; i++ {
		open(i)
	}
	heap16 := heapInUse()
	growth := int64(heap16) - int64(heap1)
	chain := vols[0].Chain()
	idxBytes := len(chain.Index()) * snapshot.IndexRecordSize
	t.Logf("Go heap: %d KiB with 1 clone open, %d KiB with %d (%+d KiB, %d KiB per clone); merged index %d extents, %d KiB, mapped %v",
		heap1>>10, heap16>>10, n, growth>>10, growth/(n-1)>>10, len(chain.Index()), idxBytes>>10, chain.Mapped())
	if !chain.Mapped() {
		t.Fatal("the chain's merged index is not mapped from its file")
	}
	if growth > (n-1)*256<<10 {
		t.Fatalf("the heap grew %d KiB for %d more clones: more than 256 KiB a clone", growth>>10, n-1)
	}

	// The clone with a few writes adds only its writable layer.
	w := open(n)
	want := bytes.Clone(img)
	for _, blk := range []int{0, 1, 1000, 4095} {
		p := bytes.Repeat([]byte{byte(blk) | 1}, 4096)
		copy(want[blk*4096:], p)
		if _, err := w.WriteAt(p, int64(blk)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if m.OpenChains() != 1 {
		t.Fatalf("%d chains open for %d clones of one snapshot, want 1", m.OpenChains(), n+1)
	}
	for _, v := range vols {
		if c := v.Chain(); c != chain {
			t.Fatalf("%s reads through another chain", v.Name())
		}
	}
	if m.OpenLayers() != len(chain.Layers()) {
		t.Fatalf("%d layers open for one chain of %d", m.OpenLayers(), len(chain.Layers()))
	}
	midx, _ := filepath.Glob(filepath.Join(root, "index", "*.midx"))
	if len(midx) != 1 {
		t.Fatalf("%d merged-index files, want 1: %v", len(midx), midx)
	}

	var wg sync.WaitGroup
	for _, v := range vols {
		wg.Add(1)
		go func() {
			defer wg.Done()
			exp := img
			if v == w {
				exp = want
			}
			if !bytes.Equal(readAll(t, v), exp) {
				t.Errorf("%s differs from what it should hold", v.Name())
			}
		}()
	}
	wg.Wait()
	st := m.Cache().Stats()
	used := chunksUsed(chain)
	t.Logf("cache: %+v; the golden chain uses %d chunks", st, used)
	if dec := st.ChunksDecompressed - statsBefore.ChunksDecompressed; dec != uint64(used) {
		t.Fatalf("%d chunks decompressed reading %d clones, want %d (each of the golden's once)", dec, n+1, used)
	}
	if st.Evictions != 0 || st.Hits == 0 || st.Bytes == 0 || st.BytesDecompressed == 0 {
		t.Fatalf("cache counters: %+v", st)
	}

	// Closing every clone drops the chain, its layers and their chunks;
	// the index file stays (derived data, for the next open).
	for _, v := range vols {
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
	}
	vols = nil
	if m.OpenChains() != 0 || m.OpenLayers() != 0 || m.Cache().Stats().Bytes != 0 {
		t.Fatalf("after closing every clone: %d chains, %d layers open, %d bytes cached",
			m.OpenChains(), m.OpenLayers(), m.Cache().Stats().Bytes)
	}
	if _, err := os.Stat(midx[0]); err != nil {
		t.Fatal(err)
	}
}

// Seal, flatten, rollback and resize give a volume a chain of its own
// and leave the other clones on the shared one; the last user of a
// chain drops it.
func TestSharedChainReplaced(t *testing.T) {
	m := newSharingManager(t, t.TempDir())
	img := makeGolden(t, m)
	for _, n := range []string{"a", "b", "c"} {
		if _, err := m.Clone(n, "golden", "s2"); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	a, err := m.Open("a")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := m.Open("b")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	chains := func(want int, when string) {
		t.Helper()
		if got := m.OpenChains(); got != want {
			t.Fatalf("%s: %d chains open, want %d", when, got, want)
		}
	}
	chains(1, "two clones")
	p := bytes.Repeat([]byte{9}, 4096)
	a.WriteAt(p, 0)
	if _, err := a.Snapshot(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	chains(2, "after a's snapshot")
	if b.Chain() == a.Chain() {
		t.Fatal("a's snapshot changed b's chain")
	}
	if _, err := a.Flatten(ctx); err != nil {
		t.Fatal(err)
	}
	chains(2, "after a's flatten")
	if err := m.Resize("c", goldenSize*2, false); err != nil {
		t.Fatal(err)
	}
	chains(2, "after resizing c (closed)")
	if !bytes.Equal(readAll(t, b), img) {
		t.Fatal("b changed")
	}
	want := bytes.Clone(img)
	copy(want, p)
	if !bytes.Equal(readAll(t, a), want) {
		t.Fatal("a is wrong after flatten")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	chains(1, "a closed")
	// Rollback of a to the golden's chain (a closed volume) and reopen:
	// it shares b's chain again.
	if _, err := m.Clone("d", "golden", "s2"); err != nil {
		t.Fatal(err)
	}
	d, err := m.Open("d")
	if err != nil {
		t.Fatal(err)
	}
	if d.Chain() != b.Chain() {
		t.Fatal("a new clone does not share the open chain")
	}
	d.Close()
	b.Close()
	chains(0, "all closed")
	if m.OpenLayers() != 0 {
		t.Fatalf("%d layers open with no volume open", m.OpenLayers())
	}
}

// Clones opened, read and closed from many goroutines at once (the last
// release of a chain racing with an open of the same chain) always read
// the golden and leave nothing open.
func TestSharedChainOpenCloseRace(t *testing.T) {
	m := newSharingManager(t, t.TempDir())
	img := makeGolden(t, m)
	const n = 6
	for i := 0; i < n; i++ {
		if _, err := m.Clone(fmt.Sprintf("c%d", i), "golden", "s2"); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(i)))
			p := make([]byte, 8192)
			for round := 0; round < 15; round++ {
				v, err := m.Open(fmt.Sprintf("c%d", i))
				if err != nil {
					t.Error(err)
					return
				}
				for k := 0; k < 20; k++ {
					off := r.Int63n(goldenSize-int64(len(p))) &^ 511
					if _, err := v.ReadAt(p, off); err != nil || !bytes.Equal(p, img[off:off+int64(len(p))]) {
						t.Errorf("c%d: read at %d: %v", i, off, err)
					}
				}
				v.Close()
			}
		}()
	}
	wg.Wait()
	if m.OpenChains() != 0 || m.OpenLayers() != 0 {
		t.Fatalf("%d chains, %d layers open with no volume open", m.OpenChains(), m.OpenLayers())
	}
}

// gc removes the merged-index files of chains that no volume or snapshot
// has any more (and writers' temp files), keeps those of live chains and
// of chains open in the manager; a volume whose file went rebuilds it.
func TestGCRemovesStaleIndexFiles(t *testing.T) {
	root := t.TempDir()
	m := newSharingManager(t, root)
	img := makeGolden(t, m)
	if _, err := m.Clone("c", "golden", "s2"); err != nil {
		t.Fatal(err)
	}
	c, err := m.Open("c")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dir := filepath.Join(root, "index")
	live := filepath.Join(dir, snapshot.IndexFileName(snapshot.NewChainKey(4096, goldenSize, c.Record().Layers)))
	stale := filepath.Join(dir, snapshot.IndexFileName(snapshot.NewChainKey(4096, goldenSize, []string{"sha256:gone"})))
	tmp := filepath.Join(dir, ".midx-tmp-123")
	other := filepath.Join(dir, "README")
	for _, p := range []string{stale, tmp, other} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(live); err != nil {
		t.Fatalf("precondition: %v", err)
	}
	ctx := context.Background()
	dry, err := m.GC(ctx, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := m.GC(ctx, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{tmp, stale}
	if fmt.Sprint(dry.IndexFiles) != fmt.Sprint(want) || fmt.Sprint(res.IndexFiles) != fmt.Sprint(want) {
		t.Fatalf("gc removed %v, dry run listed %v; want %v", res.IndexFiles, dry.IndexFiles, want)
	}
	for _, p := range []string{live, other} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("gc removed %s: %v", p, err)
		}
	}
	// Deleting the golden and the clone leaves their chains to no one:
	// the next gc takes their files, and the open clone keeps reading its
	// mapping (unlinked, still valid).
	if err := m.Delete("golden", true); err != nil {
		t.Fatal(err)
	}
	res, err = m.GC(ctx, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Fatalf("gc removed the index file of a chain open in the manager: %v (gc removed %v)", err, res.IndexFiles)
	}
	c.Close()
	if err := m.Delete("c", true); err != nil {
		t.Fatal(err)
	}
	if res, err = m.GC(ctx, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(live); !os.IsNotExist(err) {
		t.Fatalf("index file of a deleted chain: %v (gc removed %v)", err, res.IndexFiles)
	}
	_ = img
}

// A chain whose file another process unlinks while mapped keeps reading
// (the mapping holds the inode); the next open of that chain rebuilds it.
func TestMappedIndexSurvivesUnlink(t *testing.T) {
	root := t.TempDir()
	m := newSharingManager(t, root)
	img := makeGolden(t, m)
	if _, err := m.Clone("c", "golden", "s2"); err != nil {
		t.Fatal(err)
	}
	c, err := m.Open("c")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Chain().Mapped() {
		t.Fatal("precondition: not mapped")
	}
	if err := os.RemoveAll(filepath.Join(root, "index")); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, c), img) {
		t.Fatal("reads changed after the file was unlinked")
	}
	c.Close()
	c, err = m.Open("c")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Chain().Mapped() || !bytes.Equal(readAll(t, c), img) {
		t.Fatal("the reopened chain did not rebuild and map its index")
	}
}

// Where root/index cannot be written (here a file stands in its place,
// as a read-only or full root would refuse it) volumes open and read
// with their merged index on the heap, still one per chain.
func TestUnwritableIndexDirFallsBackToHeap(t *testing.T) {
	root := t.TempDir()
	m := newSharingManager(t, root)
	if err := os.WriteFile(filepath.Join(root, "index"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	img := makeGolden(t, m)
	for _, n := range []string{"a", "b"} {
		if _, err := m.Clone(n, "golden", "s2"); err != nil {
			t.Fatal(err)
		}
	}
	a, err := m.Open("a")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := m.OpenReadOnly("b")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if a.Chain().Mapped() || a.Chain() != b.Chain() || m.OpenChains() != 1 {
		t.Fatalf("mapped %v, shared %v, %d chains", a.Chain().Mapped(), a.Chain() == b.Chain(), m.OpenChains())
	}
	if !bytes.Equal(readAll(t, a), img) || !bytes.Equal(readAll(t, b), img) {
		t.Fatal("wrong data with the index on the heap")
	}
	if res, err := m.GC(context.Background(), false, nil); err != nil || len(res.IndexFiles) != 0 {
		t.Fatalf("gc with no index directory: %v, %v", res, err)
	}
}
