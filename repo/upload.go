package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/errcode"
)

// Chunked uploads (OCI distribution spec 1.1, "Pushing a blob in chunks"):
// POST /v2/<name>/blobs/uploads/ opens an upload session; each chunk goes
// up in order with PATCH <location>, Content-Range "<first>-<last>" and
// Content-Type application/octet-stream; every answer's Location (relative
// or absolute) names the session for the next request; PUT
// <location>?digest=<d> with no body closes it, and the registry checks
// the digest. A registry that takes bytes at another offset than a PATCH
// says answers 416; GET <location> then states what it holds ("Range:
// 0-<last>") and the upload continues from there.
//
// A push uploads monolithically (oras-go: POST then one PUT of the whole
// blob) unless PushOptions.ChunkSize is set. A monolithic upload answered
// 413 (a proxy's or registry's request size limit) switches the rest of
// that push to chunks of DefaultChunkSize and uploads the blob again; in
// that mode a chunk answered 413 halves the chunk size (from the refused
// chunk's size, not below MinChunkSize; a refused chunk of MinChunkSize
// fails the push) for the rest of the push. A chunk size the user set is
// kept: a 413 then fails the push with ErrChunkTooLarge.

// DefaultChunkSize is the chunk size a push falls back to after a 413.
const DefaultChunkSize = 16 << 20

// MinChunkSize is the smallest chunk size a push shrinks to after 413
// answers to chunks.
const MinChunkSize = 256 << 10

// maxChunkSize bounds a chunk (one is held in memory per blob in flight).
const maxChunkSize = 1 << 30

// ErrChunkTooLarge is wrapped when a registry refuses a chunk of the
// configured size with 413.
var ErrChunkTooLarge = errors.New("registry refused a chunk as too large")

// errSessionLost is wrapped when a registry no longer knows an upload
// session (404 to its status).
var errSessionLost = errors.New("the registry lost the upload session")

// errUploadRestart ends a blob's progress when its upload reads it from
// the start again.
var errUploadRestart = errors.New("upload restarted")

// maxUploadRetries bounds the failed requests in a row (416, 413 with a
// smaller chunk, a network error) an upload recovers from before failing.
const maxUploadRetries = 4

// isTooLarge reports whether err is a registry's 413 answer.
func isTooLarge(err error) bool {
	var er *errcode.ErrorResponse
	return errors.As(err, &er) && er.StatusCode == http.StatusRequestEntityTooLarge
}

// chunkUpload is one blob's chunked upload. size gives the chunk size for
// each next chunk and shrink is called on a 413 to a chunk of n bytes; it
// returns false when the size may not shrink (the upload then fails).
// open opens the blob's bytes from the start (again after a 416 that goes
// back before the bytes still held).
type chunkUpload struct {
	client remote.Client
	repo   *remote.Repository
	d      ocispec.Descriptor
	open   func() (io.ReadCloser, error)
	size   func() int64
	shrink func(n int64) bool

	reg      *url.URL // the registry's /v2/ URL: Locations must stay on its host
	loc      *url.URL // the session, from the last answer
	minChunk int64    // OCI-Chunk-Min-Length, 0 if not advertised

	src     io.ReadCloser
	srcOff  int64  // offset of the next byte src gives
	pending []byte // bytes [off, off+len(pending)) read but not yet taken
	buf     []byte
	off     int64 // bytes the registry holds (as far as we know)

	shrunk  bool // the last PATCH was refused with 413 and the size shrank
	resyncs int  // 416s and failed requests recovered from (for tests)
	// skipOnce, when > 0, makes the next PATCH claim an offset this many
	// bytes too far once (tests force an out-of-order PATCH with it).
	skipOnce int64
}

// uploadChunked uploads blob d to repo r in chunks.
func uploadChunked(ctx context.Context, r *remote.Repository, d ocispec.Descriptor, open func() (io.ReadCloser, error),
	size func() int64, shrink func(int64) bool) error {
	u, err := newChunkUpload(r, d, open, size, shrink)
	if err != nil {
		return err
	}
	return u.run(ctx)
}

