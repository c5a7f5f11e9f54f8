package repo

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/obdvol/obdvol/snapshot"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
)

// Mirrors.
//
// A registry's pulls may be served by mirrors (a pull-through cache such as
// docker-registry in proxy mode or Harbor's proxy-cache, a P2P agent such
// as Dragonfly's dfdaemon or Spegel). mirrorTransport sits under the
// origin's authenticating client and sends each GET of a blob or of a
// manifest by digest, each HEAD of a manifest by digest, and each GET or
// HEAD of a tag to hosts with the resolve capability, to the mirrors in
// order, then to the origin. Everything else goes to the origin: tags by
// default, pushes, the token service, and a HEAD of a blob, which asks
// whether the origin has it (a push's existence check).
//
// Content is never trusted for coming from a mirror: blobs are checked
// against their digest (eager pulls and fills), chunks against their
// crc32c (lazy reads), trailers and indexes when a layer is opened, and
// what fails is fetched again from the origin only (withoutMirrors).
//
// A mirror's answer is not taken (the next host is asked) when it is 404,
// 401, 403, 5xx or anything but 200/206, when a 206's Content-Range is not
// the range asked for, or when a range request gets 200 and the whole blob
// (a lazy read must not cost a whole blob). A connection error, a 5xx, a
// wrong Content-Range or a body cut short also leave the mirror out for
// mirrorCooldown. Mirrors never see the origin's credentials: a mirror
// that wants credentials gets those stored for its own host (obdvol login
// <mirror>). Each request to a mirror names the origin as containerd does
// (?ns=host) and as Dragonfly's dfdaemon reads it (X-Dragonfly-Registry),
// so that one mirror can serve several registries.

// mirrorCooldown is how long a mirror that failed at the connection level
// (or with a 5xx, or a body cut short) is left out.
const mirrorCooldown = 15 * time.Second

// mirrorDialTimeout bounds a connection to a mirror (mirrors are near: a
// dead one must not stall a read for the 30 s of the default dialer).
const mirrorDialTimeout = 3 * time.Second

type noMirrorsKey struct{}

// withoutMirrors marks ctx so that its requests go to the origin only: the
// refetch of content that failed its check.
func withoutMirrors(ctx context.Context) context.Context {
	return context.WithValue(ctx, noMirrorsKey{}, true)
}

func originOnly(ctx context.Context) bool {
	v, _ := ctx.Value(noMirrorsKey{}).(bool)
	return v
}

// HostObserver is told, when the process's FetchObserver implements it
// too, which host answered each registry request that mirrors may serve:
// registry is the origin (host[:port]), host the one that answered (the
// origin itself, or a mirror's host[:port]), status its HTTP status (0 on
// a connection error, with err). Called on the requesting goroutine with
// no lock held.
type HostObserver interface {
	HostRequest(registry, host string, status int, err error)
}

func observeHost(registry, host string, status int, err error) {
	if box := fetchObserver.Load(); box != nil {
		if h, ok := box.o.(HostObserver); ok {
			h.HostRequest(registry, host, status, err)
		}
	}
}

// HostStat counts what one host served a Target.
type HostStat struct {
	Requests int64 `json:"requests"`  // requests answered with content (200, 206)
	Failures int64 `json:"failures"`  // requests that fell through to the next host
	Bytes    int64 `json:"bytes"`     // response body bytes read from this host
	Mirror   bool  `json:"is_mirror"` // a mirror, not the origin
}

// mirrorConfig is the resolved configuration for one registry.
type mirrorConfig struct {
	server  *Endpoint  // nil: the registry as referenced
	mirrors []Endpoint // in order
}

