package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/obdvol/obdvol/tests/regtest"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
)

// faultProxy is a reverse proxy to a registry that can cut the body of
// one blob after cutAt bytes and can drop Range headers (a registry that
// ignores ranges). It counts the Range requests it saw.
type faultProxy struct {
	srv     *httptest.Server
	blob    string      // digest whose GET is cut while cut is set
	cutAt   int         // bytes sent before the cut
	cut     atomic.Bool // cut the next GETs of blob
	noRange atomic.Bool // drop Range headers
	ranges  atomic.Int32
}

func newFaultProxy(t *testing.T, reg *regtest.Registry, blob string, cutAt int) *faultProxy {
	up, _ := url.Parse("http://" + reg.Addr)
	proxy := httputil.NewSingleHostReverseProxy(up)
	fp := &faultProxy{blob: blob, cutAt: cutAt}
	fp.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			fp.ranges.Add(1)
			if fp.noRange.Load() {
				r.Header.Del("Range")
			}
		}
		if fp.cut.Load() && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+fp.blob) {
			rec := httptest.NewRecorder()
			proxy.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes()[:fp.cutAt])
			panic(http.ErrAbortHandler) // the connection drops
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(fp.srv.Close)
	return fp
}

func (fp *faultProxy) addr() string { return strings.TrimPrefix(fp.srv.URL, "http://") }

// recProgress checks the Progress contract: Start, Adds, one Done.
type recProgress struct {
	mu            sync.Mutex
	open          map[string]bool
	starts, dones int
	errs          int
	bad           []string
}

func (p *recProgress) Start(name string, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.open == nil {
		p.open = map[string]bool{}
	}
	p.open[name] = true
	p.starts++
}

func (p *recProgress) Add(name string, n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.open[name] || n <= 0 {
		p.bad = append(p.bad, "add "+name)
	}
}

func (p *recProgress) Done(name string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.open[name] {
		p.bad = append(p.bad, "done "+name)
	}
	delete(p.open, name)
	p.dones++
	if err != nil {
		p.errs++
	}
}

func (p *recProgress) check(t *testing.T) {
	t.Helper()
	if len(p.bad) > 0 || len(p.open) > 0 || p.starts != p.dones {
		t.Fatalf("progress events out of order: %v, open %v, %d starts, %d dones", p.bad, p.open, p.starts, p.dones)
	}
}

func partials(t *testing.T, s *Store) []string {
	t.Helper()
	ents, err := os.ReadDir(s.PartialDir())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// A registry that ignores Range: the resumed pull starts the blob over
// and still completes.
func TestPullRangeIgnored(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 11, 4<<20)
	if _, err := Push(ctx, a, target(t, reg.Addr+"/ri:v1", nil), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	fp := newFaultProxy(t, reg, cfg.Layers[0].Digest, 1<<20)
	fp.cut.Store(true)
	fp.noRange.Store(true)
	prog := &recProgress{}
	ref := fp.addr() + "/ri:v1"
	if _, err := Pull(ctx, b, target(t, ref, nil), PullOptions{Progress: prog}); err == nil || errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("pull through a cut connection: %v", err)
	}
	if prog.errs != 1 {
		t.Fatalf("progress saw %d failed blobs, want 1", prog.errs)
	}
	fp.cut.Store(false)
	p, err := Pull(ctx, b, target(t, ref, nil), PullOptions{Progress: prog})
	if err != nil {
		t.Fatal(err)
	}
	prog.check(t)
	l := p.Layers[0]
	if fp.ranges.Load() == 0 || l.Resumed != 0 || l.Fetched != l.Size {
		t.Fatalf("pull after a cut with ranges ignored: %+v (%d range requests)", l, fp.ranges.Load())
	}
	sameBlobs(t, a, b, cfg)
	if left := partials(t, b); len(left) != 0 {
		t.Fatalf("partial files left: %v", left)
	}
}