func newChunkUpload(r *remote.Repository, d ocispec.Descriptor, open func() (io.ReadCloser, error),
	size func() int64, shrink func(int64) bool) (*chunkUpload, error) {
	scheme := "https"
	if r.PlainHTTP {
		scheme = "http"
	}
	reg, err := url.Parse(scheme + "://" + r.Reference.Host() + "/v2/")
	if err != nil {
		return nil, err
	}
	var client remote.Client = auth.DefaultClient
	if r.Client != nil {
		client = r.Client
	}
	return &chunkUpload{client: client, repo: r, d: d, open: open, size: size, shrink: shrink, reg: reg}, nil
}

// run opens a session, sends every chunk, and closes the session with
// the digest; a failed upload's session is cancelled (best effort).
func (u *chunkUpload) run(ctx context.Context) error {
	ctx = auth.AppendRepositoryScope(ctx, u.repo.Reference, auth.ActionPull, auth.ActionPush)
	defer u.closeSource()
	if err := u.start(ctx); err != nil {
		return err
	}
	if err := u.sendAll(ctx); err != nil {
		u.cancel(ctx)
		return err
	}
	return nil
}

// sendAll sends the chunks from u.off on, recovering from 416s, 413s
// (with a smaller chunk) and lost answers by asking the registry where
// the session stands, then closes the session.
func (u *chunkUpload) sendAll(ctx context.Context) error {
	fails, restarts := 0, 0
	for u.off < u.d.Size {
		progressed, err := u.patch(ctx)
		if err != nil {
			return err
		}
		if progressed {
			fails = 0
			continue
		}
		if u.shrunk { // bounded by MinChunkSize, not a failure
			u.shrunk = false
		} else if fails++; fails > maxUploadRetries {
			return fmt.Errorf("chunked upload of %s: no progress after %d recoveries at offset %d", u.d.Digest, maxUploadRetries, u.off)
		}
		err = u.resync(ctx)
		if errors.Is(err, errSessionLost) && restarts < maxUploadRetries {
			// distribution 2.x cancels a session whose state token is
			// behind it (a lost answer): start over in a new one.
			restarts++
			u.resyncs++
			if err = u.start(ctx); err == nil {
				err = u.seek(0)
			}
		}
		if err != nil {
			return err
		}
	}
	return u.finish(ctx)
}

func (u *chunkUpload) closeSource() {
	if u.src != nil {
		u.src.Close()
		u.src = nil
	}
}

// start opens the upload session (POST).
func (u *chunkUpload) start(ctx context.Context) error {
	post := u.reg.JoinPath(u.repo.Reference.Repository, "blobs", "uploads")
	post.Path += "/"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, post.String(), nil)
	if err != nil {
		return err
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return fmt.Errorf("chunked upload of %s: open session: %w", u.d.Digest, err)
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusAccepted {
		return answerError(resp)
	}
	if u.loc, err = resolveLocation(u.reg, req.URL, resp.Header.Get("Location")); err != nil {
		return err
	}
	if v := resp.Header.Get("OCI-Chunk-Min-Length"); v != "" {
		if u.minChunk, err = parseChunkMinLength(v); err != nil {
			return err
		}
	}
	return nil
}