// resolveMirrors reads the configuration for registry host: the mirrors of
// opts.Mirrors (nil: OBDVOL_MIRRORS), which serve every registry with the
// pull capability, then the hosts of the registry's hosts.toml under
// opts.HostsDir ("": OBDVOL_HOSTS_DIR, else DefaultHostsDir).
func resolveMirrors(host string, opts TargetOptions) (*mirrorConfig, error) {
	list := opts.Mirrors
	if list == nil {
		var err error
		if list, err = ParseMirrorList(os.Getenv(EnvMirrors)); err != nil {
			return nil, fmt.Errorf("%s: %w", EnvMirrors, err)
		}
	}
	cfg := &mirrorConfig{}
	for _, m := range list {
		u, err := ParseEndpointURL(m, false)
		if err != nil {
			return nil, fmt.Errorf("mirror: %w", err)
		}
		cfg.mirrors = append(cfg.mirrors, Endpoint{URL: *u, Capabilities: CapPull})
	}
	hc, err := LoadHosts(hostsDirOf(opts), host)
	if err != nil {
		return nil, err
	}
	if hc != nil {
		cfg.server = hc.Server
		cfg.mirrors = append(cfg.mirrors, hc.Hosts...)
	}
	// A mirror that is the origin is the origin.
	api := registry.Reference{Registry: host}.Host()
	kept := cfg.mirrors[:0]
	for _, m := range cfg.mirrors {
		origin := strings.EqualFold(m.URL.Host, host) || strings.EqualFold(m.URL.Host, api)
		if origin && m.URL.Path == "/v2" || m.Capabilities&(CapPull|CapResolve) == 0 {
			continue
		}
		kept = append(kept, m)
	}
	cfg.mirrors = kept
	if cfg.server == nil && len(cfg.mirrors) == 0 {
		return nil, nil
	}
	return cfg, nil
}

// hostsDirOf is where opts's hosts.toml files are: opts.HostsDir, else
// OBDVOL_HOSTS_DIR, else DefaultHostsDir.
func hostsDirOf(opts TargetOptions) string {
	if opts.HostsDir != "" {
		return opts.HostsDir
	}
	if dir := os.Getenv(EnvHostsDir); dir != "" {
		return dir
	}
	return DefaultHostsDir
}

// mirrorTransport routes one registry's requests (see the package notes
// above): mirrors first for what they may serve, then the origin.
type mirrorTransport struct {
	registry string    // the origin as references name it (host[:port]; ?ns=)
	apiHost  string    // where requests to it go (docker.io: registry-1.docker.io)
	server   *Endpoint // where the origin's requests go; nil: unchanged
	mirrors  []*mirror
	base     http.RoundTripper // to the origin (with retries)
	// mirrorsOnly: what mirrors may serve never goes to the origin
	// (TargetOptions.MirrorsOnly).
	mirrorsOnly bool

	mu    sync.Mutex
	stats map[string]*hostCounters
}

type mirror struct {
	ep        Endpoint
	client    *auth.Client  // the mirror's own credentials and token cache
	downUntil *atomic.Int64 // unix nanoseconds; shared by the process's targets
}

// mirrorHealth holds, per mirror URL, until when the process leaves it out
// (the daemon opens one target per lazy layer: a dead mirror costs one
// attempt per process, not one per layer).
var mirrorHealth sync.Map // string -> *atomic.Int64

func healthOf(u url.URL) *atomic.Int64 {
	v, _ := mirrorHealth.LoadOrStore(u.String(), new(atomic.Int64))
	return v.(*atomic.Int64)
}

func (m *mirror) down() bool { return time.Now().UnixNano() < m.downUntil.Load() }
func (m *mirror) markDown()  { m.downUntil.Store(time.Now().Add(mirrorCooldown).UnixNano()) }

