package repo

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// fetchBlob downloads blob d of t into the store, resumably:
//
//  1. Lock Root/partial/<hex>.part (openPartial): a concurrent pull of the
//     same blob waits, then finds it in the store.
//  2. Hash the bytes the file already holds (an interrupted pull's) and
//     ask for the rest with a range request; a source that ignores ranges
//     sends the whole blob and the file starts over.
//  3. Check size and sha256 of the whole file, then adopt it into the
//     store (fsync, rename).
//
// A transfer cut by the network keeps the partial file and fails. A file
// that fails its check is discarded: when it had resumed bytes (which a
// crash may have damaged) the download starts over once from zero, as it
// does, from the origin only, when a mirror may have served it; else the
// error wraps ErrDigestMismatch and the store is unchanged.
//
// A large blob from a registry downloads in segments over several range
// requests at once (oci_fetch_ranges.go, o), resuming segment by segment.
func (s *Store) fetchBlob(ctx context.Context, t *Target, d ocispec.Descriptor, o rangeOptions, p Progress) (lp LayerPull, err error) {
	dg := d.Digest.String()
	lp = LayerPull{Digest: dg, Size: d.Size}
	f, err := s.openPartial(ctx, dg)
	if err != nil {
		return lp, err
	}
	if f == nil {
		lp.Present = true // another pull completed it while we waited
		return lp, nil
	}
	defer f.Close()
	name := shortName(dg)
	for attempt := 0; ; attempt++ {
		if p != nil {
			p.Start(name, d.Size)
		}
		resumed, fetched, err := download(ctx, t, d, f, o.withDefaults(), p, name)
		if p != nil {
			p.Done(name, err)
		}
		lp.Fetched += fetched
		if attempt == 0 {
			lp.Resumed = resumed
		}
		if err == nil {
			err = s.adoptPartial(f, dg)
			os.Remove(segsPath(f.Name()))
			return lp, err
		}
		if !errors.Is(err, ErrDigestMismatch) { // cut by the network
			f.Sync() // keep what arrived for the next pull
			return lp, err
		}
		if attempt > 0 || resumed == 0 && t.mirrors == nil {
			os.Remove(f.Name())
			os.Remove(segsPath(f.Name()))
			return lp, err
		}
		if t.mirrors != nil { // a mirror may have served the bad bytes
			ctx = withoutMirrors(ctx)
		}
		if err := f.Truncate(0); err != nil { // the kept prefix was bad: start over
			return lp, fmt.Errorf("content store: %w", err)
		}
		lp.Resumed = 0
	}
}

// download completes partial file f with blob d from t. It returns the
// bytes reused from f and the bytes received.
func download(ctx context.Context, t *Target, d ocispec.Descriptor, f *os.File, o rangeOptions, p Progress, name string) (have, n int64, err error) {
	if o.ranged(t, d, f.Name()) {
		return downloadRanges(ctx, t, d, f, o, p, name)
	}
	if os.Remove(segsPath(f.Name())) == nil { // begun in segments: not a prefix
		if err := f.Truncate(0); err != nil {
			return 0, 0, fmt.Errorf("content store: %w", err)
		}
	}
	dg := d.Digest.String()
	h := sha256.New()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, 0, err
	}
	if have, err = io.Copy(h, f); err != nil {
		return 0, 0, fmt.Errorf("content store: read partial %s: %w", dg, err)
	}
	if have > d.Size { // not this blob's prefix
		have = 0
		h.Reset()
	}
	rc, from, err := openBlobAt(ctx, t, d, have)
	if err != nil {
		return 0, 0, fmt.Errorf("fetch %s from %s: %w", dg, t.Ref, err)
	}
	defer rc.Close()
	if from != have { // the source sent the whole blob
		have = 0
		h.Reset()
	}
	if err := f.Truncate(have); err != nil {
		return 0, 0, fmt.Errorf("content store: %w", err)
	}
	if _, err := f.Seek(have, io.SeekStart); err != nil {
		return 0, 0, err
	}
	if p != nil && have > 0 {
		p.Add(name, have)
	}
	var moved atomic.Int64
	cr := &countingReader{r: io.LimitReader(rc, d.Size-have+1), n: &moved, name: name, p: p}
	_, err = io.CopyBuffer(io.MultiWriter(f, h), cr, make([]byte, 256<<10))
	n = moved.Load()
	if err != nil {
		return have, n, fmt.Errorf("fetch %s from %s (%d of %d bytes kept for resume): %w", dg, t.Ref, have+n, d.Size, err)
	}
	if have+n != d.Size {
		return have, n, fmt.Errorf("blob %s from %s has %d bytes, the manifest says %d: %w", dg, t.Ref, have+n, d.Size, ErrDigestMismatch)
	}
	if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); got != dg {
		return have, n, fmt.Errorf("blob from %s hashes to %s, want %s: %w", t.Ref, got, dg, ErrDigestMismatch)
	}
	return have, n, nil
}

