package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// ErrBadRange is wrapped when a registry answers a range request with
// bytes other than those asked for (a Content-Range or length that does
// not match the request).
var ErrBadRange = errors.New("registry answered with another range")

// RegistryRanges fetches byte ranges of blobs from a registry repository
// with HTTP range requests (GET /v2/<repo>/blobs/<digest>, Range: bytes=a-b),
// through the repository's authenticating client.
type RegistryRanges struct {
	Repo *remote.Repository
}

// FetchRange implements RangeFetcher.
func (r RegistryRanges) FetchRange(ctx context.Context, digest string, off, n int64) ([]byte, error) {
	b, _, err := r.fetchRangeTotal(ctx, digest, off, n)
	return b, err
}

// fetchRangeTotal fetches [off, off+n) and returns the blob's total size
// as the registry states it (the Content-Range total, or the length of a
// whole-blob answer), or -1.
//
// A 206 answer must carry Content-Range "bytes off-(off+n-1)/total" (total
// may be "*") and, when it states one, a Content-Length of n; anything
// else is an error wrapping ErrBadRange. A registry that ignores Range
// answers 200 with the whole blob: the range is taken from it (correct,
// not cheap; lazy blobs use fetchRangeOrWhole, which keeps it all), and
// one too short for it is an error wrapping ErrBadRange, as
// is a 416 (the range is past the blob's end; its total is returned).
func (r RegistryRanges) fetchRangeTotal(ctx context.Context, digest string, off, n int64) ([]byte, int64, error) {
	if err := ValidateDigest(digest); err != nil {
		return nil, -1, err
	}
	if off < 0 || n <= 0 || n > maxFetchSpan || off > maxLazySize {
		return nil, -1, fmt.Errorf("range [%d,+%d) is invalid", off, n)
	}
	b, total, err := r.requestRange(ctx, digest, off, n, nil)
	observeRange(r.Repo.Reference.Host(), int64(len(b)), err) // the host only: no URL, no credentials
	return b, total, err
}

// wholeSink takes a registry's whole-blob answer (body, and its length or
// -1) in place of a range, and stores it (lazy_whole.go). The body is the
// sink's to close, possibly after it returned.
type wholeSink func(body io.ReadCloser, total int64) error

// errWholeLanded is returned by fetchRangeOrWhole when the registry
// ignored the range and its whole-blob answer went to the sink.
var errWholeLanded = errors.New("the registry sent the whole blob, which was stored")

// fetchRangeOrWhole is fetchRangeTotal, except that a whole-blob answer
// (the registry ignored Range) is handed to sink rather than read up to
// the range: it returns sink's error, or errWholeLanded.
func (r RegistryRanges) fetchRangeOrWhole(ctx context.Context, digest string, off, n int64, sink wholeSink) ([]byte, int64, error) {
	if err := ValidateDigest(digest); err != nil {
		return nil, -1, err
	}
	if off < 0 || n <= 0 || n > maxFetchSpan || off > maxLazySize {
		return nil, -1, fmt.Errorf("range [%d,+%d) is invalid", off, n)
	}
	b, total, err := r.requestRange(ctx, digest, off, n, sink)
	if errors.Is(err, errWholeLanded) { // a whole blob delivered
		observeRange(r.Repo.Reference.Host(), max(total, 0), nil)
	} else {
		observeRange(r.Repo.Reference.Host(), int64(len(b)), err)
	}
	return b, total, err
}

// rangeIgnoredFor is how long a host that answered a range request with
// the whole blob is assumed to keep doing so. Not for ever: Harbor's
// proxy-cache ignores Range only while the blob is not cached yet.
const rangeIgnoredFor = 10 * time.Minute

// rangeIgnoredHosts maps a registry host to when it last ignored a Range
// header (this process's memory, shared by every blob of the host).
var rangeIgnoredHosts sync.Map

// rangeIgnored reports whether the host recently answered a range request
// with the whole blob (and has not honoured one since).
func (r RegistryRanges) rangeIgnored() bool {
	v, ok := rangeIgnoredHosts.Load(r.Repo.Reference.Host())
	return ok && time.Since(v.(time.Time)) < rangeIgnoredFor
}