// patch sends the next chunk. It reports whether the registry took it;
// false with a nil error means the upload must resync first (416, a 413
// with a smaller chunk size to try, a network error).
func (u *chunkUpload) patch(ctx context.Context) (bool, error) {
	n := min(max(u.size(), u.minChunk), maxChunkSize, u.d.Size-u.off)
	if n <= 0 {
		return false, fmt.Errorf("chunked upload of %s: chunk size %d", u.d.Digest, u.size())
	}
	chunk, err := u.fill(n)
	if err != nil {
		return false, err
	}
	first := u.off + u.skipOnce
	u.skipOnce = 0
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, u.loc.String(), bytes.NewReader(chunk))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", first, first+n-1))
	resp, err := u.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		u.resyncs++ // the registry may or may not have taken it
		return false, nil
	}
	defer drain(resp)
	switch resp.StatusCode {
	case http.StatusAccepted:
	case http.StatusRequestedRangeNotSatisfiable, http.StatusNotFound:
		// Another offset, or (distribution 2.x, after a PATCH re-sent
		// with a stale state token) a cancelled session: ask.
		u.resyncs++
		return false, nil
	case http.StatusRequestEntityTooLarge:
		if u.minChunk > 0 && n <= u.minChunk || !u.shrink(n) {
			return false, fmt.Errorf("chunked upload of %s: %w: %d bytes (answer %s; lower --chunk-size)",
				u.d.Digest, ErrChunkTooLarge, n, resp.Status)
		}
		u.resyncs++
		u.shrunk = true
		return false, nil
	default:
		return false, answerError(resp)
	}
	if err := u.follow(req.URL, resp); err != nil {
		return false, err
	}
	last, err := parseUploadRange(resp.Header.Get("Range"))
	if err != nil || last != first+n-1 {
		// It took the chunk at another offset than we said: find out.
		u.resyncs++
		return false, nil
	}
	u.pending = u.pending[n:]
	u.off += n
	return true, nil
}

// resync asks the registry how many bytes the session holds (GET
// <location>: 204, Range "0-<last>") and continues from there.
func (u *chunkUpload) resync(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.loc.String(), nil)
	if err != nil {
		return err
	}
	resp, err := u.client.Do(req)
	if err != nil {
		return fmt.Errorf("chunked upload of %s: upload status: %w", u.d.Digest, err)
	}
	defer drain(resp)
	switch resp.StatusCode {
	case http.StatusNoContent:
	case http.StatusNotFound:
		return fmt.Errorf("chunked upload of %s: %w (%v)", u.d.Digest, errSessionLost, answerError(resp))
	default:
		return answerError(resp)
	}
	last, err := parseUploadRange(resp.Header.Get("Range"))
	if err != nil {
		return fmt.Errorf("chunked upload of %s: upload status: %w", u.d.Digest, err)
	}
	held := heldBytes(last)
	if held > u.d.Size {
		return fmt.Errorf("chunked upload of %s: the registry holds %d bytes of a %d-byte blob", u.d.Digest, held, u.d.Size)
	}
	if err := u.follow(req.URL, resp); err != nil {
		return err
	}
	return u.seek(held)
}

// follow takes the session's next location from an answer to a request
// on it; an answer without one (the spec wants one; not every registry
// sends it on a status GET) keeps the current one.
func (u *chunkUpload) follow(reqURL *url.URL, resp *http.Response) error {
	loc := resp.Header.Get("Location")
	if loc == "" {
		return nil
	}
	l, err := resolveLocation(u.reg, reqURL, loc)
	if err != nil {
		return err
	}
	u.loc = l
	return nil
}

// finish closes the session with the digest (PUT, no body): 201.
func (u *chunkUpload) finish(ctx context.Context) error {
	put := *u.loc
	q := put.Query()
	q.Set("digest", u.d.Digest.String())
	put.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, put.String(), http.NoBody)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := u.client.Do(req)
	if err != nil {
		return fmt.Errorf("chunked upload of %s: close session: %w", u.d.Digest, err)
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusCreated {
		return answerError(resp)
	}
	return nil
}

// cancel deletes a failed upload's session so that the registry does not
// keep its bytes until it purges stale uploads.
func (u *chunkUpload) cancel(ctx context.Context) {
	if u.loc == nil {
		return
	}
	ctx, stop := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer stop()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u.loc.String(), nil)
	if err != nil {
		return
	}
	if resp, err := u.client.Do(req); err == nil {
		drain(resp)
	}
}

// fill returns the n bytes at u.off, reading what pending lacks from the
// source.
func (u *chunkUpload) fill(n int64) ([]byte, error) {
	if int64(len(u.pending)) >= n {
		return u.pending[:n], nil
	}
	if int64(cap(u.buf)) < n {
		u.buf = make([]byte, 0, n)
	}
	have := copy(u.buf[:n], u.pending)
	if u.src == nil {
		if err := u.reopen(); err != nil {
			return nil, err
		}
	}
	if u.srcOff != u.off+int64(have) {
		return nil, fmt.Errorf("chunked upload of %s: source at %d, want %d", u.d.Digest, u.srcOff, u.off+int64(have))
	}
	m, err := io.ReadFull(u.src, u.buf[have:n])
	u.srcOff += int64(m)
	if err != nil {
		return nil, fmt.Errorf("chunked upload of %s: read at %d of %d bytes: %w", u.d.Digest, u.srcOff, u.d.Size, err)
	}
	u.pending = u.buf[:n]
	return u.pending, nil
}