// openBlobAt opens blob d of t to read from offset off, and says where
// the returned stream starts: off, or 0 when the source cannot seek.
func openBlobAt(ctx context.Context, t *Target, d ocispec.Descriptor, off int64) (io.ReadCloser, int64, error) {
	switch {
	case off >= d.Size:
		return io.NopCloser(strings.NewReader("")), off, nil
	case t.Repo != nil:
		return blobGet(ctx, t.Repo, d, off)
	}
	rc, err := t.Fetch(ctx, d)
	if err != nil || off == 0 {
		return rc, 0, err
	}
	if sk, ok := rc.(io.Seeker); ok {
		if _, err := sk.Seek(off, io.SeekStart); err == nil {
			return rc, off, nil
		}
	}
	rc.Close()
	rc, err = t.Fetch(ctx, d)
	return rc, 0, err
}

// blobGet asks a registry for blob d from offset off with one request
// (GET /v2/<repo>/blobs/<digest>, with Range: bytes=off- when off > 0),
// through the repository's authenticating client. A registry that ignores
// the range answers 200 with the whole blob, which the caller takes from
// 0. A length other than the descriptor's is an error wrapping
// ErrDigestMismatch.
func blobGet(ctx context.Context, repo *remote.Repository, d ocispec.Descriptor, off int64) (io.ReadCloser, int64, error) {
	req, err := blobRequest(ctx, repo, d.Digest.String())
	if err != nil {
		return nil, 0, err
	}
	if off > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, d.Size-1))
	}
	var client remote.Client = auth.DefaultClient
	if repo.Client != nil {
		client = repo.Client
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	from := int64(0)
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusPartialContent:
		if cr := resp.Header.Get("Content-Range"); off == 0 || !strings.HasPrefix(cr, fmt.Sprintf("bytes %d-", off)) {
			resp.Body.Close()
			return nil, 0, fmt.Errorf("range request from %d answered with Content-Range %q", off, cr)
		}
		from = off
	case http.StatusNotFound:
		resp.Body.Close()
		return nil, 0, fmt.Errorf("%s: %w", d.Digest, errdef.ErrNotFound)
	default:
		resp.Body.Close()
		return nil, 0, fmt.Errorf("registry answered %s", resp.Status)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != d.Size-from {
		resp.Body.Close()
		return nil, 0, fmt.Errorf("registry sends %d bytes from offset %d of a blob the manifest says has %d: %w",
			resp.ContentLength, from, d.Size, ErrDigestMismatch)
	}
	return resp.Body, from, nil
}

// blobRequest is a GET of blob dg of repo (GET /v2/<name>/blobs/<dg>)
// with the repository's pull scope in its context, for the repository's
// authenticating client.
func blobRequest(ctx context.Context, repo *remote.Repository, dg string) (*http.Request, error) {
	ref := repo.Reference
	ref.Reference = dg
	ctx = auth.AppendRepositoryScope(ctx, ref, auth.ActionPull)
	scheme := "https"
	if repo.PlainHTTP {
		scheme = "http"
	}
	url := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", scheme, ref.Host(), ref.Repository, dg)
	return http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
}
