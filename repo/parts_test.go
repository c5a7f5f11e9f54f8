package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
)

const testPart = 256 << 10

// A layer larger than the registry's request limit goes up in parts
// through a proxy answering 413 over the limit, and comes back byte-exact
// eagerly (parts assembled, part files removed) and lazily (ranges mapped
// onto the parts, across part boundaries), and its fill checks the layer.
func TestPushPullPartsRegistry(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	fp := faultproxy.Start(t, reg.Addr)
	fp.Set(faultproxy.Faults{MaxRequestBody: 300 << 10})
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 21, 3<<20, 100<<10)
	big := cfg.Layers[0]
	// The precondition: whole, the big layer does not get through in one
	// request (it goes up only by the 413 fallback to chunks, upload.go;
	// into another repository, so that the parts push below does not find
	// the layer whole).
	if r, err := Push(ctx, a, target(t, fp.Addr+"/whole:whole", nil), cfg, PushOptions{}); err != nil || fp.Stats().TooLarge == 0 || r.BlobsChunked == 0 {
		t.Fatalf("a whole 3 MiB layer through a 300 KiB request limit: %v, %+v", err, fp.Stats())
	}
	fp.ResetStats()
	res, err := Push(ctx, a, target(t, fp.Addr+"/golden:v1", nil), cfg, PushOptions{MaxBlob: testPart})
	if err != nil {
		t.Fatal(err)
	}
	nparts := int((big.Size + testPart - 1) / testPart)
	if res.LayersSplit != 1 || len(res.Split[big.Digest]) != nparts || fp.Stats().TooLarge != 0 {
		t.Fatalf("push in parts: %+v, %+v", res, fp.Stats())
	}
	// The manifest lists the parts in order, the config the layer.
	p, err := Pull(ctx, b, target(t, fp.Addr+"/golden:v1", nil), PullOptions{Concurrency: 3})
	if err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, a, b, cfg)
	if got := p.Config.Layers[0]; got.Digest != big.Digest || len(got.Parts) != nparts || p.Config.Version != ConfigVersionParts {
		t.Fatalf("pulled config: version %d, layer %+v", p.Config.Version, got)
	}
	if p.Layers[0].Fetched != big.Size || p.BlobsMoved != 2 {
		t.Fatalf("pull: %+v", p)
	}
	if l := partials(t, b); len(l) != 0 {
		t.Fatalf("part files left: %v", l)
	}
	// Lazily: every range from the parts, one spanning a boundary too.
	c := newStore(t)
	want, _ := os.ReadFile(mustPath(a, big.Digest))
	tg := target(t, fp.Addr+"/golden:v1", nil)
	fetch, err := LayerRanges(tg.Repo, big.Digest, big.Size, p.Config.Layers[0].Parts)
	if err != nil {
		t.Fatal(err)
	}
	span, err := fetch.FetchRange(ctx, big.Digest, testPart-100, 200)
	if err != nil || !bytes.Equal(span, want[testPart-100:testPart+100]) {
		t.Fatalf("range across a part boundary: %v", err)
	}
	lb := openLazy(t, c, big.Digest, fetch, int(big.Size))
	readAll(t, lb, want)
	if err := lb.Fill(ctx, c, FillOptions{}); err != nil {
		t.Fatal(err)
	}
	if !c.Has(big.Digest) {
		t.Fatal("the filled lazy layer is not in the store")
	}
	// Pushing again: every part is skipped.
	res, err = Push(ctx, a, target(t, fp.Addr+"/golden:v1", nil), cfg, PushOptions{MaxBlob: testPart})
	if err != nil || res.BytesMoved != 0 || res.BlobsSkipped != nparts+2 {
		t.Fatalf("push again: %+v, %v", res, err)
	}
}

// cancelAfter cancels a context once n blobs were transferred.
type cancelAfter struct {
	n      atomic.Int32
	after  int32
	cancel context.CancelFunc
}

func (c *cancelAfter) Start(string, int64) {}
func (c *cancelAfter) Add(string, int64)   {}
func (c *cancelAfter) Done(_ string, err error) {
	if err == nil && c.n.Add(1) == c.after {
		c.cancel()
	}
}

