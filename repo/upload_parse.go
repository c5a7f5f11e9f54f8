package repo

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"oras.land/oras-go/v2/registry/remote/errcode"
)

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
