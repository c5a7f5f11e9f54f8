package repo

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
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
// fails the push) for the rest of the push. The size settled on is kept
// for the registry, and later pushes start with it (upload_record.go). A
// chunk size the user set is kept: a 413 then fails the push with
// ErrChunkTooLarge.

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
	records := ""
	if p.store != nil {
		records = p.store.UploadsDir()
	}
	// A blob whose chunked upload a push left goes on in chunks.
	if p.opts.ChunkSize <= 0 && p.up.chunk.Load() == 0 && !hasUploadRecord(records, recordKey(p.t.Repo, d)) {
		rc, err := content()
		if err != nil {
			return err
		}
		started = true
		body := &detachable{r: rc}
		err = p.t.Push(ctx, d, body)
		if IsUnauthorized(err) {
			// oras-go gives the PUT the POST's token and does not
			// authenticate it again: a token that expired between them
			// fails the upload. Once more, reopened.
			p.moved.Add(-body.detach()) // sent again
			rc.Close()
			restart(err)
			if rc, err = content(); err != nil {
				return err
			}
			body = &detachable{r: rc}
			err = p.t.Push(ctx, d, body)
		}
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
		if c := p.up.chunk.Load(); c > 0 {
			return c
		}
		return DefaultChunkSize // a recorded upload resumed in a monolithic push
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
	resumed := func(n int64) { // read past in the source: not sent
		p.moved.Add(-n)
		p.skipped.Add(n)
		p.resumed.Add(n)
	}
	if err := uploadChunked(ctx, p.t.Repo, d, open, size, shrink, records, resumed); err != nil {
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