// A push cancelled with parts in flight resumes with the finished parts
// skipped; a pull cancelled the same way keeps the parts it wrote.
func TestPartsResume(t *testing.T) {
	reg := regtest.Start(t)
	fp := faultproxy.Start(t, reg.Addr)
	// Parts in flight when the cancel comes: each request waits 20 ms,
	// each download shares 8 MiB/s.
	fp.Set(faultproxy.Faults{Bandwidth: 8 << 20, Latency: 20 * time.Millisecond})
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 22, 4<<20)
	size := cfg.Layers[0].Size
	ctx, cancel := context.WithCancel(context.Background())
	ca := &cancelAfter{after: 4, cancel: cancel}
	_, err := Push(ctx, a, target(t, fp.Addr+"/golden:v1", nil), cfg, PushOptions{MaxBlob: testPart, Concurrency: 3, Progress: ca})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled push: %v", err)
	}
	done := ca.n.Load()
	fp.ResetStats()
	res, err := Push(context.Background(), a, target(t, fp.Addr+"/golden:v1", nil), cfg, PushOptions{MaxBlob: testPart})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("push cancelled after %d of %d parts; again: moved %d blobs (%d bytes), skipped %d; %d bytes received",
		done, len(res.Split[cfg.Layers[0].Digest]), res.BlobsMoved, res.BytesMoved, res.BlobsSkipped, fp.Stats().BytesIn)
	// The registry receives what was not skipped, and at most one part
	// more: the retrying transport may send a request again once (a lost
	// answer or a 5xx, seen under heavy load).
	if res.BlobsSkipped < int(done) || res.BytesSkipped < int64(done)*testPart || fp.Stats().BytesIn > size-int64(done-2)*testPart {
		t.Fatalf("resumed push after %d parts: %+v, %d bytes received by the registry", done, res, fp.Stats().BytesIn)
	}

	ctx, cancel = context.WithCancel(context.Background())
	ca = &cancelAfter{after: 4, cancel: cancel}
	if _, err := Pull(ctx, b, target(t, fp.Addr+"/golden:v1", nil), PullOptions{Concurrency: 3, Progress: ca}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled pull: %v", err)
	}
	if lp, _ := b.partialPath(cfg.Layers[0].Digest); b.Has(cfg.Layers[0].Digest) || !fileExists(lp) {
		t.Fatalf("after a cancelled pull: in the store %v, partial files %v", b.Has(cfg.Layers[0].Digest), partials(t, b))
	}
	// The registry side, with slack for the cancelled pull's responses
	// the proxy was still sending when the counters were reset.
	fp.ResetStats()
	p, err := Pull(context.Background(), b, target(t, fp.Addr+"/golden:v1", nil), PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, a, b, cfg)
	if l := p.Layers[0]; l.Resumed < 4*testPart || l.Fetched > size-4*testPart || fp.Stats().BytesOut > size-3*testPart {
		t.Fatalf("resumed pull: %+v, %d bytes sent by the registry", l, fp.Stats().BytesOut)
	}
}

// A pull cut short leaves the layer's partial file with whole parts and
// a torn one: the next pull keeps the whole parts and fetches the rest.
func TestPullPartsKeepsAssembledPrefix(t *testing.T) {
	ctx := context.Background()
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 23, 1<<20)
	dir := t.TempDir()
	if _, err := Push(ctx, a, target(t, "oci:"+dir+":v1", nil), cfg, PushOptions{MaxBlob: testPart}); err != nil {
		t.Fatal(err)
	}
	layer, _ := os.ReadFile(mustPath(a, cfg.Layers[0].Digest))
	os.MkdirAll(b.PartialDir(), 0o700)
	path, _ := b.partialPath(cfg.Layers[0].Digest)
	torn := append(append([]byte(nil), layer[:2*testPart+1000]...), bytes.Repeat([]byte{1}, 100)...)
	if err := os.WriteFile(path, torn, 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Pull(ctx, b, target(t, "oci:"+dir+":v1", nil), PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, a, b, cfg)
	if l := p.Layers[0]; l.Resumed != 2*testPart || l.Fetched != int64(len(layer))-2*testPart {
		t.Fatalf("pull over a torn file: %+v", l)
	}
	// A part's range that is not the part's is fetched again.
	torn[10] ^= 1
	c := newStore(t)
	os.MkdirAll(c.PartialDir(), 0o700)
	path, _ = c.partialPath(cfg.Layers[0].Digest)
	os.WriteFile(path, torn, 0o600)
	if p, err = Pull(ctx, c, target(t, "oci:"+dir+":v1", nil), PullOptions{}); err != nil || p.Layers[0].Resumed != testPart {
		t.Fatalf("pull over a bad first part: %+v, %v", p, err)
	}
	sameBlobs(t, a, c, cfg)
}

