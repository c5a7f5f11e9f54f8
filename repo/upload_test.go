package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/retry"

	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

// registryHolds fails the test unless the registry's storage holds blob
// d with exactly the bytes want.
func registryHolds(t *testing.T, reg *regtest.Registry, d string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(reg.BlobPath(d))
	if err != nil {
		t.Fatalf("registry lacks %s: %v", d, err)
	}
	if fmt.Sprintf("sha256:%x", sha256.Sum256(got)) != d || !bytes.Equal(got, want) {
		t.Fatalf("registry's copy of %s differs (%d bytes, want %d)", d, len(got), len(want))
	}
}

// noUploadData fails the test if an upload session of repository name
// of reg keeps bytes: chunked sessions are completed or cancelled
// (docker-registry 2.8 leaves a cancelled session's empty hash state
// behind), and the session of a whole-blob upload refused with 413 (left
// to oras-go) holds none.
func noUploadData(t *testing.T, reg *regtest.Registry, name string) {
	t.Helper()
	dir := filepath.Join(reg.Dir, "storage/docker/registry/v2/repositories", name, "_uploads")
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Name() == "data" && fi.Size() > 0 {
			t.Fatalf("upload session data left: %s", p)
		}
		return nil
	})
}

// With --chunk-size under a proxy's request limit, a layer larger than
// the limit goes up in chunks, nothing is refused, and it pulls back
// byte-exact.
func TestPushChunkedUnderLimit(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	px := faultproxy.Start(t, reg.Addr)
	px.Set(faultproxy.Faults{MaxRequestBody: 1 << 20})
	a := newStore(t)
	cfg := chainOf(t, a, 41, 3<<20+12345)
	res, err := Push(ctx, a, target(t, px.Addr+"/chunked:v1", nil), cfg, PushOptions{ChunkSize: 512 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if res.BlobsMoved != 2 || res.BlobsChunked != 2 || px.Stats().TooLarge != 0 {
		t.Fatalf("push: %+v, proxy %+v", res, px.Stats())
	}
	if in := px.Stats().BytesIn; in < cfg.Layers[0].Size || in > cfg.Layers[0].Size+64<<10 {
		t.Fatalf("proxy received %d bytes for a %d-byte layer", in, cfg.Layers[0].Size)
	}
	want, _ := os.ReadFile(mustPath(a, cfg.Layers[0].Digest))
	registryHolds(t, reg, cfg.Layers[0].Digest, want)
	noUploadData(t, reg, "chunked")
	pullsBack(t, a, px.Addr+"/chunked:v1", cfg)
}

// Without a chunk size, a monolithic upload answered 413 switches the
// push to chunks, which shrink while the proxy refuses them, and the
// push succeeds.
func TestPush413FallsBackToChunks(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	px := faultproxy.Start(t, reg.Addr)
	px.Set(faultproxy.Faults{MaxRequestBody: MinChunkSize})
	a := newStore(t)
	cfg := chainOf(t, a, 42, 3<<20, 200<<10)
	prog := &recProgress{}
	res, err := Push(ctx, a, target(t, px.Addr+"/fallback:v1", nil), cfg, PushOptions{Concurrency: 1, Progress: prog})
	if err != nil {
		t.Fatal(err)
	}
	prog.check(t)
	// 413s: the monolithic PUT, then chunks of 3 MiB, 1.5 MiB, 768 KiB and
	// 384 KiB; 256 KiB (MinChunkSize) passes.
	if res.BlobsMoved != 3 || res.BlobsChunked < 1 || px.Stats().TooLarge != 5 {
		t.Fatalf("push: %+v, proxy %+v", res, px.Stats())
	}
	// Bytes read for refused requests are not counted as moved.
	if res.BytesMoved < cfg.Layers[0].Size+cfg.Layers[1].Size || res.BytesMoved > cfg.Layers[0].Size+cfg.Layers[1].Size+4096 {
		t.Fatalf("moved %d bytes for layers of %d", res.BytesMoved, cfg.Layers[0].Size+cfg.Layers[1].Size)
	}
	for _, l := range cfg.Layers {
		want, _ := os.ReadFile(mustPath(a, l.Digest))
		registryHolds(t, reg, l.Digest, want)
	}
	noUploadData(t, reg, "fallback")
	pullsBack(t, a, px.Addr+"/fallback:v1", cfg)

	// The next push from this store to the registry sends chunks of the
	// size it learned (256 KiB) at once: nothing refused.
	if got := loadChunkSize(a.UploadsDir(), px.Addr); got != MinChunkSize {
		t.Fatalf("learned chunk size %d, want %d", got, MinChunkSize)
	}
	refused := px.Stats().TooLarge
	cfg2 := chainOf(t, a, 46, 1<<20)
	res, err = Push(ctx, a, target(t, px.Addr+"/fallback2:v1", nil), cfg2, PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.BlobsChunked != 2 || px.Stats().TooLarge != refused {
		t.Fatalf("second push: %+v, %d refused (first push: %d)", res, px.Stats().TooLarge, refused)
	}
}

// A registry that answers a cross-repository mount with an upload session
// (no mount support) gets the blob in that session; when that upload is
// refused with 413 the push falls back to chunks in a session of its own,
// and later blobs go in chunks from the start (the mount's session is
// refused). The copy pulls back byte-exact.
func TestPushMountSession413FallsBackToChunks(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	px := faultproxy.Start(t, reg.Addr)
	a := newStore(t)
	cfg := chainOf(t, a, 43, 1<<20, 300<<10)
	if _, err := Push(ctx, a, target(t, px.Addr+"/src:v1", nil), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	px.Set(faultproxy.Faults{NoMount: true, MaxRequestBody: 512 << 10})
	prog := &recProgress{}
	res, err := Push(ctx, a, target(t, px.Addr+"/dst:v1", nil), cfg, PushOptions{Concurrency: 1, Progress: prog, MountFrom: []string{"src"}})
	if err != nil {
		t.Fatal(err)
	}
	prog.check(t)
	if res.BlobsMounted != 0 || res.BlobsChunked < 1 || px.Stats().TooLarge == 0 {
		t.Fatalf("push: %+v, proxy %+v", res, px.Stats())
	}
	if res.BytesMoved < cfg.Layers[0].Size+cfg.Layers[1].Size || res.BytesMoved > cfg.Layers[0].Size+cfg.Layers[1].Size+4096 {
		t.Fatalf("moved %d bytes for layers of %d", res.BytesMoved, cfg.Layers[0].Size+cfg.Layers[1].Size)
	}
	pullsBack(t, a, px.Addr+"/dst:v1", cfg)
}

// A chunk size the user set is kept: a registry refusing it fails the
// push with ErrChunkTooLarge and the session is cancelled.
func TestPushChunkSizeRefused(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	px := faultproxy.Start(t, reg.Addr)
	px.Set(faultproxy.Faults{MaxRequestBody: 1 << 20})
	a := newStore(t)
	cfg := chainOf(t, a, 43, 3<<20)
	_, err := Push(ctx, a, target(t, px.Addr+"/refused:v1", nil), cfg, PushOptions{ChunkSize: 2 << 20, Concurrency: 1})
	if !errors.Is(err, ErrChunkTooLarge) {
		t.Fatalf("push with chunks over the limit: %v", err)
	}
	if px.Stats().TooLarge != 1 {
		t.Fatalf("proxy: %+v", px.Stats())
	}
	noUploadData(t, reg, "refused")

	// The fallback shrinks no further than MinChunkSize: the whole blob,
	// 3 MiB, 1.5 MiB, ..., 256 KiB refused.
	px.Set(faultproxy.Faults{MaxRequestBody: MinChunkSize - 1})
	px.ResetStats()
	_, err = Push(ctx, a, target(t, px.Addr+"/refused:v2", nil), cfg, PushOptions{Concurrency: 1})
	if !errors.Is(err, ErrChunkTooLarge) || px.Stats().TooLarge != 1+5 {
		t.Fatalf("push under a limit below MinChunkSize: %v, proxy %+v", err, px.Stats())
	}
	noUploadData(t, reg, "refused")
}

// blobUpload prepares a chunked upload of n random bytes to repository
// name of reg through tr (nil: plain), with a fixed chunk size.
func blobUpload(t *testing.T, reg string, name string, tr http.RoundTripper, n int, chunk int64) (*chunkUpload, []byte, *atomic.Int32) {
	t.Helper()
	b := make([]byte, n)
	rand.New(rand.NewSource(int64(n))).Read(b)
	d := ocispec.Descriptor{MediaType: LayerMediaType, Digest: digest.FromBytes(b), Size: int64(n)}
	tg := target(t, reg+"/"+name+":x", tr)
	opens := &atomic.Int32{}
	open := func() (io.ReadCloser, error) { opens.Add(1); return io.NopCloser(bytes.NewReader(b)), nil }
	u, err := newChunkUpload(tg.Repo, d, open, func() int64 { return chunk }, func(int64) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	return u, b, opens
}

// An out-of-order PATCH is answered 416 by an OCI 1.1 registry (the
// proxy checks Content-Range as distribution 3 does); the upload asks for
// the session's state and goes on from the registry's offset, forward
// (the registry holds less than a PATCH claimed) and backward (it holds
// less than we thought: the source is read again).
func TestChunkedUploadRecovers416(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	px := faultproxy.Start(t, reg.Addr)
	px.Set(faultproxy.Faults{CheckUploadRange: true})
	const chunk = 64 << 10
	u, b, opens := blobUpload(t, px.Addr, "order", nil, 5*chunk+100, chunk)
	if err := u.start(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := u.patch(ctx); !ok || err != nil || u.off != chunk {
		t.Fatalf("first chunk: %v %v, offset %d", ok, err, u.off)
	}
	// A PATCH claiming offset 2*chunk while the registry holds one chunk.
	u.skipOnce = chunk
	if ok, err := u.patch(ctx); ok || err != nil || u.resyncs != 1 || px.Stats().OutOfOrder != 1 {
		t.Fatalf("out-of-order chunk: taken %v, %v, %d resyncs, proxy %+v", ok, err, u.resyncs, px.Stats())
	}
	if err := u.resync(ctx); err != nil || u.off != chunk {
		t.Fatalf("resync: %v, offset %d, want %d", err, u.off, chunk)
	}
	if ok, err := u.patch(ctx); !ok || err != nil || u.off != 2*chunk {
		t.Fatalf("chunk after resync: %v %v, offset %d", ok, err, u.off)
	}
	// We believe the registry holds 4 chunks; it holds 2: the next PATCH
	// is answered 416 and the source is opened again at 2 chunks.
	if err := u.seek(4 * chunk); err != nil {
		t.Fatal(err)
	}
	if ok, err := u.patch(ctx); ok || err != nil || px.Stats().OutOfOrder != 2 {
		t.Fatalf("PATCH past the registry's offset: taken %v, %v", ok, err)
	}
	if err := u.resync(ctx); err != nil || u.off != 2*chunk || opens.Load() != 2 {
		t.Fatalf("resync backward: %v, offset %d, %d opens", err, u.off, opens.Load())
	}
	if err := u.sendAll(ctx); err != nil {
		t.Fatal(err)
	}
	u.closeSource()
	if px.Stats().OutOfOrder != 2 {
		t.Fatalf("proxy: %+v", px.Stats())
	}
	registryHolds(t, reg, u.d.Digest.String(), b)
	noUploadData(t, reg, "order")
}

// docker-registry 2.8 ignores a PATCH's Content-Range and appends: the
// upload sees from the answer's Range that the bytes landed elsewhere
// than it said and asks for the session's state. (The bytes were the
// right ones, so the blob is whole.)
func TestChunkedUploadRangeMismatch(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	const chunk = 4096
	u, b, _ := blobUpload(t, reg.Addr, "mismatch", nil, 3*chunk+1, chunk)
	u.skipOnce = chunk
	if err := u.run(ctx); err != nil {
		t.Fatal(err)
	}
	if u.resyncs != 1 {
		t.Fatalf("%d resyncs, want 1", u.resyncs)
	}
	registryHolds(t, reg, u.d.Digest.String(), b)
}

// dropTransport forwards every request and loses the answer of PATCH
// number drop (counting from 1), as a cut connection would after the
// registry took the chunk.
type dropTransport struct {
	drop    int32
	patches atomic.Int32
}

func (d *dropTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil && r.Method == http.MethodPatch && d.patches.Add(1) == d.drop {
		resp.Body.Close()
		return nil, fmt.Errorf("connection cut (test): %w", syscall.ECONNRESET)
	}
	return resp, err
}

// A chunk whose answer is lost was taken by the registry: the upload
// asks where the session stands, and as docker-registry 2.8 has then
// cancelled the session (the client's state token is behind it), starts
// over in a new one.
func TestChunkedUploadLostAnswer(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	tr := &dropTransport{drop: 2}
	u, b, _ := blobUpload(t, reg.Addr, "lost", tr, 4*1000+7, 1000)
	if err := u.run(ctx); err != nil {
		t.Fatal(err)
	}
	if u.resyncs != 2 || tr.patches.Load() != 2+5 {
		t.Fatalf("%d resyncs, %d PATCHes", u.resyncs, tr.patches.Load())
	}
	registryHolds(t, reg, u.d.Digest.String(), b)
}

// The same through the retrying transport targets use by default: it
// sends the chunk again with the stale session state, docker-registry
// 2.8 answers 404 (it cancels the session), and the upload starts over.
func TestChunkedUploadLostAnswerRetried(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	tr := &dropTransport{drop: 2}
	u, b, _ := blobUpload(t, reg.Addr, "lost", retry.NewTransport(tr), 4*1000+7, 1000)
	if err := u.run(ctx); err != nil {
		t.Fatal(err)
	}
	if u.resyncs < 2 || tr.patches.Load() != 3+5 {
		t.Fatalf("%d resyncs, %d PATCHes", u.resyncs, tr.patches.Load())
	}
	registryHolds(t, reg, u.d.Digest.String(), b)
}

// Chunk bodies can be sent again: a PATCH answered 401 (credentials not
// cached by this client yet, as after a token's expiry) is re-sent with
// credentials by the authenticating client, whose messages never show
// the password.
func TestChunkedUploadReauth(t *testing.T) {
	ctx := context.Background()
	reg := startAuthRegistry(t)
	creds := func() *Target {
		st := credentials.NewMemoryStore()
		if err := st.Put(ctx, reg.Addr, auth.Credential{Username: testUser, Password: testPassword}); err != nil {
			t.Fatal(err)
		}
		r, _ := ParseRef(reg.Addr + "/reauth:x")
		tg, err := OpenTarget(r, TargetOptions{PlainHTTP: true, Credentials: st})
		if err != nil {
			t.Fatal(err)
		}
		return tg
	}
	b := make([]byte, 3*4096+5)
	rand.New(rand.NewSource(9)).Read(b)
	d := ocispec.Descriptor{MediaType: LayerMediaType, Digest: digest.FromBytes(b), Size: int64(len(b))}
	open := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	u, err := newChunkUpload(creds().Repo, d, open, func() int64 { return 4096 }, func(int64) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	if err := u.start(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := u.patch(ctx); !ok || err != nil {
		t.Fatalf("first chunk: %v %v", ok, err)
	}
	u.client = creds().Repo.Client // a client with no cached credentials: 401 first
	if err := u.sendAll(ctx); err != nil {
		noSecret(t, "error", err.Error())
		t.Fatal(err)
	}
	registryHolds(t, reg, d.Digest.String(), b)
	noSecret(t, "registry log", reg.Log())
}

// Location headers are resolved against the request, relative or
// absolute, and must stay on the registry's host and scheme.
func TestResolveLocation(t *testing.T) {
	reg, _ := url.Parse("http://127.0.0.1:5000/v2/")
	req, _ := url.Parse("http://127.0.0.1:5000/v2/a/blobs/uploads/")
	for loc, want := range map[string]string{
		"/v2/a/blobs/uploads/u1?_state=x": "http://127.0.0.1:5000/v2/a/blobs/uploads/u1?_state=x",
		"u2":                              "http://127.0.0.1:5000/v2/a/blobs/uploads/u2",
		"http://127.0.0.1:5000/v2/a/blobs/uploads/u3#frag":    "http://127.0.0.1:5000/v2/a/blobs/uploads/u3",
		"https://127.0.0.1:5000/v2/a/blobs/uploads/u4":        "https://127.0.0.1:5000/v2/a/blobs/uploads/u4",
		"http://evil.example.com/v2/a/blobs/uploads/u5":       "",
		"http://127.0.0.1:5001/v2/a/blobs/uploads/u6":         "",
		"http://user:pw@127.0.0.1:5000/v2/a/blobs/uploads/u7": "",
		"":                       "",
		"ftp://127.0.0.1:5000/x": "",
		"//evil.example.com/v2/a/blobs/uploads/u8?_state=stolen": "",
	} {
		got, err := resolveLocation(reg, req, loc)
		if want == "" {
			if err == nil {
				t.Errorf("Location %q accepted as %s", loc, got)
			}
			continue
		}
		if err != nil || got.String() != want {
			t.Errorf("Location %q: %v %v, want %s", loc, got, err, want)
		}
	}
	sreg, _ := url.Parse("https://r.example.com/v2/")
	sreq, _ := url.Parse("https://r.example.com/v2/a/blobs/uploads/")
	if _, err := resolveLocation(sreg, sreq, "http://r.example.com/v2/a/blobs/uploads/u"); err == nil {
		t.Error("a Location downgrading https to http was accepted")
	}
	if got, err := resolveLocation(sreg, sreq, "https://r.example.com:443/u"); err != nil || got.Host != "r.example.com:443" {
		t.Errorf("explicit default port: %v %v", got, err)
	}
}

func TestParseUploadRange(t *testing.T) {
	for s, want := range map[string]int64{"": -1, "0-0": 0, "0-65535": 65535, "bytes=0-9": 9} {
		if got, err := parseUploadRange(s); err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"1-5", "0-", "-5", "0--1", "0-9223372036854775807", "0-1x", "bytes 0-5/6", "0-+5"} {
		if got, err := parseUploadRange(s); err == nil {
			t.Errorf("%q accepted as %d", s, got)
		}
	}
	if heldBytes(-1) != 0 || heldBytes(0) != 0 || heldBytes(9) != 10 {
		t.Error("heldBytes")
	}
}

func FuzzParseUploadRange(f *testing.F) {
	for _, s := range []string{"", "0-0", "0-65535", "bytes=0-9", "0-99999999999999999999", "1-2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		last, err := parseUploadRange(s)
		if err != nil {
			return
		}
		if last < -1 || last == -1 && s != "" || heldBytes(last) < 0 {
			t.Fatalf("%q: last %d", s, last)
		}
		if s != "" && !strings.HasSuffix(s, fmt.Sprint(last)) {
			t.Fatalf("%q: last %d is not what it says", s, last)
		}
	})
}

func FuzzResolveLocation(f *testing.F) {
	for _, s := range []string{"/v2/a/blobs/uploads/u?_state=x", "u", "http://127.0.0.1:5000/x", "//evil/x",
		"https://127.0.0.1:5000/y", "http://[::1]:5000/z", "%zz", "http://127.0.0.1:5000@evil/"} {
		f.Add(s)
	}
	reg, _ := url.Parse("http://127.0.0.1:5000/v2/")
	req, _ := url.Parse("http://127.0.0.1:5000/v2/a/blobs/uploads/")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := resolveLocation(reg, req, s)
		if err != nil {
			return
		}
		if u.Hostname() != "127.0.0.1" || u.Port() != "5000" && !(u.Port() == "" && u.Scheme == "http") || u.User != nil ||
			u.Scheme != "http" && u.Scheme != "https" {
			t.Fatalf("%q resolved to %s", s, u)
		}
	})
}

func FuzzParseChunkMinLength(f *testing.F) {
	for _, s := range []string{"0", "1048576", " 5 ", "-1", "1e9", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parseChunkMinLength(s)
		if err == nil && (v < 0 || v > 1<<30) {
			t.Fatalf("%q: %d", s, v)
		}
	})
}

// patchSizes records the body sizes of PATCH requests.
type patchSizes struct {
	mu    sync.Mutex
	sizes []int64
}

func (p *patchSizes) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPatch {
		p.mu.Lock()
		p.sizes = append(p.sizes, r.ContentLength)
		p.mu.Unlock()
	}
	return http.DefaultTransport.RoundTrip(r)
}

// A registry's OCI-Chunk-Min-Length raises a smaller chunk size (the last
// chunk may be shorter).
func TestChunkedUploadMinLength(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	px := faultproxy.Start(t, reg.Addr)
	px.Set(faultproxy.Faults{ChunkMinLength: 10000})
	tr := &patchSizes{}
	u, b, _ := blobUpload(t, px.Addr, "minlen", tr, 25000, 4096)
	if err := u.run(ctx); err != nil {
		t.Fatal(err)
	}
	if u.minChunk != 10000 || fmt.Sprint(tr.sizes) != "[10000 10000 5000]" {
		t.Fatalf("min length %d, PATCH sizes %v", u.minChunk, tr.sizes)
	}
	registryHolds(t, reg, u.d.Digest.String(), b)
}
