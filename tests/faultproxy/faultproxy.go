// Package faultproxy is a small HTTP reverse proxy for tests that puts the
// faults no real registry produces on demand in front of a real one (a
// docker-registry started by tests/regtest): latency (a round trip added
// to every request), a request-size limit (413, as Cloudflare-fronted
// registries answer over 100 MB), Range ignored (200 and the whole blob, as
// distribution without a cache or Harbor's proxy-cache on a miss), a wrong
// Content-Range, a short 206 body, a shared bandwidth limit, and bearer
// tokens that expire (bearer.go). It counts
// what it forwards, so a test or benchmark can read the origin's egress.
//
// Faults are changed at any time with Set; a request sees the settings of
// the moment it arrived.
package faultproxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Faults are what the proxy does to requests; the zero value forwards
// everything unchanged.
type Faults struct {
	// Latency is added before a request is forwarded (one round trip).
	Latency time.Duration
	// MaxRequestBody, when > 0, answers 413 to a request whose body is
	// larger (by Content-Length, or counted for a body of unknown length).
	MaxRequestBody int64
	// IgnoreRange forwards a blob GET without its Range header, so the
	// registry answers 200 with the whole blob.
	IgnoreRange bool
	// ShiftContentRange adds this many bytes to the first and last byte
	// positions of a 206 answer's Content-Range (the body is unchanged).
	ShiftContentRange int64
	// ShortBody cuts a 206 answer's body to half its length, leaving its
	// headers (the connection then ends early).
	ShortBody bool
	// Bandwidth, when > 0, limits the response bytes of all requests
	// together to this many bytes a second.
	Bandwidth int64
	// CheckUploadRange answers 416 to a blob upload PATCH whose
	// Content-Range does not start at the session's offset (found with a
	// GET of the session first), as distribution 3 and other OCI 1.1
	// registries do; Debian's docker-registry 2.8 ignores Content-Range
	// and appends.
	CheckUploadRange bool
	// ChunkMinLength, when > 0, is advertised as OCI-Chunk-Min-Length in
	// the answers that open blob upload sessions.
	ChunkMinLength int64
	// NoMount drops the mount and from parameters of an upload POST, so
	// that the registry answers a cross-repository mount with an upload
	// session (202), as registries without mount support do.
	NoMount bool
	// CorruptBody flips the bits of the first byte of every blob GET's
	// answer (200 or 206), headers unchanged: a mirror or cache serving
	// wrong bytes.
	CorruptBody bool
	// ConnBandwidth, when > 0, limits each response to this many bytes a
	// second: what one TCP stream gets at a high round-trip time (its
	// window over the RTT), which several requests at once multiply.
	ConnBandwidth int64
}

// Stats count what the proxy forwarded.
type Stats struct {
	Requests      int64 // every request
	BlobGets      int64 // GET /v2/.../blobs/...
	RangeRequests int64 // blob GETs with a Range header
	BytesOut      int64 // response body bytes sent to clients (the origin's egress)
	BytesIn       int64 // request body bytes received from clients
	TooLarge      int64 // requests answered 413
	OutOfOrder    int64 // upload PATCHes answered 416 (CheckUploadRange)
	// MaxInFlight is the most requests the proxy held at once (from
	// arrival, latency included, to the end of the answer).
	MaxInFlight int64
}

// Proxy is a running fault proxy.
type Proxy struct {
	Addr string // 127.0.0.1:port, use as the registry's host

	mu     sync.Mutex
	faults Faults
	limit  *bucket

	requests, blobGets, rangeRequests, bytesOut, bytesIn, tooLarge, outOfOrder atomic.Int64
	upstream                                                                   string

	inFlight, maxInFlight atomic.Int64

	bearer bearerState // bearer.go

	srv *http.Server
	ln  net.Listener
}

// Start starts a proxy to upstream (host:port, plain HTTP) on a free
// loopback port and stops it when the test ends.
func Start(t testing.TB, upstream string) *Proxy {
	t.Helper()
	p, err := New(upstream)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// New starts a proxy to upstream (host:port, plain HTTP); Close stops it.
func New(upstream string) (*Proxy, error) {
	target, err := url.Parse("http://" + upstream)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Addr: ln.Addr().String(), ln: ln, upstream: upstream}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1
	rp.ModifyResponse = p.modify
	rp.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		http.Error(w, "faultproxy: "+err.Error(), http.StatusBadGateway)
	}
	p.srv = &http.Server{Handler: p.handler(rp), ReadHeaderTimeout: 10 * time.Second}
	go p.srv.Serve(ln)
	return p, nil
}

// Close stops the proxy.
func (p *Proxy) Close() error { return p.srv.Close() }

