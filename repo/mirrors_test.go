package repo

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
)

// mirrorWorld is an origin registry behind a counting proxy (whose address
// is the registry's name in references, so its BytesOut is the origin's
// egress), with a pull-through mirror (docker-registry in proxy mode) that
// fetches from the origin through the same proxy.
type mirrorWorld struct {
	origin *regtest.Registry
	egress *faultproxy.Proxy
	mirror *regtest.Registry
	src    *Store
	cfg    *ChainConfig
	ref    string
	stored int64 // bytes of the chain's layers
}

func newMirrorWorld(t *testing.T, sizes ...int) *mirrorWorld {
	t.Helper()
	w := &mirrorWorld{origin: regtest.Start(t)}
	w.egress = faultproxy.Start(t, w.origin.Addr)
	w.mirror = regtest.StartMirror(t, w.egress.Addr)
	w.src = newStore(t)
	w.cfg = chainOf(t, w.src, 7, sizes...)
	w.ref = w.egress.Addr + "/golden:v1"
	if _, err := Push(context.Background(), w.src, mirrorTarget(t, w.ref), w.cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, l := range w.cfg.Layers {
		w.stored += l.Size
	}
	w.egress.ResetStats()
	return w
}

// mirrorTarget opens ref over plain HTTP with exactly these mirrors (no
// environment, an empty hosts directory).
func mirrorTarget(t *testing.T, ref string, mirrors ...string) *Target {
	t.Helper()
	r, err := ParseRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	if mirrors == nil {
		mirrors = []string{}
	}
	tg, err := OpenTarget(r, TargetOptions{PlainHTTP: true, Credentials: credentials.NewMemoryStore(), Mirrors: mirrors, HostsDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// waitMirrored waits until the mirror has stored every layer (it stores a
// missed blob in the background, after the client has it), so that the
// origin's egress counts are final.
func (w *mirrorWorld) waitMirrored(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for _, l := range w.cfg.Layers {
		for {
			if _, err := os.Stat(w.mirror.BlobPath(l.Digest)); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the mirror never stored %s", l.Digest)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (w *mirrorWorld) blob(t *testing.T, i int) []byte {
	t.Helper()
	b, err := os.ReadFile(mustPath(w.src, w.cfg.Layers[i].Digest))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// lazyRead opens layer i of the world's chain lazily through tg and reads
// it whole, returning the bytes.
func lazyRead(t *testing.T, tg *Target, w *mirrorWorld, i int) []byte {
	t.Helper()
	s := newStore(t)
	l := w.cfg.Layers[i]
	lb, err := s.OpenLazy(l.Digest, l.Size, RegistryRanges{Repo: tg.Repo}, LazyOptions{Page: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	got := make([]byte, l.Size)
	if _, err := lb.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	return got
}

// An eager pull through a pull-through mirror is byte-exact and the mirror
// serves the blobs; a second host pulling through the warm mirror costs
// the origin no blob bytes; lazy reads through it are byte-exact too.
func TestMirrorPullThrough(t *testing.T) {
	ctx := context.Background()
	w := newMirrorWorld(t, 3<<20, 1<<20)
	mirror := "http://" + w.mirror.Addr

	tg := mirrorTarget(t, w.ref, mirror)
	if got := tg.MirrorHosts(); len(got) != 1 || got[0] != mirror+"/v2" {
		t.Fatalf("mirror hosts %q", got)
	}
	a := newStore(t)
	if _, err := Pull(ctx, a, tg, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, w.src, a, w.cfg)
	hs := tg.HostStats()
	if m := hs[w.mirror.Addr]; !m.Mirror || m.Bytes < w.stored || m.Failures != 0 {
		t.Fatalf("mirror served %+v, want >= %d bytes (all: %+v)", m, w.stored, hs)
	}
	if o := hs[w.egress.Addr]; o.Bytes > 64<<10 {
		t.Fatalf("origin served %d bytes to the client directly (all: %+v)", o.Bytes, hs)
	}
	w.waitMirrored(t)
	// docker-registry 2.8 in proxy mode fetches a missed blob twice (one
	// GET streams it to the client, another stores it) and once more for
	// every concurrent miss: the cold egress is about 2x.
	cold := w.egress.Stats().BytesOut
	if cold < w.stored || cold > 2*w.stored+w.stored/10+64<<10 {
		t.Fatalf("cold mirror: origin egress %d for %d stored bytes", cold, w.stored)
	}

	// A second host, through the warm mirror.
	w.egress.ResetStats()
	b := newStore(t)
	if _, err := Pull(ctx, b, mirrorTarget(t, w.ref, mirror), PullOptions{}); err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, w.src, b, w.cfg)
	if warm := w.egress.Stats(); warm.BytesOut > 64<<10 || warm.BlobGets != 0 {
		t.Fatalf("warm mirror: origin egress %+v", warm)
	}

	// Lazy reads through the warm mirror: range requests served by it.
	w.egress.ResetStats()
	lt := mirrorTarget(t, w.ref, mirror)
	if !bytes.Equal(lazyRead(t, lt, w, 0), w.blob(t, 0)) {
		t.Fatal("lazy read through the mirror differs")
	}
	if warm := w.egress.Stats(); warm.BlobGets != 0 {
		t.Fatalf("lazy read through the warm mirror reached the origin: %+v", warm)
	}
	if m := lt.HostStats()[w.mirror.Addr]; m.Requests < 1 || m.Bytes != w.cfg.Layers[0].Size {
		t.Fatalf("lazy: mirror served %+v", m)
	}
	t.Logf("cold eager pull through the mirror: origin egress %d for %d stored bytes", cold, w.stored)
}

// A lazy read through a cold pull-through mirror is byte-exact; the
// mirror fetches whole blobs from the origin on a miss (logged, as the
// fleet docs say).
func TestMirrorLazyCold(t *testing.T) {
	w := newMirrorWorld(t, 2<<20)
	tg := mirrorTarget(t, w.ref, "http://"+w.mirror.Addr)
	if !bytes.Equal(lazyRead(t, tg, w, 0), w.blob(t, 0)) {
		t.Fatal("lazy read through a cold mirror differs")
	}
	// On a miss docker-registry answers a range request with 200 and the
	// whole blob: not taken (the origin serves the range), while the
	// mirror stores the blob in the background.
	if m := tg.HostStats()[w.mirror.Addr]; m.Failures == 0 {
		t.Fatalf("cold mirror: %+v (it answers a missed range with the whole blob)", m)
	}
	t.Logf("lazy read of a %d-byte blob through a cold mirror: origin egress %+v, hosts %+v", w.stored, w.egress.Stats(), tg.HostStats())
}

// freeAddr is a loopback address nobody listens on.
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// A mirror that is down, or that stops, costs a failed attempt: pulls
// and lazy reads fall back to the origin and succeed, and the dead mirror
// is then left out for a while instead of being asked every request.
func TestMirrorDownFallsBack(t *testing.T) {
	ctx := context.Background()
	w := newMirrorWorld(t, 1<<20)
	dead := freeAddr(t)
	tg := mirrorTarget(t, w.ref, "http://"+dead)
	a := newStore(t)
	if _, err := Pull(ctx, a, tg, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, w.src, a, w.cfg)
	hs := tg.HostStats()
	if m := hs[dead]; m.Failures != 1 || m.Requests != 0 {
		t.Fatalf("dead mirror: %+v (want one failure, then left out)", m)
	}
	if o := hs[w.egress.Addr]; o.Bytes < w.stored {
		t.Fatalf("origin served %+v", o)
	}
	// Another target of the process (the daemon opens one per layer)
	// does not try the dead mirror again.
	again := mirrorTarget(t, w.ref, "http://"+dead)
	if _, err := Pull(ctx, newStore(t), again, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	if m, tried := again.HostStats()[dead]; tried {
		t.Fatalf("a second target asked the dead mirror again: %+v", m)
	}

	// A mirror that worked (warmed by an eager pull), then stops.
	if _, err := Pull(ctx, newStore(t), mirrorTarget(t, w.ref, "http://"+w.mirror.Addr), PullOptions{}); err != nil {
		t.Fatal(err)
	}
	w.waitMirrored(t)
	lt := mirrorTarget(t, w.ref, "http://"+w.mirror.Addr)
	s := newStore(t)
	l := w.cfg.Layers[0]
	lb, err := s.OpenLazy(l.Digest, l.Size, RegistryRanges{Repo: lt.Repo}, LazyOptions{Page: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	got := make([]byte, l.Size)
	if _, err := lb.ReadAt(got[:64<<10], 0); err != nil {
		t.Fatal(err)
	}
	w.mirror.Stop()
	if _, err := lb.ReadAt(got[64<<10:], 64<<10); err != nil {
		t.Fatalf("read after the mirror stopped: %v", err)
	}
	if !bytes.Equal(got, w.blob(t, 0)) {
		t.Fatal("lazy read across the mirror's death differs")
	}
	if hs := lt.HostStats(); hs[w.mirror.Addr].Requests == 0 || hs[w.mirror.Addr].Failures == 0 || hs[w.egress.Addr].Bytes == 0 {
		t.Fatalf("hosts: %+v", hs)
	}
}

// A mirror that serves wrong bytes never gets them into a volume: eager
// pulls, fills and lazy reads detect them (digest, crc32c) and fetch
// again from the origin.
func TestMirrorCorruptDetected(t *testing.T) {
	ctx := context.Background()
	w := newMirrorWorld(t, 2<<20)
	bad := faultproxy.Start(t, w.mirror.Addr)
	bad.Set(faultproxy.Faults{CorruptBody: true})
	mirror := "http://" + bad.Addr

	// Eager: manifest, config and layer from the mirror fail their
	// digests; each is fetched again from the origin.
	tg := mirrorTarget(t, w.ref, mirror)
	a := newStore(t)
	if _, err := Pull(ctx, a, tg, PullOptions{}); err != nil {
		t.Fatalf("eager pull through a corrupting mirror: %v", err)
	}
	sameBlobs(t, w.src, a, w.cfg)
	if o := tg.HostStats()[w.egress.Addr]; o.Bytes < w.stored {
		t.Fatalf("the origin served %+v after the mirror's bytes failed", o)
	}
	// The mirror (docker-registry in proxy mode) stores the layer after
	// serving it; until then it answers a range with the whole blob, which
	// is not taken (rangeless), and the lazy reads below would all go to
	// the origin without the mirror's bytes being checked at all.
	w.waitMirrored(t)

	// Lazy, as a volume reads: the layer's trailer and index are checked
	// when it is opened, each chunk's crc32c when it is read.
	lt := mirrorTarget(t, w.ref, mirror)
	s := newStore(t)
	l := w.cfg.Layers[0]
	src, closer, err := Blobs{Store: s, Remote: func(string) (RangeFetcher, int64, error) {
		return RegistryRanges{Repo: lt.Repo}, l.Size, nil
	}, Lazy: LazyOptions{Page: 64 << 10}}.OpenLayer(l.Digest)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	layer, err := snapshot.Open(src)
	if err != nil {
		t.Fatalf("open a lazy layer through a corrupting mirror: %v", err)
	}
	ref, err := snapshot.Open(snapshot.BytesSource(w.blob(t, 0)))
	if err != nil {
		t.Fatal(err)
	}
	n := ref.Trailer().DataBytes
	p, q := make([]byte, n), make([]byte, n)
	if err := layer.ReadData(p, 0, nil); err != nil {
		t.Fatalf("lazy read through a corrupting mirror: %v", err)
	}
	if ref.ReadData(q, 0, nil); !bytes.Equal(p, q) {
		t.Fatal("lazy read through a corrupting mirror returned wrong data")
	}
	if hs := lt.HostStats(); hs[bad.Addr].Requests == 0 || hs[w.egress.Addr].Bytes == 0 {
		t.Fatalf("lazy: the mirror was not asked, or the origin not asked again: %+v", hs)
	}

	// Fill: the assembled blob fails its digest; filled again from the
	// origin.
	ft := mirrorTarget(t, w.ref, mirror)
	fs := newStore(t)
	lb, err := fs.OpenLazy(l.Digest, l.Size, RegistryRanges{Repo: ft.Repo}, LazyOptions{Page: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	if err := lb.Fill(ctx, fs, FillOptions{}); err != nil {
		t.Fatalf("fill through a corrupting mirror: %v", err)
	}
	if got, _ := os.ReadFile(mustPath(fs, l.Digest)); !bytes.Equal(got, w.blob(t, 0)) {
		t.Fatal("filled blob differs")
	}
	if hs := ft.HostStats(); hs[bad.Addr].Bytes < l.Size || hs[w.egress.Addr].Bytes < l.Size {
		t.Fatalf("fill: want the whole blob from the mirror, then from the origin: %+v", hs)
	}
}

// Without a fallback (the origin down too), a corrupting mirror makes the
// pull fail with a digest error, storing nothing.
func TestMirrorCorruptOriginDownFails(t *testing.T) {
	ctx := context.Background()
	w := newMirrorWorld(t, 1<<20)
	bad := faultproxy.Start(t, w.mirror.Addr)
	tg := mirrorTarget(t, w.ref, "http://"+bad.Addr)
	a := newStore(t)
	// Resolve the tag and warm the mirror, then break both.
	if _, err := Pull(ctx, newStore(t), tg, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	desc, err := tg.Resolve(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	bad.Set(faultproxy.Faults{CorruptBody: true})
	w.origin.Stop()
	dt := mirrorTarget(t, w.egress.Addr+"/golden@"+desc.Digest.String(), "http://"+bad.Addr)
	_, err = Pull(ctx, a, dt, PullOptions{})
	if err == nil {
		t.Fatal("pull through a corrupting mirror with the origin down succeeded")
	}
	if !errors.Is(err, ErrDigestMismatch) && !strings.Contains(err.Error(), "digest") {
		t.Fatalf("error %v does not name the digest check", err)
	}
	for _, l := range w.cfg.Layers {
		if a.Has(l.Digest) {
			t.Fatal("a blob that failed its check is in the store")
		}
	}
}

// HTTP_PROXY is honoured (how a Dragonfly dfdaemon in proxy mode is
// used): a child process pulls from a registry name that does not resolve,
// which only the proxy can reach. (http.ProxyFromEnvironment reads the
// environment once per process and never proxies loopback addresses,
// hence the child and the name.)
func TestProxyFromEnvironment(t *testing.T) {
	if os.Getenv("OBDVOL_PROXY_CHILD") != "" {
		t.Skip("child")
	}
	ctx := context.Background()
	reg := regtest.Start(t)
	src := newStore(t)
	cfg := chainOf(t, src, 9, 1<<20)
	if _, err := Push(ctx, src, mirrorTarget(t, reg.Addr+"/golden:v1"), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	proxy := faultproxy.Start(t, reg.Addr) // forwards absolute-form requests too
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestProxyChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), "OBDVOL_PROXY_CHILD="+dir, "HTTP_PROXY=http://"+proxy.Addr, "http_proxy=http://"+proxy.Addr,
		"NO_PROXY=", "no_proxy=", EnvMirrors+"=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "PASS") || strings.Contains(string(out), "no tests to run") {
		t.Fatalf("child did not run:\n%s", out)
	}
	s, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, src, s, cfg)
	if st := proxy.Stats(); st.BlobGets == 0 || st.BytesOut < cfg.Layers[0].Size {
		t.Fatalf("the proxy saw %+v", st)
	}
}

func TestProxyChild(t *testing.T) {
	dir := os.Getenv("OBDVOL_PROXY_CHILD")
	if dir == "" {
		t.Skip("run by TestProxyFromEnvironment")
	}
	s, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The port is irrelevant: the proxy forwards to the registry.
	tg := mirrorTarget(t, "obdvol-registry.invalid:5000/golden:v1")
	if _, err := Pull(context.Background(), s, tg, PullOptions{}); err != nil {
		t.Fatal(err)
	}
}

// pullThroughHosts writes doc as the hosts.toml of the world's registry
// in a new hosts directory (named by OBDVOL_HOSTS_DIR with env, else by
// TargetOptions.HostsDir), pulls the chain on a new store through it,
// checks it byte-exact and returns what each host served.
func (w *mirrorWorld) pullThroughHosts(t *testing.T, doc string, env bool) map[string]HostStat {
	t.Helper()
	dir := t.TempDir()
	hd := filepath.Join(dir, w.egress.Addr)
	if err := os.MkdirAll(hd, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hd, "hosts.toml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	r, _ := ParseRef(w.ref)
	opts := TargetOptions{PlainHTTP: true, Credentials: credentials.NewMemoryStore(), Mirrors: []string{}, HostsDir: dir}
	if env {
		t.Setenv(EnvHostsDir, dir)
		opts.HostsDir = ""
	}
	tg, err := OpenTarget(r, opts)
	if err != nil {
		t.Fatal(err)
	}
	a := newStore(t)
	if _, err := Pull(context.Background(), a, tg, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, w.src, a, w.cfg)
	return tg.HostStats()
}

// A hosts.toml names mirrors per registry; the same file format containerd
// reads.
func TestMirrorFromHostsDir(t *testing.T) {
	w := newMirrorWorld(t, 1<<20)
	doc := "server = \"http://" + w.egress.Addr + "\"\n[host.\"http://" + w.mirror.Addr + "\"]\n  capabilities = [\"pull\"]\n"
	if m := w.pullThroughHosts(t, doc, true)[w.mirror.Addr]; m.Bytes < w.stored {
		t.Fatalf("the hosts.toml mirror served %+v", m)
	}
}

// A push never asks a mirror whether the registry has a blob: a mirror
// that has it (from another registry) must not make the push skip it.
func TestPushIgnoresMirrors(t *testing.T) {
	ctx := context.Background()
	w := newMirrorWorld(t, 1<<20)
	if _, err := Pull(ctx, newStore(t), mirrorTarget(t, w.ref, "http://"+w.mirror.Addr), PullOptions{}); err != nil {
		t.Fatal(err)
	}
	w.waitMirrored(t)
	other := regtest.Start(t)
	ref := other.Addr + "/golden:v1" // the mirror's repository name, another registry
	res, err := Push(ctx, w.src, mirrorTarget(t, ref, "http://"+w.mirror.Addr), w.cfg, PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.BytesMoved < w.stored {
		t.Fatalf("push moved %d bytes of %d: it trusted the mirror", res.BytesMoved, w.stored)
	}
	a := newStore(t)
	if _, err := Pull(ctx, a, mirrorTarget(t, ref), PullOptions{}); err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, w.src, a, w.cfg)
}

// A mirror never sees the origin's credentials or token; it is told the
// registry's name (?ns=, X-Dragonfly-Registry); when it misses, the
// origin (which wants credentials) serves.
func TestMirrorGetsNoOriginCredentials(t *testing.T) {
	blob := []byte("0123456789abcdef")
	dg := digestOf(blob)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "me" || p != "secret" {
			w.Header().Set("WWW-Authenticate", `Basic realm="origin"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if r.URL.Path != "/v2/team/disk/blobs/"+dg {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}))
	defer origin.Close()
	var mu sync.Mutex
	var seen []*http.Request
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Clone(context.Background()))
		mu.Unlock()
		http.NotFound(w, r)
	}))
	defer mirror.Close()
	host := strings.TrimPrefix(origin.URL, "http://")
	mem := credentials.NewMemoryStore()
	mem.Put(context.Background(), host, auth.Credential{Username: "me", Password: "secret"})
	r, _ := ParseRef(host + "/team/disk:v1")
	tg, err := OpenTarget(r, TargetOptions{PlainHTTP: true, Credentials: mem, Mirrors: []string{mirror.URL}, HostsDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	got, err := RegistryRanges{Repo: tg.Repo}.FetchRange(context.Background(), dg, 4, 8)
	if err != nil || string(got) != "456789ab" {
		t.Fatalf("range through a missing mirror: %q %v", got, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) == 0 {
		t.Fatal("the mirror was not asked")
	}
	for _, q := range seen {
		if q.Header.Get("Authorization") != "" {
			t.Fatalf("the mirror got the origin's credentials: %q", q.Header.Get("Authorization"))
		}
		if q.URL.Query().Get("ns") != host || q.Header.Get("X-Dragonfly-Registry") != "http://"+host ||
			q.URL.Path != "/v2/team/disk/blobs/"+dg || q.Header.Get("Range") != "bytes=4-11" {
			t.Fatalf("mirror request %s %v", q.URL, q.Header)
		}
	}
}

// hosts.toml's server replaces the registry's address (and scheme): a
// reference to a name that does not resolve pulls from the server.
func TestHostsServerRewrite(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	src := newStore(t)
	cfg := chainOf(t, src, 5, 1<<20)
	if _, err := Push(ctx, src, mirrorTarget(t, reg.Addr+"/golden:v1"), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	name := "golden.invalid:5000"
	os.MkdirAll(filepath.Join(dir, name), 0o755)
	os.WriteFile(filepath.Join(dir, name, "hosts.toml"), []byte("server = \"http://"+reg.Addr+"\"\n"), 0o644)
	r, _ := ParseRef(name + "/golden:v1")
	// No PlainHTTP: the server's scheme decides.
	tg, err := OpenTarget(r, TargetOptions{Credentials: credentials.NewMemoryStore(), Mirrors: []string{}, HostsDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	a := newStore(t)
	if _, err := Pull(ctx, a, tg, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, src, a, cfg)
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Eight hosts pulling one blob at once through a cold pull-through mirror
// get it byte-exact; the origin's egress is logged (docker-registry 2.8
// fetches a missed blob once per concurrent miss, plus once to store it:
// docs/fleet.md).
func TestMirrorConcurrentColdPulls(t *testing.T) {
	ctx := context.Background()
	w := newMirrorWorld(t, 4<<20)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := NewStore(t.TempDir())
			if err == nil {
				_, err = Pull(ctx, s, mirrorTarget(t, w.ref, "http://"+w.mirror.Addr), PullOptions{})
			}
			if err == nil {
				var got []byte
				if got, err = os.ReadFile(mustPath(s, w.cfg.Layers[0].Digest)); err == nil && !bytes.Equal(got, w.blob(t, 0)) {
					err = errors.New("pulled blob differs")
				}
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
	w.waitMirrored(t)
	s := w.egress.Stats()
	t.Logf("8 concurrent cold pulls of %d stored bytes through docker-registry's proxy: origin egress %d bytes (%.1fx), %d blob GETs",
		w.stored, s.BytesOut, float64(s.BytesOut)/float64(w.stored), s.BlobGets)
}

// docker.io is reached at registry-1.docker.io: its requests still go to
// the mirrors, which are told ns=docker.io (containerd's) and the API host
// (Dragonfly's). The mirror serves, so nothing leaves the machine.
func TestMirrorDockerIO(t *testing.T) {
	blob := []byte("golden disk bytes")
	dg := digestOf(blob)
	var mu sync.Mutex
	var q *http.Request
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		q = r.Clone(context.Background())
		mu.Unlock()
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	}))
	defer mirror.Close()
	r, err := ParseRef("docker.io/library/golden@" + dg)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := OpenTarget(r, TargetOptions{Credentials: credentials.NewMemoryStore(), Mirrors: []string{mirror.URL, "https://registry-1.docker.io"}, HostsDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if got := tg.MirrorHosts(); len(got) != 1 {
		t.Fatalf("mirrors %q: the origin's API host is not a mirror", got)
	}
	got, err := RegistryRanges{Repo: tg.Repo}.FetchRange(context.Background(), dg, 7, 4)
	if err != nil || string(got) != "disk" {
		t.Fatalf("%q %v", got, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if q.URL.Query().Get("ns") != "docker.io" || q.Header.Get("X-Dragonfly-Registry") != "https://registry-1.docker.io" || q.URL.Path != "/v2/library/golden/blobs/"+dg {
		t.Fatalf("mirror request %s %v", q.URL, q.Header)
	}
}

// A mirror that breaks Range (ignores it, as Harbor's proxy-cache does on
// a miss; shifts Content-Range; cuts a 206 short) never gives a lazy read
// wrong data: its answer is not taken and the origin serves the range.
func TestMirrorBreaksRange(t *testing.T) {
	ctx := context.Background()
	w := newMirrorWorld(t, 1<<20)
	if _, err := Pull(ctx, newStore(t), mirrorTarget(t, w.ref, "http://"+w.mirror.Addr), PullOptions{}); err != nil {
		t.Fatal(err)
	}
	w.waitMirrored(t)
	for _, f := range []faultproxy.Faults{{IgnoreRange: true}, {ShiftContentRange: 4096}, {ShortBody: true}} {
		bad := faultproxy.Start(t, w.mirror.Addr)
		bad.Set(f)
		tg := mirrorTarget(t, w.ref, "http://"+bad.Addr)
		if !bytes.Equal(lazyRead(t, tg, w, 0), w.blob(t, 0)) {
			t.Fatalf("%+v: lazy read differs", f)
		}
		hs := tg.HostStats()
		if hs[bad.Addr].Failures+hs[bad.Addr].Requests == 0 || hs[w.egress.Addr].Bytes == 0 {
			t.Fatalf("%+v: the mirror was not asked or the origin did not serve: %+v", f, hs)
		}
		if f.IgnoreRange {
			// Further ranges of that blob skip the mirror for a while.
			l := w.cfg.Layers[0]
			for _, off := range []int64{0, 4096, 8192} {
				b, err := RegistryRanges{Repo: tg.Repo}.FetchRange(ctx, l.Digest, off, 100)
				if err != nil || !bytes.Equal(b, w.blob(t, 0)[off:off+100]) {
					t.Fatalf("range at %d: %v", off, err)
				}
			}
			if got := tg.HostStats()[bad.Addr]; got.Failures != hs[bad.Addr].Failures || got.Requests != 0 {
				t.Fatalf("a mirror that ignored Range was asked again for the blob: %+v then %+v", hs[bad.Addr], got)
			}
		}
	}
}

// Four hosts pulling eagerly at once through a cold pull-through mirror
// cost the origin about one copy of the layers: each pull first warms the
// mirror (a one-byte request it hangs up on starts the mirror's own fetch)
// and waits until the mirror serves the blob from its storage. Without the
// warm-up docker-registry fetches a missed blob once per concurrent miss
// and once more to store it. The mirror's way to the origin is slow, so
// that the pulls' misses overlap its fetch.
func TestMirrorWarmConcurrentEagerPulls(t *testing.T) {
	ctx := context.Background()
	w := newMirrorWorld(t, 8<<20, 1<<20)
	w.egress.Set(faultproxy.Faults{Bandwidth: 2e6})
	const hosts = 4
	stores := make([]*Store, hosts)
	errs := make(chan error, hosts)
	var wg sync.WaitGroup
	for i := range stores {
		stores[i] = newStore(t)
		tg := mirrorTarget(t, w.ref, "http://"+w.mirror.Addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := Pull(ctx, stores[i], tg, PullOptions{MirrorWait: time.Minute})
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
	for _, s := range stores {
		sameBlobs(t, w.src, s, w.cfg)
	}
	w.waitMirrored(t)
	st := w.egress.Stats()
	if st.BytesOut < w.stored || st.BytesOut > w.stored*3/2 {
		t.Fatalf("%d concurrent eager pulls through a cold mirror: origin egress %d bytes for %d stored (want about one copy, at most 1.5x)", hosts, st.BytesOut, w.stored)
	}
	t.Logf("%d concurrent eager pulls through a cold mirror: origin egress %d bytes for %d stored (%.2fx), %d blob GETs",
		hosts, st.BytesOut, w.stored, float64(st.BytesOut)/float64(w.stored), st.BlobGets)
}

// A target opened with MirrorsOnly takes blobs from its mirrors and
// never from the origin: through a warm mirror a lazy read is
// byte-exact with no origin blob GET; with the mirror dead it fails
// (ErrUnavailable) instead of falling back; without a mirror it does not
// open (ErrNoMirror). WarmMirror waits for the cold mirror to store a
// blob before it is read.
func TestMirrorsOnlyNeverAsksOrigin(t *testing.T) {
	ctx := context.Background()
	w := newMirrorWorld(t, 1<<20)
	r, err := ParseRef(w.ref)
	if err != nil {
		t.Fatal(err)
	}
	open := func(mirrors ...string) (*Target, error) {
		return OpenTarget(r, TargetOptions{PlainHTTP: true, Credentials: credentials.NewMemoryStore(), Mirrors: mirrors,
			HostsDir: t.TempDir(), MirrorsOnly: true})
	}
	if _, err := open(); !errors.Is(err, ErrNoMirror) {
		t.Fatalf("mirrors only with no mirror: %v", err)
	}
	tg, err := open("http://" + w.mirror.Addr)
	if err != nil {
		t.Fatal(err)
	}
	l := w.cfg.Layers[0]
	var states []WarmState
	if err := tg.WarmMirror(ctx, l.Digest, time.Now().Add(time.Minute), func(host string, s WarmState, err error) {
		if host != w.mirror.Addr {
			t.Errorf("warm-up names %s, not the mirror", host)
		}
		states = append(states, s)
	}); err != nil {
		t.Fatal(err)
	}
	if len(states) != 2 || states[0] != WarmFetching || states[1] != WarmCached {
		t.Fatalf("cold mirror warm-up went %v, want fetching then cached", states)
	}
	w.waitMirrored(t)
	w.egress.ResetStats()
	if got := lazyRead(t, tg, w, 0); !bytes.Equal(got, w.blob(t, 0)) {
		t.Fatal("lazy read through the mirror differs")
	}
	if st := w.egress.Stats(); st.BlobGets != 0 {
		t.Fatalf("mirrors only: the origin served %d blob GETs", st.BlobGets)
	}

	dead, err := open("http://" + freeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	s := newStore(t)
	lb, err := s.OpenLazy(l.Digest, l.Size, RegistryRanges{Repo: dead.Repo}, LazyOptions{Page: 64 << 10, RetryFor: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	if _, err := lb.ReadAt(make([]byte, 4096), 0); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("mirrors only, mirror dead: %v", err)
	}
	if st := w.egress.Stats(); st.BlobGets != 0 {
		t.Fatalf("mirrors only, mirror dead: the origin served %d blob GETs", st.BlobGets)
	}
}

// writeCert signs a certificate for cn (and 127.0.0.1) with ca (nil: self-
// signed, a CA) and writes it and its key as PEM files name.pem and
// name.key under dir.
func writeCert(t *testing.T, dir, name, cn string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IsCA:        isCA, BasicConstraintsValid: true,
	}
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, name+".pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// A mirror that asks for a client certificate (docker-registry over TLS
// with clientcas) serves a pull whose hosts.toml gives one (client =
// [[cert, key]], ca for the mirror's own certificate); without it the
// handshake fails and the pull falls back to the origin, byte-exact both
// times.
func TestMirrorClientCertificate(t *testing.T) {
	w := newMirrorWorld(t, 1<<20)
	pki := t.TempDir()
	ca, caKey := writeCert(t, pki, "ca", "obdvol test CA", nil, nil, true)
	writeCert(t, pki, "server", "127.0.0.1", ca, caKey, false)
	writeCert(t, pki, "client", "obdvol host", ca, caKey, false)
	mir := regtest.StartMirrorTLS(t, w.egress.Addr, filepath.Join(pki, "server.pem"), filepath.Join(pki, "server.key"), filepath.Join(pki, "ca.pem"))
	pull := func(client string) map[string]HostStat {
		return w.pullThroughHosts(t, fmt.Sprintf("server = \"http://%s\"\n[host.\"https://%s\"]\n  capabilities = [\"pull\"]\n  ca = %q\n%s",
			w.egress.Addr, mir.Addr, filepath.Join(pki, "ca.pem"), client), false)
	}
	hs := pull(fmt.Sprintf("  client = [[%q, %q]]\n", filepath.Join(pki, "client.pem"), filepath.Join(pki, "client.key")))
	if m := hs[mir.Addr]; m.Bytes < w.stored || m.Failures != 0 {
		t.Fatalf("with a client certificate the mirror served %+v (hosts %+v)", m, hs)
	}
	mirrorHealth.Delete("https://" + mir.Addr + "/v2") // the next target asks it afresh
	hs = pull("")
	if m := hs[mir.Addr]; m.Bytes != 0 || m.Failures == 0 || hs[w.egress.Addr].Bytes < w.stored {
		t.Fatalf("without a client certificate: mirror %+v, origin %+v", m, hs[w.egress.Addr])
	}
}
