package repo

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// RegistryRanges fetches byte ranges of blobs from a registry repository
// with HTTP range requests (GET /v2/<repo>/blobs/<digest>, Range: bytes=a-b),
// through the repository's authenticating client.
type RegistryRanges struct {
	Repo *remote.Repository
}

// FetchRange implements RangeFetcher.
func (r RegistryRanges) FetchRange(ctx context.Context, digest string, off, n int64) ([]byte, error) {
	if err := ValidateDigest(digest); err != nil {
		return nil, err
	}
	if off < 0 || n <= 0 {
		return nil, fmt.Errorf("range [%d,+%d) is invalid", off, n)
	}
	ref := r.Repo.Reference
	ref.Reference = digest
	ctx = auth.AppendRepositoryScope(ctx, ref, auth.ActionPull)
	scheme := "https"
	if r.Repo.PlainHTTP {
		scheme = "http"
	}
	url := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", scheme, ref.Host(), ref.Repository, digest)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	var client remote.Client = auth.DefaultClient
	if r.Repo.Client != nil {
		client = r.Repo.Client
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body := io.Reader(resp.Body)
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusOK:
		// The server ignored the range: skip to it (correct, not cheap).
		if _, err := io.CopyN(io.Discard, body, off); err != nil {
			return nil, fmt.Errorf("blob %s: %w", digest, err)
		}
	default:
		return nil, fmt.Errorf("blob %s range [%d,+%d): registry answered %s", digest, off, n, resp.Status)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(body, buf); err != nil {
		return nil, fmt.Errorf("blob %s range [%d,+%d): %w", digest, off, n, err)
	}
	return buf, nil
}