// newMirrorTransport builds the routing transport for registry (nil when
// cfg is nil). base reaches the origin; store gives mirrors their own
// credentials; tr, when set (tests), is every mirror's transport too.
func newMirrorTransport(ref registry.Reference, cfg *mirrorConfig, base, tr http.RoundTripper, store credentials.Store) (*mirrorTransport, error) {
	t := &mirrorTransport{registry: ref.Registry, apiHost: ref.Host(), server: cfg.server, base: base, stats: map[string]*hostCounters{}}
	if t.server != nil && t.server.tlsSettings() {
		st, err := endpointTransport(t.server, mirrorDialTimeout*10)
		if err != nil {
			return nil, fmt.Errorf("server %s: %w", t.server.URL.Host, err)
		}
		t.base = wrapRetry(st)
	}
	for _, ep := range cfg.mirrors {
		mtr := tr
		if mtr == nil || ep.tlsSettings() {
			var err error
			if mtr, err = endpointTransport(&ep, mirrorDialTimeout); err != nil {
				return nil, fmt.Errorf("mirror %s: %w", ep.URL.Host, err)
			}
		}
		t.mirrors = append(t.mirrors, &mirror{ep: ep, downUntil: healthOf(ep.URL), client: &auth.Client{
			Client:     &http.Client{Transport: mtr},
			Cache:      auth.NewCache(),
			Credential: credentials.Credential(store),
			Header:     http.Header{"User-Agent": {"obdvol"}},
		}})
	}
	return t, nil
}

// tlsSettings reports whether ep needs TLS settings of its own.
func (ep *Endpoint) tlsSettings() bool {
	return ep.SkipVerify || len(ep.CAs) > 0 || len(ep.Clients) > 0
}

// endpointTransports are the transports made by endpointTransport, by
// settings: every target of a process (the daemon opens one per lazy
// layer) shares one connection pool per kind of endpoint.
var endpointTransports sync.Map // string -> *http.Transport

// endpointTransport is http.DefaultTransport (proxies from the
// environment included) with the endpoint's TLS settings and a dial
// timeout, shared by every endpoint with the same settings.
func endpointTransport(ep *Endpoint, dial time.Duration) (*http.Transport, error) {
	key := fmt.Sprintf("%v|%v|%q|%q", dial, ep.SkipVerify, ep.CAs, ep.Clients)
	if tr, ok := endpointTransports.Load(key); ok {
		return tr.(*http.Transport), nil
	}
	tr, err := newEndpointTransport(ep, dial)
	if err != nil {
		return nil, err
	}
	got, _ := endpointTransports.LoadOrStore(key, tr)
	return got.(*http.Transport), nil
}

func newEndpointTransport(ep *Endpoint, dial time.Duration) (*http.Transport, error) {
	dt, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		return nil, errors.New("http.DefaultTransport is not an *http.Transport")
	}
	tr := dt.Clone()
	tr.DialContext = (&net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}).DialContext
	if ep.tlsSettings() {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: ep.SkipVerify}
		for _, c := range ep.Clients {
			key := c.Key
			if key == "" {
				key = c.Cert
			}
			pair, err := tls.LoadX509KeyPair(c.Cert, key)
			if err != nil {
				return nil, fmt.Errorf("client certificate %s: %w", c.Cert, err)
			}
			cfg.Certificates = append(cfg.Certificates, pair)
		}
		if len(ep.CAs) > 0 {
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			for _, p := range ep.CAs {
				b, err := os.ReadFile(p)
				if err != nil {
					return nil, fmt.Errorf("ca: %w", err)
				}
				if !pool.AppendCertsFromPEM(b) {
					return nil, fmt.Errorf("ca %s: no PEM certificate", p)
				}
			}
			cfg.RootCAs = pool
		}
		tr.TLSClientConfig = cfg
	}
	return tr, nil
}

// reqKind says which hosts may serve a request.
type reqKind int

const (
	kindOrigin  reqKind = iota // origin only
	kindPull                   // blob or manifest by digest
	kindResolve                // manifest by tag
)