// seek makes off the next byte to send: from the bytes held when it is
// among them, by reading on in the source when it is past them, by
// reopening the source when it is before them.
func (u *chunkUpload) seek(off int64) error {
	end := u.off + int64(len(u.pending))
	switch {
	case off >= u.off && off <= end:
		u.pending = u.pending[off-u.off:]
	case off > end && u.src != nil && u.srcOff <= off:
		u.pending = nil
		m, err := io.CopyN(io.Discard, u.src, off-u.srcOff)
		u.srcOff += m
		if err != nil {
			return fmt.Errorf("chunked upload of %s: skip to %d: %w", u.d.Digest, off, err)
		}
	default:
		u.pending = nil
		if err := u.reopen(); err != nil {
			return err
		}
		m, err := io.CopyN(io.Discard, u.src, off)
		u.srcOff = m
		if err != nil {
			return fmt.Errorf("chunked upload of %s: skip to %d: %w", u.d.Digest, off, err)
		}
	}
	u.off = off
	return nil
}

func (u *chunkUpload) reopen() error {
	u.closeSource()
	src, err := u.open()
	if err != nil {
		return err
	}
	u.src, u.srcOff = src, 0
	return nil
}

// resolveLocation resolves a Location header against the URL of the
// request it answered. It must be on the registry's host (credentials
// must not follow it elsewhere) and not downgrade https.
func resolveLocation(reg, reqURL *url.URL, loc string) (*url.URL, error) {
	if loc == "" {
		return nil, fmt.Errorf("registry answered an upload request without a Location")
	}
	l, err := reqURL.Parse(loc)
	if err != nil {
		return nil, fmt.Errorf("upload Location %q: %w", loc, err)
	}
	if !sameHost(l, reg) {
		return nil, fmt.Errorf("upload Location %q is on another host than the registry %q", l.Host, reg.Host)
	}
	if l.Scheme != reg.Scheme && !(reg.Scheme == "http" && l.Scheme == "https") {
		return nil, fmt.Errorf("upload Location %q: scheme %q, the registry is reached with %q", loc, l.Scheme, reg.Scheme)
	}
	if l.User != nil {
		return nil, fmt.Errorf("upload Location holds credentials")
	}
	l.Fragment, l.RawFragment = "", ""
	return l, nil
}

// sameHost compares hosts with default ports made explicit.
func sameHost(a, b *url.URL) bool {
	port := func(u *url.URL) string {
		if p := u.Port(); p != "" {
			return p
		}
		if u.Scheme == "https" {
			return "443"
		}
		return "80"
	}
	return strings.EqualFold(a.Hostname(), b.Hostname()) && port(a) == port(b)
}

// parseUploadRange reads an upload session's Range header, "0-<last>"
// (some registries write "bytes=0-<last>"), and returns last, or -1 when
// there is no header (an empty session).
func parseUploadRange(s string) (int64, error) {
	if s == "" {
		return -1, nil
	}
	r := strings.TrimPrefix(s, "bytes=")
	a, z, ok := strings.Cut(r, "-")
	if !ok || a != "0" || z == "" || len(z) > 19 || strings.TrimLeft(z, "0123456789") != "" {
		return 0, fmt.Errorf("malformed upload Range %q", s)
	}
	last, err := strconv.ParseInt(z, 10, 64)
	if err != nil || last == 1<<63-1 {
		return 0, fmt.Errorf("malformed upload Range %q", s)
	}
	return last, nil
}

// heldBytes is how many bytes a session whose Range states last holds.
// "0-0" is taken as none: distribution writes it for an empty session,
// and a session holding one byte only happens after a one-byte chunk.
func heldBytes(last int64) int64 {
	if last <= 0 {
		return 0
	}
	return last + 1
}