// requestRange sends one range request for [off, off+n) of a valid digest
// and checks the answer (see fetchRangeTotal). With a sink, a whole-blob
// answer goes to it (see fetchRangeOrWhole).
func (r RegistryRanges) requestRange(ctx context.Context, digest string, off, n int64, sink wholeSink) ([]byte, int64, error) {
	ref := r.Repo.Reference
	req, err := blobRequest(ctx, r.Repo, digest)
	if err != nil {
		return nil, -1, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	var client remote.Client = auth.DefaultClient
	if r.Repo.Client != nil {
		client = r.Repo.Client
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, -1, err
	}
	handed := false // to a sink
	defer func() {
		if !handed {
			resp.Body.Close()
		}
	}()
	body := io.Reader(resp.Body)
	total := int64(-1)
	switch {
	case resp.StatusCode == http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		start, end, tot, err := parseContentRange(cr)
		if err != nil || start != off || end != off+n-1 {
			return nil, -1, fmt.Errorf("blob %s: asked for bytes=%d-%d, the registry answered 206 with Content-Range %q "+
				"(it or a proxy in front of it serves other bytes than asked): %w", digest, off, off+n-1, cr, ErrBadRange)
		}
		if resp.ContentLength >= 0 && resp.ContentLength != n {
			return nil, -1, fmt.Errorf("blob %s: asked for bytes=%d-%d, the registry answered 206 with Content-Length %d: %w",
				digest, off, off+n-1, resp.ContentLength, ErrBadRange)
		}
		rangeIgnoredHosts.Delete(ref.Host()) // it honours Range (again)
		total = tot
	case resp.StatusCode == http.StatusOK:
		// The server ignored the range and sends the whole blob.
		total = resp.ContentLength
		rangeIgnoredHosts.Store(ref.Host(), time.Now())
		if sink != nil {
			handed = true
			if err := sink(resp.Body, total); err != nil {
				return nil, total, err
			}
			return nil, total, errWholeLanded
		}
		if total >= 0 && total < off+n {
			return nil, total, fmt.Errorf("blob %s range [%d,+%d): whole-blob answer of %d bytes: %w", digest, off, n, total, ErrBadRange)
		}
		if _, err := io.CopyN(io.Discard, body, off); err != nil {
			return nil, total, fmt.Errorf("blob %s range [%d,+%d): %w", digest, off, n, err)
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		// "bytes */<total>": the blob is shorter than the range.
		if t, ok := strings.CutPrefix(resp.Header.Get("Content-Range"), "bytes */"); ok {
			if _, _, v, err := parseContentRange("bytes 0-0/" + t); err == nil {
				total = v
			}
		}
		return nil, total, fmt.Errorf("blob %s range [%d,+%d): registry answered %s (blob of %d bytes): %w",
			digest, off, n, resp.Status, total, ErrBadRange)
	case resp.StatusCode == http.StatusUnauthorized: // after re-authenticating once (auth.Client)
		return nil, -1, fmt.Errorf("blob %s range [%d,+%d): registry answered %s: %w", digest, off, n, resp.Status, ErrUnauthorized)
	default:
		return nil, -1, fmt.Errorf("blob %s range [%d,+%d): registry answered %s", digest, off, n, resp.Status)
	}
	buf := make([]byte, n)
	if m, err := io.ReadFull(body, buf); err != nil { // cut by the network (or a short body): retried
		return nil, total, fmt.Errorf("blob %s range [%d,+%d): the answer ended after %d of %d bytes "+
			"(a cut connection, or a registry sending short bodies): %w", digest, off, n, m, n, err)
	}
	return buf, total, nil
}

// parseContentRange parses an HTTP Content-Range of a satisfied range,
// "bytes <first>-<last>/<total>" (RFC 9110 14.4), total "*" when unknown
// (returned as -1). It checks first <= last < total.
func parseContentRange(s string) (first, last, total int64, err error) {
	bad := func() (int64, int64, int64, error) {
		return 0, 0, 0, fmt.Errorf("malformed Content-Range %q", s)
	}
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return bad()
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return bad()
	}
	a, z, ok := strings.Cut(rng, "-")
	if !ok {
		return bad()
	}
	num := func(x string) (int64, bool) {
		if x == "" || len(x) > 19 || strings.TrimLeft(x, "0123456789") != "" {
			return 0, false
		}
		v, err := strconv.ParseInt(x, 10, 64)
		return v, err == nil
	}
	if first, ok = num(a); !ok {
		return bad()
	}
	if last, ok = num(z); !ok || last < first {
		return bad()
	}
	total = -1
	if tot != "*" {
		if total, ok = num(tot); !ok || last >= total {
			return bad()
		}
	}
	return first, last, total, nil
}