// classify parses /v2/<repo>/(blobs|manifests)/<ref> of a GET or HEAD and
// returns its kind and the part after /v2/: a GET by digest, or a HEAD of
// a manifest by digest (resolving a digest reference), is a pull; a GET or
// HEAD of a tag a resolve; anything else (a HEAD of a blob included) the
// origin's.
func classify(req *http.Request) (reqKind, string) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		return kindOrigin, ""
	}
	rest, ok := strings.CutPrefix(req.URL.Path, "/v2/")
	if !ok || req.URL.RawQuery != "" {
		return kindOrigin, ""
	}
	for _, part := range []string{"/blobs/", "/manifests/"} {
		i := strings.LastIndex(rest, part)
		if i <= 0 {
			continue
		}
		ref := rest[i+len(part):]
		switch {
		case ValidateDigest(ref) == nil && (req.Method == http.MethodGet || part == "/manifests/"):
			return kindPull, rest
		case ValidateDigest(ref) == nil:
			// HEAD of a blob asks whether the origin has it (a push's
			// existence check, a mount's): a mirror's answer would be wrong.
			return kindOrigin, ""
		case part == "/manifests/" && ref != "" && !strings.Contains(ref, "/"):
			return kindResolve, rest
		}
	}
	return kindOrigin, ""
}

// RoundTrip implements http.RoundTripper.
func (t *mirrorTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !strings.EqualFold(req.URL.Host, t.apiHost) {
		return t.base.RoundTrip(req) // a token service, a redirect to storage
	}
	kind, rest := classify(req)
	if kind != kindOrigin && !originOnly(req.Context()) {
		need := CapPull
		if kind == kindResolve {
			need = CapResolve
		}
		for _, m := range t.mirrors {
			if m.ep.Capabilities&need == 0 || m.down() || req.Header.Get("Range") != "" && rangeless.has(m.ep.URL.Host, rest) {
				continue
			}
			resp, err := t.tryMirror(m, req, rest)
			if err == nil {
				return resp, nil
			}
		}
	}
	if t.mirrorsOnly && kind != kindOrigin {
		return nil, fmt.Errorf("%s /v2/%s: no mirror of %s served it, and it is to come from mirrors only: %w", req.Method, rest, t.registry, ErrUnavailable)
	}
	oreq := req
	if t.server != nil {
		oreq = req.Clone(req.Context())
		oreq.URL.Scheme, oreq.URL.Host = t.server.URL.Scheme, t.server.URL.Host
		if p, ok := strings.CutPrefix(req.URL.Path, "/v2"); ok {
			oreq.URL.Path, oreq.URL.RawPath = strings.TrimSuffix(t.server.URL.Path, "/")+p, ""
		}
		oreq.Host = ""
		for k, v := range t.server.Header {
			oreq.Header[k] = v
		}
	}
	resp, err := t.base.RoundTrip(oreq)
	host := oreq.URL.Host
	if err != nil {
		if kind != kindOrigin {
			t.count(host, false, false)
			observeHost(t.apiHost, host, 0, err)
		}
		return nil, err
	}
	if kind != kindOrigin {
		ok := resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent
		t.count(host, false, ok)
		observeHost(t.apiHost, host, resp.StatusCode, nil)
		if ok && req.Method == http.MethodGet {
			resp.Body = &countBody{rc: resp.Body, n: t.bytesOf(host, false)}
		}
	}
	return resp, nil
}

// errMirrorMiss is what tryMirror returns when a mirror cannot serve a
// request (the next host is tried).
var errMirrorMiss = errors.New("mirror cannot serve the request")

