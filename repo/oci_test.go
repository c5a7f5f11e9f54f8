package repo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/tests/regtest"
	"oras.land/oras-go/v2/registry/remote/credentials"
)

// pullsBack pulls ref onto a new store and checks that it holds cfg's
// blobs exactly as store a does.
func pullsBack(t *testing.T, a *Store, ref string, cfg *ChainConfig) {
	t.Helper()
	b := newStore(t)
	if _, err := Pull(context.Background(), b, target(t, ref, nil), PullOptions{}); err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, a, b, cfg)
}

// chainOf stores one obdvol layer per size (random, incompressible data
// of about that many bytes, stored uncompressed) and returns their
// config, whose numbers are the layers' trailers'.
func chainOf(t *testing.T, s *Store, seed int64, sizes ...int) *ChainConfig {
	t.Helper()
	cfg := &ChainConfig{Version: 1, VirtualSize: 1 << 30, BlockSize: 4096, Codec: "zstd", ChunkSize: 65536,
		Volume: "golden", Snapshot: "v1", Created: time.Unix(1700000000, 0).UTC()}
	r := rand.New(rand.NewSource(seed))
	for _, n := range sizes {
		var buf bytes.Buffer
		w, err := snapshot.NewWriter(&buf, snapshot.WriterOptions{VirtualSize: 1 << 30, Codec: snapshot.CodecNone})
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, (n+4095)/4096*4096)
		r.Read(b)
		if err := w.AddData(0, b); err != nil {
			t.Fatal(err)
		}
		info, err := w.Close()
		if err != nil {
			t.Fatal(err)
		}
		d, size, err := s.Ingest(bytes.NewReader(buf.Bytes()), "")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Layers = append(cfg.Layers, LayerInfo{Digest: d, Size: size, VirtualSize: info.VirtualSize,
			DataBytes: info.DataBytes, Extents: uint64(info.ExtentCount)})
	}
	return cfg
}

