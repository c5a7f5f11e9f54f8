package snapshot

import (
	"bytes"
	"errors"
	"math/rand"
	"testing"
)

const tbs = 4096

// buildLayer writes a layer from a block-level description: blocks maps
// block -> content (nil = zero extent), processed in order.
func buildLayer(t testing.TB, size uint64, codec Codec, chunk uint32, blocks map[uint64][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, WriterOptions{VirtualSize: size, Codec: codec, ChunkSize: chunk})
	if err != nil {
		t.Fatal(err)
	}
	for b := uint64(0); b < size/tbs; b++ {
		d, ok := blocks[b]
		if !ok {
			continue
		}
		if d == nil {
			err = w.AddZero(b, 1)
		} else {
			err = w.AddData(b, d)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func randBlock(r *rand.Rand) []byte {
	b := make([]byte, tbs)
	switch r.Intn(4) {
	case 0: // all zero data: must become a zero extent
	case 1: // compressible
		for i := range b {
			b[i] = byte(i / 64)
		}
		b[0] = byte(r.Intn(255) + 1)
	default:
		r.Read(b)
	}
	return b
}

func TestChainAgainstModel(t *testing.T) {
	for _, codec := range []Codec{CodecZstd, CodecS2, CodecNone} {
		t.Run(codec.String(), func(t *testing.T) {
			r := rand.New(rand.NewSource(int64(codec) + 1))
			const nblocks = 300
			size := uint64(nblocks * tbs)
			model := make([]byte, size)
			var layers []*Layer
			cache := NewCache(1 << 20)
			for depth := 0; depth < 20; depth++ {
				blocks := map[uint64][]byte{}
				for i := 0; i < 40; i++ {
					start := uint64(r.Intn(nblocks))
					run := uint64(r.Intn(8) + 1)
					for b := start; b < start+run && b < nblocks; b++ {
						if r.Intn(5) == 0 {
							blocks[b] = nil
						} else {
							blocks[b] = randBlock(r)
						}
					}
				}
				for b, d := range blocks {
					if d == nil {
						clear(model[b*tbs : (b+1)*tbs])
					} else {
						copy(model[b*tbs:], d)
					}
				}
				l, err := Open(BytesSource(buildLayer(t, size, codec, 16<<10, blocks)))
				if err != nil {
					t.Fatal(err)
				}
				if err := l.Verify(); err != nil {
					t.Fatal(err)
				}
				layers = append(layers, l)
				for _, c := range []*Cache{nil, cache} {
					ch, err := NewChain(layers, size, tbs, c)
					if err != nil {
						t.Fatal(err)
					}
					checkIndex(t, ch)
					got := make([]byte, size)
					if _, err := ch.ReadAt(got, 0); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, model) {
						t.Fatalf("depth %d: chain differs from model", depth+1)
					}
					for k := 0; k < 50; k++ {
						off := r.Int63n(int64(size))
						n := r.Int63n(int64(size)-off) % 70000
						p := make([]byte, n)
						if _, err := ch.ReadAt(p, off); err != nil {
							t.Fatal(err)
						}
						if !bytes.Equal(p, model[off:off+n]) {
							t.Fatalf("depth %d: read [%d,+%d) differs", depth+1, off, n)
						}
					}
				}
			}
		})
	}
}

func checkIndex(t *testing.T, c *Chain) {
	t.Helper()
	var prev uint64
	for i, e := range c.Index() {
		if e.Count == 0 || e.Start < prev || e.End()*c.bs > c.size {
			t.Fatalf("merged index entry %d %+v is empty, overlapping or out of range", i, e)
		}
		prev = e.End()
	}
}

func TestZeroBlocksStoreNothing(t *testing.T) {
	blocks := map[uint64][]byte{}
	for b := uint64(0); b < 64; b++ {
		blocks[b] = make([]byte, tbs)
	}
	raw := buildLayer(t, 64*tbs, CodecZstd, 0, blocks)
	l, err := Open(BytesSource(raw))
	if err != nil {
		t.Fatal(err)
	}
	if l.Trailer().DataBytes != 0 || len(l.Extents()) != 1 || l.Extents()[0].Kind != KindZero || l.Extents()[0].Count != 64 {
		t.Fatalf("zero blocks: data %d, extents %+v", l.Trailer().DataBytes, l.Extents())
	}
}

func TestCorruptChunkDetected(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	blocks := map[uint64][]byte{0: randBlock(r), 1: randBlock(r), 2: randBlock(r)}
	blocks[0][5] = 1
	raw := buildLayer(t, 16*tbs, CodecZstd, 0, blocks)
	raw[HeaderSize+10] ^= 0x55
	l, err := Open(BytesSource(raw))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Verify(); !errors.Is(err, ErrChecksum) {
		t.Fatalf("Verify = %v, want ErrChecksum", err)
	}
	ch, _ := NewChain([]*Layer{l}, 16*tbs, tbs, nil)
	if _, err := ch.ReadAt(make([]byte, tbs), 0); !errors.Is(err, ErrChecksum) {
		t.Fatalf("ReadAt = %v, want ErrChecksum", err)
	}
}

func TestTruncatedAndHostile(t *testing.T) {
	r := rand.New(rand.NewSource(8))
	raw := buildLayer(t, 16*tbs, CodecZstd, 0, map[uint64][]byte{3: randBlock(r), 4: nil})
	for _, n := range []int{0, 10, HeaderSize + TrailerSize - 1, len(raw) - 1, len(raw) / 2} {
		if _, err := Open(BytesSource(raw[:n])); err == nil {
			t.Fatalf("Open of %d/%d bytes succeeded", n, len(raw))
		}
	}
	// A trailer claiming a huge index must fail before allocating.
	bad := append([]byte(nil), raw...)
	tr, _ := parseTrailer(bad[len(bad)-TrailerSize:], int64(len(bad)))
	tr.ExtentCount = 1 << 30
	copy(bad[len(bad)-TrailerSize:], tr.marshal())
	if _, err := Open(BytesSource(bad)); !errors.Is(err, ErrFormat) {
		t.Fatalf("hostile extent count: %v", err)
	}
}

func TestDeepChain256(t *testing.T) {
	const nblocks = 1024
	size := uint64(nblocks * tbs)
	model := make([]byte, size)
	r := rand.New(rand.NewSource(3))
	var layers []*Layer
	for k := 0; k < 256; k++ {
		b := uint64(r.Intn(nblocks))
		d := randBlock(r)
		d[1] = byte(k) | 1
		copy(model[b*tbs:], d)
		l, err := Open(BytesSource(buildLayer(t, size, CodecS2, 0, map[uint64][]byte{b: d})))
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	ch, err := NewChain(layers, size, tbs, NewCache(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := ch.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("256-layer chain differs from model")
	}
}

func TestCachedReadAllocatesNothing(t *testing.T) {
	r := rand.New(rand.NewSource(9))
	blocks := map[uint64][]byte{}
	for b := uint64(0); b < 32; b++ {
		blocks[b] = randBlock(r)
	}
	l, err := Open(BytesSource(buildLayer(t, 32*tbs, CodecZstd, 0, blocks)))
	if err != nil {
		t.Fatal(err)
	}
	ch, _ := NewChain([]*Layer{l}, 32*tbs, tbs, NewCache(8<<20))
	p := make([]byte, tbs)
	ch.ReadAt(p, 5*tbs)
	if a := testing.AllocsPerRun(100, func() { ch.ReadAt(p, 5*tbs) }); a != 0 {
		t.Fatalf("cached 4K read allocates %v times", a)
	}
}