// tryMirror sends req (rest: the path after /v2/) to mirror m.
func (t *mirrorTransport) tryMirror(m *mirror, req *http.Request, rest string) (*http.Response, error) {
	ctx := req.Context()
	if scopes := auth.GetScopesForHost(ctx, t.apiHost); len(scopes) > 0 {
		ctx = auth.AppendScopesForHost(ctx, m.ep.URL.Host, scopes...)
	}
	mreq := req.Clone(ctx)
	mreq.Header.Del("Authorization") // the origin's token is not the mirror's
	mreq.Host = ""
	u := t.mirrorURL(m, rest)
	mreq.URL = &u
	for k, v := range m.ep.Header {
		mreq.Header[k] = v
	}
	if mreq.Header.Get("X-Dragonfly-Registry") == "" {
		mreq.Header.Set("X-Dragonfly-Registry", req.URL.Scheme+"://"+t.apiHost)
	}
	host := m.ep.URL.Host
	fail := func(status int, err error, down bool) (*http.Response, error) {
		if down {
			m.markDown()
		}
		t.count(host, true, false)
		observeHost(t.apiHost, host, status, err)
		return nil, err
	}
	resp, err := m.client.Do(mreq)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err() // the caller gave up: not the mirror's fault
		}
		return fail(0, err, true)
	}
	rng := req.Header.Get("Range")
	var want int64 = -1 // body length a 206 must have
	switch {
	case resp.StatusCode == http.StatusOK && rng == "":
	case resp.StatusCode == http.StatusOK:
		// Range ignored: a whole blob for a range is not what a lazy
		// read should pay; the next host may honour it.
		drainClose(resp)
		rangeless.add(host, rest)
		return fail(resp.StatusCode, fmt.Errorf("%w: %s ignored Range", errMirrorMiss, host), false)
	case resp.StatusCode == http.StatusPartialContent:
		n, ok := rangeMatches(rng, resp.Header.Get("Content-Range"), resp.ContentLength)
		if !ok {
			drainClose(resp)
			return fail(resp.StatusCode, fmt.Errorf("%w: %s answered %q with Content-Range %q", errMirrorMiss, host, rng, resp.Header.Get("Content-Range")), true)
		}
		want = n
	default:
		drainClose(resp)
		return fail(resp.StatusCode, fmt.Errorf("%w: %s answered %s", errMirrorMiss, host, resp.Status), resp.StatusCode >= 500)
	}
	t.count(host, true, true)
	observeHost(t.apiHost, host, resp.StatusCode, nil)
	if req.Method == http.MethodGet {
		if want < 0 {
			want = resp.ContentLength
		}
		resp.Body = &countBody{rc: resp.Body, n: t.bytesOf(host, true), want: want, short: m.markDown}
	}
	return resp, nil
}

// rangeless remembers, per mirror and blob, a mirror that answered a
// range request with the whole blob (Harbor's proxy-cache and
// docker-registry on a miss): range requests for that blob skip it for
// mirrorCooldown, instead of paying a round trip each (it may have cached
// the blob by then).
var rangeless = &rangelessSet{m: map[string]int64{}}

type rangelessSet struct {
	mu sync.Mutex
	m  map[string]int64 // mirror host + " " + path -> unix nanoseconds
}

const maxRangeless = 4096

func (r *rangelessSet) add(host, path string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now().UnixNano()
	if len(r.m) >= maxRangeless {
		for k, until := range r.m {
			if until < now {
				delete(r.m, k)
			}
		}
		if len(r.m) >= maxRangeless {
			clear(r.m)
		}
	}
	r.m[host+" "+path] = now + int64(mirrorCooldown)
}

func (r *rangelessSet) has(host, path string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return time.Now().UnixNano() < r.m[host+" "+path]
}

// rangeMatches checks a 206 answer to a "bytes=a-b" or "bytes=a-" request:
// its Content-Range starts at a and ends at b (or at the blob's last byte
// when the request ran past it), and Content-Length, when stated, agrees.
// It returns the body length the answer must have.
func rangeMatches(rng, cr string, length int64) (int64, bool) {
	spec, ok := strings.CutPrefix(rng, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, false
	}
	as, zs, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, false
	}
	a, err := strconv.ParseInt(as, 10, 64)
	if err != nil || a < 0 {
		return 0, false
	}
	first, last, total, err := parseContentRange(cr)
	if err != nil || first != a {
		return 0, false
	}
	if zs != "" {
		z, err := strconv.ParseInt(zs, 10, 64)
		if err != nil || z < a {
			return 0, false
		}
		if last != z && !(total >= 0 && z > last && last == total-1) {
			return 0, false
		}
	} else if total >= 0 && last != total-1 {
		return 0, false
	}
	n := last - first + 1
	if length >= 0 && length != n {
		return 0, false
	}
	return n, true
}