func newStore(t *testing.T) *Store {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func target(t *testing.T, ref string, tr http.RoundTripper) *Target {
	t.Helper()
	r, err := ParseRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := OpenTarget(r, TargetOptions{PlainHTTP: true, Transport: tr, Credentials: credentials.NewMemoryStore()})
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

func sameBlobs(t *testing.T, a, b *Store, cfg *ChainConfig) {
	t.Helper()
	for _, l := range cfg.Layers {
		x, _ := os.ReadFile(mustPath(a, l.Digest))
		y, err := os.ReadFile(mustPath(b, l.Digest))
		if err != nil || !bytes.Equal(x, y) {
			t.Fatalf("layer %s differs after pull (%v)", l.Digest, err)
		}
	}
}

func mustPath(s *Store, d string) string { p, _ := s.Path(d); return p }

// countingTransport counts request bytes sent and received, and Range
// requests.
type countingTransport struct {
	sent, recv, ranges atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.ContentLength > 0 {
		c.sent.Add(r.ContentLength)
	}
	if r.Header.Get("Range") != "" {
		c.ranges.Add(1)
	}
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil && resp.ContentLength > 0 {
		c.recv.Add(resp.ContentLength)
	}
	return resp, err
}

func TestPushPullRegistry(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 1, 3<<20, 1<<20)
	ct := &countingTransport{}
	res, err := Push(ctx, a, target(t, reg.Addr+"/golden:v1", ct), cfg, PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.BlobsMoved != 3 || res.BytesMoved < 4<<20 {
		t.Fatalf("first push: %+v", res)
	}
	p, err := Pull(ctx, b, target(t, reg.Addr+"/golden:v1", nil), PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.BlobsMoved != 2 || p.Config.Snapshot != "v1" || len(p.Config.Layers) != 2 {
		t.Fatalf("pull: %+v", p)
	}
	sameBlobs(t, a, b, cfg)

	// Incremental: one new layer on the same chain moves just that layer.
	cfg2 := *cfg
	cfg2.Snapshot = "v2"
	extra := chainOf(t, a, 2, 512<<10)
	cfg2.Layers = append(append([]LayerInfo(nil), cfg.Layers...), extra.Layers...)
	ct.sent.Store(0)
	res, err = Push(ctx, a, target(t, reg.Addr+"/golden:v2", ct), &cfg2, PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.BlobsMoved != 2 || res.BlobsSkipped != 2 || ct.sent.Load() > 512<<10+64<<10 {
		t.Fatalf("incremental push: %+v, %d bytes on the wire", res, ct.sent.Load())
	}
	p, err = Pull(ctx, b, target(t, reg.Addr+"/golden:v2", nil), PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.BlobsMoved != 1 || p.BlobsSkipped != 2 {
		t.Fatalf("incremental pull: %+v", p)
	}
	// Cross-repository mount within the registry.
	res, err = Push(ctx, a, target(t, reg.Addr+"/other:v2", nil), &cfg2, PushOptions{MountFrom: []string{"golden"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.BlobsMounted != 3 {
		t.Fatalf("cross-mount push: %+v", res)
	}
}

func TestPushPullLayout(t *testing.T) {
	ctx := context.Background()
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 3, 100000, 200000)
	dir := t.TempDir()
	if _, err := Push(ctx, a, target(t, "oci:"+dir+":v1", nil), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Pull(ctx, b, target(t, "oci:"+dir+":v1", nil), PullOptions{}); err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, a, b, cfg)
}

func TestPullCorruptBlob(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 4, 1<<20)
	if _, err := Push(ctx, a, target(t, reg.Addr+"/c:v1", nil), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	path := reg.BlobPath(cfg.Layers[0].Digest)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw[1000] ^= 0xff
	os.WriteFile(path, raw, 0o644)
	if _, err := Pull(ctx, b, target(t, reg.Addr+"/c:v1", nil), PullOptions{}); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("pull of a corrupt blob: %v", err)
	}
	if l, _ := b.List(); len(l) != 0 {
		t.Fatalf("store holds %v after a failed pull", l)
	}
}

// A transfer cut half-way keeps its partial file; the next pull resumes it
// with a range request.
func TestPullResume(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 5, 8<<20)
	if _, err := Push(ctx, a, target(t, reg.Addr+"/r:v1", nil), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	up, _ := url.Parse("http://" + reg.Addr)
	var cut atomic.Bool
	cut.Store(true)
	var ranged atomic.Int32
	proxy := httputil.NewSingleHostReverseProxy(up)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			ranged.Add(1)
		}
		if cut.Load() && strings.Contains(r.URL.Path, "/blobs/"+cfg.Layers[0].Digest) && r.Method == http.MethodGet {
			rec := httptest.NewRecorder()
			proxy.ServeHTTP(rec, r)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes()[:3<<20]) // then the connection drops
			panic(http.ErrAbortHandler)
		}
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/r:v1"
	if _, err := Pull(ctx, b, target(t, ref, nil), PullOptions{}); err == nil {
		t.Fatal("pull through a cut connection succeeded")
	}
	part := b.PartialDir() + "/" + cfg.Layers[0].Digest[7:] + ".part"
	if fi, err := os.Stat(part); err != nil || fi.Size() == 0 {
		t.Fatalf("no partial file kept: %v", err)
	}
	cut.Store(false)
	p, err := Pull(ctx, b, target(t, ref, nil), PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if l := p.Layers[0]; ranged.Load() == 0 || l.Resumed == 0 || l.Resumed+l.Fetched != l.Size || p.BytesMoved != l.Fetched {
		t.Fatalf("resume did not use a range request (%d ranged): %+v", ranged.Load(), p.Layers)
	}
	sameBlobs(t, a, b, cfg)
}

// A registry that dies mid-pull and comes back: the re-run completes.
func TestPullRegistryRestart(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 6, 16<<20, 16<<20)
	if _, err := Push(ctx, a, target(t, reg.Addr+"/k:v1", nil), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	slow := &slowTransport{delay: 2 * time.Millisecond}
	done := make(chan error, 1)
	go func() {
		_, err := Pull(ctx, b, target(t, reg.Addr+"/k:v1", slow), PullOptions{})
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	reg.Stop()
	if err := <-done; err == nil {
		t.Log("pull finished before the registry stopped")
	}
	if err := reg.Restart(); err != nil {
		t.Fatal(err)
	}
	if _, err := Pull(ctx, b, target(t, reg.Addr+"/k:v1", nil), PullOptions{}); err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, a, b, cfg)
}

type slowTransport struct{ delay time.Duration }

func (s *slowTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil {
		resp.Body = &slowBody{resp.Body, s.delay}
	}
	return resp, err
}

type slowBody struct {
	io.ReadCloser
	d time.Duration
}

func (b *slowBody) Read(p []byte) (int, error) {
	time.Sleep(b.d)
	if len(p) > 32<<10 {
		p = p[:32<<10]
	}
	return b.ReadCloser.Read(p)
}

// skopeo copies our artifact to a layout and to a second registry; pulls
// from both copies give the same layers.
func TestSkopeoInterop(t *testing.T) {
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Fatal("skopeo not installed: run make deps")
	}
	ctx := context.Background()
	r1, r2 := regtest.Start(t), regtest.Start(t)
	a := newStore(t)
	cfg := chainOf(t, a, 7, 300000, 100000)
	if _, err := Push(ctx, a, target(t, r1.Addr+"/golden:v1", nil), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	run := func(args ...string) string {
		out, err := exec.Command("skopeo", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("skopeo %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	raw := run("inspect", "--raw", "--tls-verify=false", "docker://"+r1.Addr+"/golden:v1")
	if !strings.Contains(raw, ArtifactType) || !strings.Contains(raw, LayerMediaType) {
		t.Fatalf("skopeo inspect --raw does not show our types:\n%s", raw)
	}
	run("copy", "--src-tls-verify=false", "docker://"+r1.Addr+"/golden:v1", "oci:"+dir+":v1")
	run("copy", "--src-tls-verify=false", "--dest-tls-verify=false", "docker://"+r1.Addr+"/golden:v1", "docker://"+r2.Addr+"/copy:v1")
	for _, ref := range []string{"oci:" + dir + ":v1", r2.Addr + "/copy:v1"} {
		b := newStore(t)
		if _, err := Pull(ctx, b, target(t, ref, nil), PullOptions{}); err != nil {
			t.Fatalf("pull from %s: %v", ref, err)
		}
		sameBlobs(t, a, b, cfg)
	}
}