// parseChunkMinLength reads OCI-Chunk-Min-Length: a positive byte count
// (at most 1 GiB: a larger minimum is refused rather than buffered).
func parseChunkMinLength(s string) (int64, error) {
	v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || v < 0 || v > 1<<30 {
		return 0, fmt.Errorf("registry's OCI-Chunk-Min-Length %q is not a size up to 1 GiB", s)
	}
	return v, nil
}

// answerError turns an unexpected answer into an error with its status
// and the registry's error codes, without the query (the session state)
// or any header.
func answerError(resp *http.Response) error {
	u := *resp.Request.URL
	u.RawQuery, u.User = "", nil
	er := &errcode.ErrorResponse{Method: resp.Request.Method, URL: &u, StatusCode: resp.StatusCode}
	var body struct {
		Errors errcode.Errors `json:"errors"`
	}
	if b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<10)); err == nil {
		if jsonErr := json.Unmarshal(b, &body); jsonErr == nil {
			er.Errors = body.Errors
		}
	}
	return er
}

// drain reads a little of an answer's body and closes it, so that the
// connection is reused.
func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// uploads is the upload mode of one push (one registry), shared by its
// blobs: monolithic until a 413, then chunked.
type uploads struct {
	chunk   atomic.Int64 // the chunk size after a 413; 0: monolithic
	chunked atomic.Int32 // blobs uploaded in chunks
}

// send uploads d's bytes (content opens them; each call starts the blob's
// progress again): in chunks when PushOptions.ChunkSize is set or an
// earlier blob of this push was answered 413, else monolithically, and
// then in chunks if that is answered 413.
func (p *pusher) send(ctx context.Context, d ocispec.Descriptor, content func() (io.ReadCloser, error)) error {
	if p.t.Repo == nil { // a layout
		rc, err := content()
		if err != nil {
			return err
		}
		return p.t.Push(ctx, d, rc)
	}
	started := false // d's progress is started (content was called)
	restart := func(why error) {
		if started && p.opts.Progress != nil {
			p.opts.Progress.Done(shortName(d.Digest.String()), why)
		}
		started = true
	}
	if p.opts.ChunkSize <= 0 && p.up.chunk.Load() == 0 {
		rc, err := content()
		if err != nil {
			return err
		}
		started = true
		body := &detachable{r: rc}
		err = p.t.Push(ctx, d, body)
		if !isTooLarge(err) {
			return err
		}
		// The transport may still be reading the refused body: stop
		// it before the blob's progress ends.
		p.moved.Add(-body.detach()) // the registry took none of it
		rc.Close()
		restart(err)
		started = false
		p.up.chunk.CompareAndSwap(0, DefaultChunkSize)
	}
	open := func() (io.ReadCloser, error) {
		restart(errUploadRestart)
		return content()
	}
	size := func() int64 {
		if p.opts.ChunkSize > 0 {
			return p.opts.ChunkSize
		}
		return p.up.chunk.Load()
	}
	shrink := func(n int64) bool {
		if p.opts.ChunkSize > 0 {
			return false
		}
		for {
			cur := p.up.chunk.Load()
			if cur < n {
				return true // another blob shrank it already
			}
			if n <= MinChunkSize {
				return false
			}
			next := max(n/2, MinChunkSize)
			if p.up.chunk.CompareAndSwap(cur, next) {
				return true
			}
		}
	}
	if err := uploadChunked(ctx, p.t.Repo, d, open, size, shrink); err != nil {
		return err
	}
	p.up.chunked.Add(1)
	return nil
}

// detachable reads from r until detached; reads then fail. detach waits
// for a read in progress.
type detachable struct {
	mu       sync.Mutex
	r        io.Reader
	n        int64 // bytes read
	detached bool
}

func (d *detachable) Read(b []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.detached {
		return 0, errUploadRestart
	}
	n, err := d.r.Read(b)
	d.n += int64(n)
	return n, err
}

// detach stops reads and returns how many bytes were read.
func (d *detachable) detach() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.detached = true
	return d.n
}