func drainClose(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// countBody counts the bytes read from a response; when want >= 0, a body
// that ends before want bytes calls short (the mirror is taken out).
type countBody struct {
	rc    io.ReadCloser
	n     *atomic.Int64
	got   int64
	want  int64
	short func()
}

func (c *countBody) Read(p []byte) (int, error) {
	k, err := c.rc.Read(p)
	c.got += int64(k)
	c.n.Add(int64(k))
	if err != nil && c.short != nil && c.want >= 0 && c.got < c.want {
		c.short()
		c.short = nil
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
	}
	return k, err
}

func (c *countBody) Close() error { return c.rc.Close() }

// hostCounters are one host's counts.
type hostCounters struct {
	requests, failures, bytes atomic.Int64
	mirror                    bool
}

func (t *mirrorTransport) counters(host string, isMirror bool) *hostCounters {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.stats[host]
	if c == nil {
		c = &hostCounters{mirror: isMirror}
		t.stats[host] = c
	}
	return c
}

func (t *mirrorTransport) count(host string, isMirror, ok bool) {
	c := t.counters(host, isMirror)
	if ok {
		c.requests.Add(1)
	} else {
		c.failures.Add(1)
	}
}

// bytesOf returns the counter of host's body bytes.
func (t *mirrorTransport) bytesOf(host string, isMirror bool) *atomic.Int64 {
	return &t.counters(host, isMirror).bytes
}

// Stats returns what each host served so far.
func (t *mirrorTransport) Stats() map[string]HostStat {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]HostStat, len(t.stats))
	for h, c := range t.stats {
		out[h] = HostStat{Requests: c.requests.Load(), Failures: c.failures.Load(), Bytes: c.bytes.Load(), Mirror: c.mirror}
	}
	return out
}

// HostStats returns, per host (host[:port]), what the registry's mirrors
// and the origin served this target's pulls; nil when no mirror or server
// is configured for its registry.
func (t *Target) HostStats() map[string]HostStat {
	if t.mirrors == nil {
		return nil
	}
	return t.mirrors.Stats()
}

// MirrorHosts lists the mirrors configured for the target's registry, in
// the order they are tried.
func (t *Target) MirrorHosts() []string {
	if t.mirrors == nil {
		return nil
	}
	out := make([]string, len(t.mirrors.mirrors))
	for i, m := range t.mirrors.mirrors {
		out[i] = m.ep.URL.Scheme + "://" + m.ep.URL.Host + m.ep.URL.Path
	}
	return out
}

// hasMirrors reports whether f fetches through a mirror transport.
func hasMirrors(f RangeFetcher) bool {
	rr, ok := f.(RegistryRanges)
	if !ok || rr.Repo == nil {
		return false
	}
	ac, ok := rr.Repo.Client.(*auth.Client)
	if !ok || ac.Client == nil {
		return false
	}
	_, ok = ac.Client.Transport.(*mirrorTransport)
	return ok
}

// fetchAllChecked is content.FetchAll (size and digest checked); when
// mirrors may have served what failed, it asks the origin once more.
func fetchAllChecked(ctx context.Context, t *Target, d ocispec.Descriptor) ([]byte, error) {
	b, err := content.FetchAll(ctx, t, d)
	if err == nil || t.mirrors == nil || ctx.Err() != nil || originOnly(ctx) {
		return b, err
	}
	b, oerr := content.FetchAll(withoutMirrors(ctx), t, d)
	if oerr != nil {
		return nil, fmt.Errorf("%w (through the mirrors; from the origin only: %v)", err, oerr)
	}
	return b, nil
}

// checkMirroredIndex opens the layer in lb (trailer and index) once; when
// it fails its checks, which a mirror serving bad bytes causes, every page
// is forgotten and lb fetches from the origin only from then on (the
// volume's own open then reads good bytes). Network errors are left for
// the volume's open to report.
func checkMirroredIndex(lb *LazyBlob) {
	if _, err := snapshot.Open(lb); errors.Is(err, snapshot.ErrFormat) || errors.Is(err, snapshot.ErrChecksum) {
		lb.Invalidate(0, lb.Size())
	}
}
