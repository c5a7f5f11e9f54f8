package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

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

	records string        // where sessions are recorded (upload_record.go); "": not
	rec     *uploadRecord // this upload's record, nil when not recorded
	// resumed, when set, is told how many bytes a recorded session
	// already held (read past in the source, not sent).
	resumed func(n int64)
	// skipOnce, when > 0, makes the next PATCH claim an offset this many
	// bytes too far once (tests force an out-of-order PATCH with it).
	skipOnce int64
}

// uploadChunked uploads blob d to repo r in chunks, its session recorded
// under records ("": not) so that a later push resumes it, resumed told
// the bytes a resumed session held.
func uploadChunked(ctx context.Context, r *remote.Repository, d ocispec.Descriptor, open func() (io.ReadCloser, error),
	size func() int64, shrink func(int64) bool, records string, resumed func(int64)) error {
	u, err := newChunkUpload(r, d, open, size, shrink)
	if err != nil {
		return err
	}
	u.records, u.resumed = records, resumed
	return u.run(ctx)
}

// recordKey names d's upload to r among the records.
func recordKey(r *remote.Repository, d ocispec.Descriptor) string {
	return r.Reference.Registry + "/" + r.Reference.Repository + "@" + d.Digest.String()
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

// run opens a session (or resumes the recorded one), sends every chunk,
// and closes the session with the digest. A failed upload's session is
// cancelled (best effort) and its record removed, unless the upload ended
// with its context: a recorded session then stays for the next push.
func (u *chunkUpload) run(ctx context.Context) error {
	ctx = auth.AppendRepositoryScope(ctx, u.repo.Reference, auth.ActionPull, auth.ActionPush)
	defer u.closeSource()
	rec, saved, err := openUploadRecord(u.records, recordKey(u.repo, u.d))
	if err != nil {
		return err
	}
	u.rec = rec
	defer u.rec.close()
	if saved == "" || !u.resume(ctx, saved) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := u.start(ctx); err != nil {
			return err
		}
	}
	if err := u.sendAll(ctx); err != nil {
		if ctx.Err() == nil || u.rec == nil {
			u.cancel(ctx)
			u.rec.remove()
		}
		return err
	}
	u.rec.remove()
	return nil
}

// resume continues the session recorded at loc: it asks the registry how
// much the session holds and goes on from there. It reports false (start
// a new session) when the location is not the registry's or the registry
// no longer knows the session.
func (u *chunkUpload) resume(ctx context.Context, loc string) bool {
	l, err := resolveLocation(u.reg, u.reg, loc)
	if err != nil {
		return false
	}
	u.loc = l
	if err := u.resync(ctx); err != nil {
		u.loc = nil
		return false
	}
	if u.resumed != nil && u.off > 0 {
		u.resumed(u.off)
	}
	return true
}

// note records the session's current location (after it changed).
func (u *chunkUpload) note() error {
	if u.rec == nil {
		return nil
	}
	return u.rec.save(recordKey(u.repo, u.d), u.loc.String())
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
	return u.note()
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
	if err := u.note(); err != nil {
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
	if err := u.note(); err != nil {
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