// pushLying writes an artifact whose config and manifest agree with each
// other (edit changes the config before the manifest is made from it)
// into an OCI layout, every part blob included.
func pushLying(t *testing.T, a *Store, cfg *ChainConfig, edit func(*ChainConfig)) string {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	good, src, closeParts, err := splitLayers(ctx, a, nil, cfg, PushOptions{MaxBlob: testPart, Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer closeParts()
	tg := target(t, "oci:"+dir+":v1", nil)
	for d, s := range src {
		if err := tg.Push(ctx, ocispec.Descriptor{MediaType: PartMediaType, Digest: d, Size: s.n}, io.NewSectionReader(s.r, s.off, s.n)); err != nil {
			t.Fatal(err)
		}
	}
	edit(good)
	cb, _ := json.Marshal(good)
	cd := ocispec.Descriptor{MediaType: ConfigMediaType, Digest: digest.FromBytes(cb), Size: int64(len(cb))}
	tg.Push(ctx, cd, bytes.NewReader(cb))
	md, err := oras.PackManifest(ctx, tg, oras.PackManifestVersion1_1, ArtifactType,
		oras.PackManifestOptions{Layers: layerDescriptors(good), ConfigDescriptor: &cd})
	if err != nil {
		t.Fatal(err)
	}
	tg.Tag(ctx, md, "v1")
	return "oci:" + dir + ":v1"
}

// Parts that verify one by one but do not make the layer (swapped, or
// another layer's) store nothing; configs that lie about the parts'
// sizes, or list parts in a version-1 config, are refused before any
// fetch.
func TestPullLyingParts(t *testing.T) {
	a := newStore(t)
	cfg := chainOf(t, a, 24, 1<<20, 600<<10)
	for name, c := range map[string]struct {
		edit func(*ChainConfig)
		want error
	}{
		"swapped": {func(c *ChainConfig) {
			p := c.Layers[0].Parts
			p[0], p[1] = p[1], p[0]
		}, ErrDigestMismatch},
		"another layer's part": {func(c *ChainConfig) {
			c.Layers[0].Parts[1] = c.Layers[1].Parts[1]
		}, ErrDigestMismatch},
		"duplicated": {func(c *ChainConfig) {
			c.Layers[0].Parts[2] = c.Layers[0].Parts[1]
		}, ErrDigestMismatch},
		"short": {func(c *ChainConfig) {
			c.Layers[0].Parts = c.Layers[0].Parts[1:]
		}, ErrArtifact},
		"version 1": {func(c *ChainConfig) { c.Version = 1 }, ErrArtifact},
		"one part": {func(c *ChainConfig) {
			c.Layers[1].Parts = []Part{{Digest: c.Layers[0].Digest, Size: c.Layers[1].Size}}
		}, ErrArtifact},
	} {
		t.Run(name, func(t *testing.T) {
			ref := pushLying(t, a, cfg, c.edit)
			b := newStore(t)
			_, err := Pull(context.Background(), b, target(t, ref, nil), PullOptions{})
			if !errors.Is(err, c.want) {
				t.Fatalf("pull: %v, want %v", err, c.want)
			}
			if b.Has(cfg.Layers[0].Digest) {
				t.Fatal("the store holds the layer its lying parts made")
			}
			// The other layer's pull, cancelled, may keep its files.
			if p, _ := b.partialPath(cfg.Layers[0].Digest); fileExists(p) {
				t.Fatalf("the layer's partial file is left: %v", partials(t, b))
			}
		})
	}
}

// A manifest whose part descriptors disagree with the config (another
// layer's annotation, another place, a media type) is refused.
func TestMatchParts(t *testing.T) {
	a := newStore(t)
	cfg := chainOf(t, a, 25, 600<<10)
	c, _, closeParts, err := splitLayers(context.Background(), a, nil, cfg, PushOptions{MaxBlob: testPart, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	closeParts()
	for name, edit := range map[string]func(d []ocispec.Descriptor){
		"of":         func(d []ocispec.Descriptor) { d[1].Annotations[AnnotationPartOf] = digest.FromString("x").String() },
		"index":      func(d []ocispec.Descriptor) { d[1].Annotations[AnnotationPartIndex] = "2" },
		"offset":     func(d []ocispec.Descriptor) { delete(d[2].Annotations, AnnotationPartOffset) },
		"media type": func(d []ocispec.Descriptor) { d[0].MediaType = LayerMediaType },
		"order":      func(d []ocispec.Descriptor) { d[0], d[1] = d[1], d[0] },
		"missing":    func(d []ocispec.Descriptor) {},
	} {
		d := layerDescriptors(c)
		edit(d)
		if name == "missing" {
			d = d[:len(d)-1]
		}
		if err := matchLayers(&ocispec.Manifest{Layers: d}, c); !errors.Is(err, ErrArtifact) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := matchLayers(&ocispec.Manifest{Layers: layerDescriptors(c)}, c); err != nil {
		t.Fatal(err)
	}
}

// FuzzParseArtifact feeds manifests and configs through what a pull
// checks before fetching: whatever it accepts describes each layer's
// parts consistently, and nothing panics.
func FuzzParseArtifact(f *testing.F) {
	d1, d2, d3 := digest.FromString("1").String(), digest.FromString("2").String(), digest.FromString("3").String()
	cfg := ChainConfig{Version: 2, VirtualSize: 1 << 20, BlockSize: 4096, Codec: "zstd", ChunkSize: 65536, Snapshot: "s",
		Layers: []LayerInfo{{Digest: d1, Size: 300, VirtualSize: 1 << 20, Parts: []Part{{d2, 200}, {d3, 100}}}}}
	cb, _ := json.Marshal(cfg)
	m := ocispec.Manifest{ArtifactType: ArtifactType, Config: ocispec.Descriptor{MediaType: ConfigMediaType,
		Digest: digest.FromBytes(cb), Size: int64(len(cb))}, Layers: layerDescriptors(&cfg)}
	mb, _ := json.Marshal(m)
	f.Add(mb, cb)
	f.Add(mb, []byte(strings.Replace(string(cb), `"size":100`, `"size":101`, 1)))
	f.Add(mb, []byte(strings.Replace(string(cb), `"version":2`, `"version":1`, 1)))
	f.Fuzz(func(t *testing.T, mb, cb []byte) {
		m, err := ParseManifest(mb)
		if err != nil {
			return
		}
		c, err := ParseConfig(cb)
		if err != nil || matchLayers(m, c) != nil {
			return
		}
		for _, l := range c.Layers {
			var sum int64
			for _, p := range l.Parts {
				sum += p.Size
			}
			if len(l.Parts) == 1 || len(l.Parts) > 0 && (sum != l.Size || c.Version != ConfigVersionParts) {
				t.Fatalf("accepted layer %+v in config version %d", l, c.Version)
			}
			if len(l.Parts) > 0 {
				if _, err := NewPartRanges(l.Digest, l.Size, l.Parts, zeroFetcher{}); err != nil {
					t.Fatalf("accepted parts the fetcher refuses: %v", err)
				}
			}
		}
	})
}

// A layer the target already holds whole is pushed whole again (not
// read, not split); a new target gets it in parts, and the same parts
// every time (one manifest digest).
func TestPushPartsKeepsWholeLayer(t *testing.T) {
	ctx := context.Background()
	a := newStore(t)
	cfg := chainOf(t, a, 26, 1<<20)
	dir := t.TempDir()
	if _, err := Push(ctx, a, target(t, "oci:"+dir+":v1", nil), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err := Push(ctx, a, target(t, "oci:"+dir+":v2", nil), cfg, PushOptions{MaxBlob: testPart})
	if err != nil || res.LayersSplit != 0 || res.BytesMoved != 0 {
		t.Fatalf("push over the whole layer: %+v, %v", res, err)
	}
	other := t.TempDir()
	r1, err := Push(ctx, a, target(t, "oci:"+other+":v1", nil), cfg, PushOptions{MaxBlob: testPart})
	if err != nil || r1.LayersSplit != 1 {
		t.Fatalf("push in parts: %+v, %v", r1, err)
	}
	r2, err := Push(ctx, a, target(t, "oci:"+other+":v2", nil), cfg, PushOptions{MaxBlob: testPart})
	if err != nil || r2.Manifest != r1.Manifest || r2.BytesMoved != 0 {
		t.Fatalf("push in parts again: %+v, %v (first %s)", r2, err, r1.Manifest)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// A layer's partial file with parts present, missing (a hole) and torn:
// the next pull keeps exactly the parts whose ranges check out.
func TestPullPartsKeepsPresentParts(t *testing.T) {
	ctx := context.Background()
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 27, 1<<20)
	dir := t.TempDir()
	if _, err := Push(ctx, a, target(t, "oci:"+dir+":v1", nil), cfg, PushOptions{MaxBlob: testPart}); err != nil {
		t.Fatal(err)
	}
	layer, _ := os.ReadFile(mustPath(a, cfg.Layers[0].Digest))
	os.MkdirAll(b.PartialDir(), 0o700)
	path, _ := b.partialPath(cfg.Layers[0].Digest)
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(layer[:testPart], 0)                      // part 0
	f.WriteAt(layer[2*testPart:3*testPart], 2*testPart) // part 2; part 1 a hole
	torn := append([]byte(nil), layer[3*testPart:4*testPart]...)
	torn[100] ^= 1
	f.WriteAt(torn, 3*testPart) // part 3 torn
	f.Close()
	p, err := Pull(ctx, b, target(t, "oci:"+dir+":v1", nil), PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, a, b, cfg)
	if l := p.Layers[0]; l.Resumed != 2*testPart || l.Fetched != int64(len(layer))-2*testPart {
		t.Fatalf("pull over parts present, missing and torn: %+v", l)
	}
}

// partsFetcher serves parts from memory by digest.
type partsFetcher map[string][]byte

func (f partsFetcher) FetchRange(ctx context.Context, dg string, off, n int64) ([]byte, error) {
	b := f[dg]
	if off < 0 || n <= 0 || off+n > int64(len(b)) {
		return nil, errors.New("range outside the part")
	}
	return append([]byte(nil), b[off:off+n]...), nil
}

// FuzzPartRanges: any range of a layer read through its parts is the
// layer's bytes, whatever the part sizes.
func FuzzPartRanges(f *testing.F) {
	f.Add([]byte{3, 5, 1}, uint16(2), uint16(5))
	f.Add([]byte{1, 1}, uint16(0), uint16(2))
	f.Fuzz(func(t *testing.T, sizes []byte, off, n uint16) {
		var layer []byte
		var parts []Part
		pf := partsFetcher{}
		for i, sz := range sizes {
			if sz == 0 || len(parts) == 64 {
				continue
			}
			b := make([]byte, sz)
			for j := range b {
				b[j] = byte(i*7 + j)
			}
			d := digest.FromBytes(append(b, byte(i))).String() // distinct per part
			pf[d] = b
			parts = append(parts, Part{Digest: d, Size: int64(sz)})
			layer = append(layer, b...)
		}
		if len(parts) < 2 {
			return
		}
		dg := digest.FromBytes(layer).String()
		pr, err := NewPartRanges(dg, int64(len(layer)), parts, pf)
		if err != nil {
			t.Fatal(err)
		}
		b, err := pr.FetchRange(context.Background(), dg, int64(off), int64(n))
		if int(off)+int(n) > len(layer) || n == 0 {
			if err == nil {
				t.Fatalf("range [%d,+%d) of %d bytes accepted", off, n, len(layer))
			}
			return
		}
		if err != nil || !bytes.Equal(b, layer[off:int(off)+int(n)]) {
			t.Fatalf("range [%d,+%d): %v", off, n, err)
		}
	})
}

// A part corrupted in the registry fails the layer's check; the other
// parts stay in the layer's partial file for the next pull, and nothing
// enters the store.
func TestPullCorruptPart(t *testing.T) {
	ctx := context.Background()
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 28, 1<<20)
	dir := t.TempDir()
	res, err := Push(ctx, a, target(t, "oci:"+dir+":v1", nil), cfg, PushOptions{MaxBlob: testPart})
	if err != nil {
		t.Fatal(err)
	}
	bad := res.Split[cfg.Layers[0].Digest][2]
	path := dir + "/blobs/sha256/" + strings.TrimPrefix(bad.Digest, "sha256:")
	raw, _ := os.ReadFile(path)
	raw[7] ^= 1
	os.WriteFile(path, raw, 0o644)
	_, err = Pull(ctx, b, target(t, "oci:"+dir+":v1", nil), PullOptions{})
	if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), bad.Digest) || b.Has(cfg.Layers[0].Digest) {
		t.Fatalf("pull over a corrupt part: %v", err)
	}
	raw[7] ^= 1
	os.WriteFile(path, raw, 0o644)
	p, err := Pull(ctx, b, target(t, "oci:"+dir+":v1", nil), PullOptions{})
	if err != nil || p.Layers[0].Fetched != bad.Size {
		t.Fatalf("pull once the part is repaired: %+v, %v", p, err)
	}
	sameBlobs(t, a, b, cfg)
}