// A partial file holding the whole blob (a crash between download and
// rename) is adopted without fetching its bytes again; one holding
// garbage is discarded and the blob fetched from zero.
func TestPullKeptPartials(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a := newStore(t)
	cfg := chainOf(t, a, 12, 1<<20)
	if _, err := Push(ctx, a, target(t, reg.Addr+"/kp:v1", nil), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	l := cfg.Layers[0]
	whole, _ := os.ReadFile(mustPath(a, l.Digest))
	garbage := bytes.Repeat([]byte{0xee}, 300000)
	for _, c := range []struct {
		name             string
		part             []byte
		resumed, fetched int64
	}{
		{"whole", whole, l.Size, 0},
		{"garbage", garbage, 0, 2*l.Size - int64(len(garbage))}, // the rest, then all again
		{"too long", append(append([]byte(nil), whole...), 1, 2, 3), 0, l.Size},
	} {
		b := newStore(t)
		os.WriteFile(filepath.Join(b.PartialDir(), l.Digest[7:]+".part"), c.part, 0o600)
		p, err := Pull(ctx, b, target(t, reg.Addr+"/kp:v1", nil), PullOptions{})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := p.Layers[0]; got.Resumed != c.resumed || got.Fetched != c.fetched || p.BlobsMoved != 1 {
			t.Fatalf("%s: %+v, %+v", c.name, got, p.TransferResult)
		}
		sameBlobs(t, a, b, cfg)
	}
}

// Pulls of one artifact into one store at once (and a chain that holds a
// blob twice) fetch each blob once into place and leave no partial files.
func TestPullConcurrentSameStore(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 13, 2<<20, 1<<20)
	cfg.Layers = append(cfg.Layers, cfg.Layers[0])
	res, err := Push(ctx, a, target(t, reg.Addr+"/cc:v1", nil), cfg, PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.BlobsMoved != 3 {
		t.Fatalf("push of a chain with a repeated blob: %+v", res)
	}
	ct := &countingTransport{}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := Pull(ctx, b, target(t, reg.Addr+"/cc:v1", ct), PullOptions{})
			if err == nil && (len(p.Layers) != 3 || !p.Layers[2].Present) {
				t.Errorf("pull: %+v", p.Layers)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	sameBlobs(t, a, b, cfg)
	if left := partials(t, b); len(left) != 0 {
		t.Fatalf("partial files left: %v", left)
	}
	if got := ct.recv.Load(); got > 3<<20+64<<10*4 {
		t.Fatalf("%d bytes received for 3 MiB of layers", got)
	}
}

// A registry whose manifest lies about a layer's size: the pull fails
// with ErrDigestMismatch before storing anything.
func TestPullLyingManifestRegistry(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 14, 200000)
	tg := target(t, reg.Addr+"/lie:v0", nil)
	if _, err := Push(ctx, a, tg, cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg.Layers[0].Size = 100000 // the lie, in both config and manifest
	cb, _ := json.Marshal(cfg)
	cd := ocispec.Descriptor{MediaType: ConfigMediaType, Digest: digest.FromBytes(cb), Size: int64(len(cb))}
	if err := tg.Push(ctx, cd, bytes.NewReader(cb)); err != nil {
		t.Fatal(err)
	}
	md, err := oras.PackManifest(ctx, tg, oras.PackManifestVersion1_1, ArtifactType,
		oras.PackManifestOptions{Layers: layerDescriptors(cfg), ConfigDescriptor: &cd})
	if err != nil {
		t.Skipf("the registry refuses a manifest with a wrong layer size: %v", err)
	}
	if err := tg.Tag(ctx, md, "v1"); err != nil {
		t.Fatal(err)
	}
	_, err = Pull(ctx, b, target(t, reg.Addr+"/lie:v1", nil), PullOptions{})
	if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), "100000") {
		t.Fatalf("pull of a lying manifest: %v", err)
	}
	t.Log(err)
	if l, _ := b.List(); len(l) != 0 {
		t.Fatalf("store holds %v", l)
	}
	if left := partials(t, b); len(left) != 0 {
		t.Fatalf("partial files left: %v", left)
	}
}
