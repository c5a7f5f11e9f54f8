package repo

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"time"

	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// Warming a pull-through mirror.
//
// A pull-through mirror (docker-registry in proxy mode, Harbor's
// proxy-cache) that lacks a blob answers a GET with the whole blob, fetched
// from the origin for that request, and fetches it once more into its
// storage; every request for the blob while it stores costs the origin the
// blob again. N hosts asking a cold mirror at once so cost the origin about
// N+1 blobs (make bench-fleet: 33x for 32 hosts pulling eagerly, 46x for
// 32 fills). A one-byte range request that hangs up at once starts the
// mirror's own fetch into its storage, which goes on without us (costing
// the origin the blob about once); the caller then asks again with backoff
// until the mirror answers 206 (from its storage), and only then fetches.

// WarmState is what a warm-up reports to its log.
type WarmState int

const (
	WarmFetching WarmState = iota // the mirror does not store the blob yet: waiting (once, at the first miss)
	WarmCached                    // the mirror serves the blob from its storage now (after a wait)
	WarmGaveUp                    // the wait is over and the mirror still does not: fetching anyway
	WarmSkipped                   // the probe failed (connection, 404, 5xx): the mirror is not warmed
)

// WaitMirrorCached asks repository r (a mirror's) for blob digest until it
// serves it from its storage, or until deadline, asking again with backoff
// (a failed probe too). log, when set, is told each change of state, with
// the last probe's error. Only ctx's end is an error.
func WaitMirrorCached(ctx context.Context, r *remote.Repository, digest string, deadline time.Time, log func(WarmState, error)) error {
	probe := func(ctx context.Context) (bool, error) {
		req, err := blobRequest(ctx, r, digest)
		if err != nil {
			return false, err
		}
		var client remote.Client = auth.DefaultClient
		if r.Client != nil {
			client = r.Client
		}
		return probeCached(client, req)
	}
	return waitCached(ctx, probe, deadline, false, log)
}

// probeCached sends req for the first byte of a blob and hangs up: true
// when the mirror answered from its storage (206), false when it streamed
// the whole blob (200: fetching it from its upstream).
func probeCached(client remote.Client, req *http.Request) (bool, error) {
	req.Header.Set("Range", "bytes=0-0")
	resp, err := client.Do(req)
	if err != nil {
		return false, err
	}
	resp.Body.Close() // unread: the connection is dropped, not drained
	switch resp.StatusCode {
	case http.StatusPartialContent:
		return true, nil
	case http.StatusOK:
		return false, nil
	}
	return false, fmt.Errorf("mirror answered %s", resp.Status)
}

// waitCached probes until it says cached, deadline passes, or (stopOnErr)
// a probe fails.
func waitCached(ctx context.Context, probe func(context.Context) (bool, error), deadline time.Time, stopOnErr bool, log func(WarmState, error)) error {
	if log == nil {
		log = func(WarmState, error) {}
	}
	for pause, asked := time.Second, 0; ; asked++ {
		cached, err := probe(ctx)
		switch {
		case err == nil && cached:
			if asked > 0 {
				log(WarmCached, nil)
			}
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil && stopOnErr:
			log(WarmSkipped, err)
			return nil
		case time.Now().After(deadline):
			log(WarmGaveUp, err)
			return nil
		case asked == 0:
			log(WarmFetching, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause/2 + rand.N(pause)):
		}
		pause = min(2*pause, 30*time.Second)
	}
}

// warmMirror waits, before an eager pull fetches blob dg of t, until the
// first mirror that may serve it (pull capability, not left out) serves it
// from its storage, at most wait (see the notes above). Nothing is done
// without mirrors, for a request that goes to the origin only, or when wait
// is not positive; a probe that fails (connection refused, 404, 5xx) ends
// the warm-up, and the fetch goes on through the routing transport, which
// falls back to the next mirror or the origin.
func (t *Target) warmMirror(ctx context.Context, dg string, wait time.Duration) error {
	if wait <= 0 {
		return nil
	}
	return t.waitMirror(ctx, dg, time.Now().Add(wait), true, nil)
}

// WarmMirror waits until the first mirror of t that may serve blob dg
// (pull capability, not left out) serves it from its storage, or until
// deadline, asking again with backoff (a failed probe too): a mirror-only
// fill's warm-up (TargetOptions.MirrorsOnly). log, when set, is told each
// change of state with the mirror's host and the last probe's error.
// Nothing is done without mirrors. Only ctx's end is an error.
func (t *Target) WarmMirror(ctx context.Context, dg string, deadline time.Time, log func(host string, s WarmState, err error)) error {
	return t.waitMirror(ctx, dg, deadline, false, log)
}

func (t *Target) waitMirror(ctx context.Context, dg string, deadline time.Time, stopOnErr bool, log func(string, WarmState, error)) error {
	if t.mirrors == nil || originOnly(ctx) {
		return nil
	}
	mt := t.mirrors
	for _, m := range mt.mirrors {
		if m.ep.Capabilities&CapPull == 0 || m.down() {
			continue
		}
		rest := t.Ref.Remote.Repository + "/blobs/" + dg
		probe := func(ctx context.Context) (bool, error) {
			ctx = auth.AppendRepositoryScope(ctx, registry.Reference{Registry: m.ep.URL.Host, Repository: t.Ref.Remote.Repository}, auth.ActionPull)
			u := mt.mirrorURL(m, rest)
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
			if err != nil {
				return false, err
			}
			for k, v := range m.ep.Header {
				req.Header[k] = v
			}
			if req.Header.Get("X-Dragonfly-Registry") == "" {
				scheme := "https"
				if t.Repo != nil && t.Repo.PlainHTTP {
					scheme = "http"
				}
				req.Header.Set("X-Dragonfly-Registry", scheme+"://"+mt.apiHost)
			}
			return probeCached(m.client, req)
		}
		var logState func(WarmState, error)
		if log != nil {
			logState = func(s WarmState, err error) { log(m.ep.URL.Host, s, err) }
		}
		return waitCached(ctx, probe, deadline, stopOnErr, logState)
	}
	return nil
}

// mirrorURL is where a request for rest (the path after /v2/) goes on
// mirror m: under the mirror's path, naming the origin (?ns=).
func (t *mirrorTransport) mirrorURL(m *mirror, rest string) url.URL {
	u := m.ep.URL
	u.Path = strings.TrimSuffix(u.Path, "/") + "/" + rest
	u.RawQuery = url.Values{"ns": {t.registry}}.Encode()
	return u
}