// Set changes the faults for requests from now on.
func (p *Proxy) Set(f Faults) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults = f
	p.limit = nil
	if f.Bandwidth > 0 {
		p.limit = &bucket{rate: f.Bandwidth}
	}
}

// Faults returns the current faults.
func (p *Proxy) Faults() Faults {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faults
}

// Stats returns the counters so far.
func (p *Proxy) Stats() Stats {
	return Stats{
		Requests: p.requests.Load(), BlobGets: p.blobGets.Load(), RangeRequests: p.rangeRequests.Load(),
		BytesOut: p.bytesOut.Load(), BytesIn: p.bytesIn.Load(), TooLarge: p.tooLarge.Load(),
		OutOfOrder:  p.outOfOrder.Load(),
		MaxInFlight: p.maxInFlight.Load(),
	}
}

// ResetStats sets every counter to zero (MaxInFlight to the requests
// in flight now).
func (p *Proxy) ResetStats() {
	for _, c := range []*atomic.Int64{&p.requests, &p.blobGets, &p.rangeRequests, &p.bytesOut, &p.bytesIn, &p.tooLarge, &p.outOfOrder} {
		c.Store(0)
	}
	p.maxInFlight.Store(p.inFlight.Load())
}

// InFlight is how many requests the proxy holds now.
func (p *Proxy) InFlight() int64 { return p.inFlight.Load() }

// enter counts a request in flight until the returned func runs.
func (p *Proxy) enter() func() {
	n := p.inFlight.Add(1)
	for {
		m := p.maxInFlight.Load()
		if n <= m || p.maxInFlight.CompareAndSwap(m, n) {
			break
		}
	}
	return func() { p.inFlight.Add(-1) }
}

func (p *Proxy) snapshot() (Faults, *bucket) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faults, p.limit
}

type ctxKey struct{}

func withState(ctx context.Context, st *reqState) context.Context {
	return context.WithValue(ctx, ctxKey{}, st)
}

type reqState struct {
	faults Faults
	limit  *bucket
}

func isBlobGet(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && strings.HasPrefix(r.URL.Path, "/v2/") &&
		strings.Contains(r.URL.Path, "/blobs/sha256:")
}

func (p *Proxy) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, limit := p.snapshot()
		p.requests.Add(1)
		defer p.enter()()
		if p.gate(w, r) { // bearer.go
			return
		}
		if isBlobGet(r) && r.Method == http.MethodGet {
			p.blobGets.Add(1)
			if r.Header.Get("Range") != "" {
				p.rangeRequests.Add(1)
			}
		}
		if f.Latency > 0 {
			select {
			case <-time.After(f.Latency):
			case <-r.Context().Done():
				return
			}
		}
		if f.MaxRequestBody > 0 && r.Body != nil && r.Body != http.NoBody {
			if r.ContentLength > f.MaxRequestBody {
				p.tooLarge.Add(1)
				io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
				w.Header().Set("Connection", "close")
				http.Error(w, "faultproxy: request entity too large", http.StatusRequestEntityTooLarge)
				return
			}
			if r.ContentLength < 0 {
				// Unknown length: read it first (tests keep limits small).
				b, err := io.ReadAll(io.LimitReader(r.Body, f.MaxRequestBody+1))
				if err != nil {
					http.Error(w, "faultproxy: "+err.Error(), http.StatusBadRequest)
					return
				}
				if int64(len(b)) > f.MaxRequestBody {
					p.tooLarge.Add(1)
					w.Header().Set("Connection", "close")
					http.Error(w, "faultproxy: request entity too large", http.StatusRequestEntityTooLarge)
					return
				}
				r.Body = io.NopCloser(strings.NewReader(string(b)))
				r.ContentLength = int64(len(b))
				r.Header.Set("Content-Length", strconv.Itoa(len(b)))
				r.TransferEncoding = nil
			}
		}
		if f.CheckUploadRange && r.Method == http.MethodPatch && !p.inOrder(r) {
			p.outOfOrder.Add(1)
			w.Header().Set("Connection", "close")
			http.Error(w, `{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"faultproxy: out-of-order chunk"}]}`,
				http.StatusRequestedRangeNotSatisfiable)
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &countReader{r: r.Body, n: &p.bytesIn}
		}
		if f.IgnoreRange && isBlobGet(r) {
			r.Header.Del("Range")
		}
		if f.NoMount && r.Method == http.MethodPost && r.URL.Query().Has("mount") {
			q := r.URL.Query()
			q.Del("mount")
			q.Del("from")
			r.URL.RawQuery = q.Encode()
		}
		st := &reqState{faults: f, limit: limit}
		ctx := r.Context()
		r = r.WithContext(withState(ctx, st))
		cw := &countWriter{ResponseWriter: w, n: &p.bytesOut, limit: limit}
		if f.ConnBandwidth > 0 {
			cw.conn = &bucket{rate: f.ConnBandwidth}
		}
		next.ServeHTTP(cw, r)
	})
}

func (p *Proxy) modify(resp *http.Response) error {
	st, _ := resp.Request.Context().Value(ctxKey{}).(*reqState)
	if st != nil && st.faults.ChunkMinLength > 0 && resp.Request.Method == http.MethodPost &&
		resp.StatusCode == http.StatusAccepted && strings.HasSuffix(resp.Request.URL.Path, "/blobs/uploads/") {
		resp.Header.Set("OCI-Chunk-Min-Length", strconv.FormatInt(st.faults.ChunkMinLength, 10))
	}
	if st != nil && st.faults.CorruptBody && resp.Request.Method == http.MethodGet && isBlobGet(resp.Request) &&
		(resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent) {
		resp.Body = &corruptReader{rc: resp.Body}
	}
	if st == nil || resp.StatusCode != http.StatusPartialContent {
		return nil
	}
	f := st.faults
	if f.ShiftContentRange != 0 {
		var a, z int64
		var tot string
		cr := resp.Header.Get("Content-Range")
		if _, err := fmt.Sscanf(cr, "bytes %d-%d/%s", &a, &z, &tot); err == nil {
			resp.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%s", a+f.ShiftContentRange, z+f.ShiftContentRange, tot))
		}
	}
	if f.ShortBody && resp.ContentLength > 1 {
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.LimitReader(resp.Body, resp.ContentLength/2), resp.Body}
	}
	return nil
}

// corruptReader flips the first byte it reads.
type corruptReader struct {
	rc   io.ReadCloser
	done bool
}

func (c *corruptReader) Read(b []byte) (int, error) {
	n, err := c.rc.Read(b)
	if n > 0 && !c.done {
		b[0] ^= 0xff
		c.done = true
	}
	return n, err
}

func (c *corruptReader) Close() error { return c.rc.Close() }

// countWriter counts (and rate-limits) response body bytes.
type countWriter struct {
	http.ResponseWriter
	n     *atomic.Int64
	limit *bucket
	conn  *bucket // this response's own limit
}

func (w *countWriter) Write(b []byte) (int, error) {
	done := 0
	for done < len(b) {
		chunk := b[done:]
		if (w.limit != nil || w.conn != nil) && len(chunk) > 64<<10 {
			chunk = chunk[:64<<10]
		}
		if w.limit != nil {
			w.limit.take(int64(len(chunk)))
		}
		if w.conn != nil {
			w.conn.take(int64(len(chunk)))
		}
		n, err := w.ResponseWriter.Write(chunk)
		done += n
		w.n.Add(int64(n))
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

func (w *countWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

type countReader struct {
	r io.ReadCloser
	n *atomic.Int64
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (c *countReader) Close() error { return c.r.Close() }

// bucket is a token bucket shared by every response: take blocks until n
// bytes may be sent.
type bucket struct {
	mu   sync.Mutex
	rate int64 // bytes a second
	next time.Time
}

func (b *bucket) take(n int64) {
	b.mu.Lock()
	now := time.Now()
	if b.next.Before(now) {
		b.next = now
	}
	wait := b.next.Sub(now)
	b.next = b.next.Add(time.Duration(float64(n) / float64(b.rate) * float64(time.Second)))
	b.mu.Unlock()
	if wait > 0 {
		time.Sleep(wait)
	}
}

// inOrder reports whether an upload PATCH's Content-Range ("<first>-<last>")
// starts at the offset the registry's session holds (its GET answer's
// Range "0-<last>"; "0-0" or none is taken as empty). A PATCH without
// Content-Range is in order (a streamed upload).
func (p *Proxy) inOrder(r *http.Request) bool {
	cr := r.Header.Get("Content-Range")
	if cr == "" {
		return true
	}
	var first, last int64
	if _, err := fmt.Sscanf(cr, "%d-%d", &first, &last); err != nil {
		return false
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "http://"+p.upstream+r.URL.RequestURI(), nil)
	if err != nil {
		return false
	}
	if a := r.Header.Get("Authorization"); a != "" {
		req.Header.Set("Authorization", a)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	held := int64(0)
	var end int64
	if _, err := fmt.Sscanf(resp.Header.Get("Range"), "0-%d", &end); err == nil && end > 0 {
		held = end + 1
	}
	return resp.StatusCode == http.StatusNoContent && first == held
}
