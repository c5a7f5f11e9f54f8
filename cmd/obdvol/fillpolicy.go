package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"oras.land/oras-go/v2/registry/remote"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
)

// Background fill policies of a lazy pull (pull --fill). A full fill of
// every host of a fleet right after its lazy pull multiplies the origin
// registry's egress by the fleet's size, and a delay only spreads it. A
// fill from mirrors, once each mirror has stored the layers (warmMirrors),
// costs the origin about one copy of the snapshot whatever the fleet's
// size (docs/fleet.md has the figures of make bench-fleet). So the
// default is mirror-only: with a mirror the volume is completed from it;
// without one nothing is filled, a lazy volume fetches what it reads and is
// completed only when asked (obdvol fill, pull --wait, --fill=now).
const (
	fillNone       = "none"        // reads fetch on demand; obdvol fill completes the volume
	fillNow        = "now"         // fill at once from the origin (the default before issue 11)
	fillDelayed    = "delayed"     // fill from the origin after --fill-delay plus a random part of --fill-jitter
	fillMirrorOnly = "mirror-only" // fill from the configured mirrors, never from the origin

	defaultFillPolicy = fillMirrorOnly
)

// parseFillPolicy accepts a policy name, and the old boolean values of
// --fill (true: now, false: none).
func parseFillPolicy(s string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", fillNone, "false", "0", "no", "off":
		return fillNone, nil
	case fillNow, "true", "1", "yes", "on":
		return fillNow, nil
	case fillDelayed:
		return fillDelayed, nil
	case fillMirrorOnly:
		return fillMirrorOnly, nil
	}
	return "", usagef("--fill %q: want none, now, delayed or mirror-only", s)
}

// fillPlan is what a lazy pull's background fill will do.
type fillPlan struct {
	Policy  string
	Delay   time.Duration // before the first byte is fetched
	Mirrors []string      // mirror-only: the only places fetched from
	// MirrorsOnly: mirror-only with the mirrors of the registry's
	// hosts.toml (no --mirror, no OBDVOL_MIRRORS): fill --mirrors-only.
	MirrorsOnly bool
	Skipped     string // why no fill starts, when none does
}

// planFill turns the pull's fill flags into a plan. A delayed fill waits
// delay plus a uniformly random part of jitter, so that a fleet pulled at
// once does not fill at once; a mirror-only fill does too when the flags
// are given (their defaults are for delayed), so that the first hosts warm
// the mirror before the rest ask it. mirrors are those configured for the
// pulled registry (repo.Target.MirrorHosts: flags, environment and
// hosts.toml).
func planFill(o *pullOptions, mirrors []string) (fillPlan, error) {
	policy, err := parseFillPolicy(o.Fill)
	if err != nil {
		return fillPlan{}, err
	}
	p := fillPlan{Policy: policy}
	if o.fillTimesSet && policy != fillDelayed && policy != fillMirrorOnly {
		return p, usagef("--fill-delay and --fill-jitter need --fill=delayed or --fill=mirror-only")
	}
	if o.FillDelay < 0 || o.FillJitter < 0 {
		return p, usagef("--fill-delay and --fill-jitter must not be negative")
	}
	switch policy {
	case fillNone:
		p.Skipped = "fill policy none"
	case fillDelayed:
		p.Delay = o.FillDelay
		if o.FillJitter > 0 {
			p.Delay += rand.N(o.FillJitter)
		}
	case fillMirrorOnly:
		if o.fillTimesSet {
			p.Delay = o.FillDelay
			if o.FillJitter > 0 {
				p.Delay += rand.N(o.FillJitter)
			}
		}
		if p.Mirrors, err = fillMirrors(o.Mirror); err != nil {
			return p, err
		}
		if len(p.Mirrors) == 0 {
			if len(mirrors) > 0 {
				p.MirrorsOnly = true // the mirrors of hosts.toml
			} else {
				p.Skipped = "fill policy mirror-only and no mirror configured"
			}
		}
	}
	return p, nil
}

// fillMirrors is the mirror list a mirror-only fill may fetch from: the
// pull's --mirror flags, else OBDVOL_MIRRORS (without either, the fill
// uses the registry's hosts.toml mirrors: fill --mirrors-only).
func fillMirrors(m mirrorFlags) ([]string, error) {
	list := m.Mirrors
	if list == nil {
		var err error
		if list, err = repo.ParseMirrorList(os.Getenv(repo.EnvMirrors)); err != nil {
			return nil, usagef("%s: %v", repo.EnvMirrors, err)
		}
	}
	for _, u := range list {
		if _, _, err := parseMirror(u); err != nil {
			return nil, usageError{err}
		}
	}
	return list, nil
}

// parseMirror splits a mirror URL into its host[:port] and whether it is
// plain HTTP. A bare host means https. A mirror-only fill asks the mirror
// at its root (/v2/<repository>/...), so a mirror with a path of its own
// is refused here.
func parseMirror(m string) (host string, plain bool, err error) {
	u, err := repo.ParseEndpointURL(m, false)
	if err != nil {
		return "", false, fmt.Errorf("mirror %q: want http(s)://host[:port]: %w", m, err)
	}
	if u.Path != "/v2" {
		return "", false, fmt.Errorf("mirror %q: want http(s)://host[:port]: a mirror-only fill asks a mirror at its root, not under a path", m)
	}
	return u.Host, u.Scheme == "http", nil
}

// mirrorRanges fetches a blob's ranges from mirrors only, in order: the
// first that answers wins. It never falls back to the origin; every byte
// is still checked against its chunk checksums and the blob's digest.
type mirrorRanges []repo.RangeFetcher

func (m mirrorRanges) FetchRange(ctx context.Context, digest string, off, n int64) ([]byte, error) {
	var errs []string
	for _, f := range m {
		b, err := f.FetchRange(ctx, digest, off, n)
		if err == nil {
			return b, nil
		}
		errs = append(errs, err.Error())
	}
	return nil, fmt.Errorf("no mirror served blob %s range [%d,+%d): %s: %w", digest, off, n, strings.Join(errs, "; "), repo.ErrUnavailable)
}

// mirrorLayer is a lazy layer and where a mirror-only fill looks for it.
type mirrorLayer struct {
	digest string
	repos  []*remote.Repository // one per mirror, in order
}

// missingLayers are the catalogue records of the layers of vol's chain
// that the store lacks (lazy: remote or partly fetched).
func missingLayers(e *env, vol string) ([]*metadata.Layer, error) {
	rec, err := volumeRecord(e, vol)
	if err != nil {
		return nil, err
	}
	var out []*metadata.Layer
	for _, d := range rec.Layers {
		if e.store.Has(d) {
			continue
		}
		var l *metadata.Layer
		if err := e.cat.View(func(tx *metadata.Tx) (err error) { l, err = tx.Layer(d); return }); err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, nil
}

// useMirrorsOnly makes every lazy layer of vol's chain fetch from the
// mirrors only in this process (a mirror-only fill): the repository is the
// one the layer was pulled from, on the mirror's host. A layer with no
// registry origin is an error. It returns the layers, for warmMirrors.
func useMirrorsOnly(e *env, vol string, mirrors []string) ([]mirrorLayer, error) {
	layers, err := missingLayers(e, vol)
	if err != nil {
		return nil, err
	}
	var out []mirrorLayer
	for _, l := range layers {
		d := l.Digest
		var fs mirrorRanges
		ml := mirrorLayer{digest: d}
		for _, o := range l.Origins {
			o = strings.TrimPrefix(o, "http://")
			if strings.HasPrefix(o, "oci:") {
				continue
			}
			r, err := repo.ParseRef(o + "@" + d)
			if err != nil {
				continue
			}
			for _, m := range mirrors {
				host, plain, err := parseMirror(m)
				if err != nil {
					return nil, usageError{err}
				}
				// The mirror itself, with no mirrors of its own (not those
				// of the environment either): nothing falls back to the origin.
				t, err := openTarget(host+"/"+r.Remote.Repository+"@"+d, &transferFlags{PlainHTTP: plain, Mirror: mirrorFlags{Mirrors: []string{}}})
				if err != nil || t.Repo == nil {
					return nil, fmt.Errorf("mirror %s for layer %s: %v", m, d, err)
				}
				fs = append(fs, repo.RegistryRanges{Repo: t.Repo})
				ml.repos = append(ml.repos, t.Repo)
			}
			break
		}
		if len(fs) == 0 {
			return nil, fmt.Errorf("layer %s has no registry origin to look up on a mirror", d)
		}
		e.pending[d] = pendingLayer{fetch: fs, size: int64(l.StoredBytes)}
		out = append(out, ml)
	}
	return out, nil
}

// warmMirrors waits, for each layer, until its first mirror serves it from
// its own storage, at most wait in all (repo.WaitMirrorCached: a fill's many
// range requests to a cold pull-through mirror would cost the origin many
// times the blob; make bench-fleet: 46x for 32 hosts). A mirror that never
// does is used anyway once wait is over.
func warmMirrors(ctx context.Context, out io.Writer, g *globalOptions, vol string, layers []mirrorLayer, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for _, l := range layers {
		if len(l.repos) == 0 {
			continue
		}
		r := l.repos[0]
		log := warmLog(out, g, vol, l.digest)
		err := repo.WaitMirrorCached(ctx, r, l.digest, deadline, func(s repo.WarmState, err error) { log(r.Reference.Host(), s, err) })
		if err != nil {
			return err
		}
	}
	return nil
}

// warmLog says in the fill log how the warm-up of layer d goes.
func warmLog(out io.Writer, g *globalOptions, vol, d string) func(host string, s repo.WarmState, err error) {
	return func(host string, s repo.WarmState, err error) {
		switch s {
		case repo.WarmCached:
			logf(out, g, "fill %s: mirror %s has layer %s now", vol, host, d)
		case repo.WarmGaveUp:
			logf(out, g, "fill %s: mirror %s still does not serve layer %s from its storage (%v); filling anyway", vol, host, d, err)
		case repo.WarmFetching:
			logf(out, g, "fill %s: mirror %s is fetching layer %s from its upstream (%v); waiting for it", vol, host, d, err)
		}
	}
}

// warmConfiguredMirrors waits, for each lazy layer of vol's chain, until
// the first configured mirror of its registry serves it from its storage
// (repo.Target.WarmMirror), at most wait in all: a fill --mirrors-only's
// warm-up (see warmMirrors). A layer with no registry origin, or whose
// registry has no mirror, is an error: nothing would fill it.
func warmConfiguredMirrors(ctx context.Context, out io.Writer, g *globalOptions, e *env, vol string, wait time.Duration) error {
	layers, err := missingLayers(e, vol)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(wait)
	for _, l := range layers {
		d := l.Digest
		var t *repo.Target
		for _, org := range l.Origins {
			if o := strings.TrimPrefix(org, "http://"); !strings.HasPrefix(o, "oci:") {
				if t, err = openTarget(o+"@"+d, &transferFlags{PlainHTTP: o != org, Mirror: e.mirror, MirrorsOnly: true}); err != nil {
					return fmt.Errorf("layer %s: %w", d, err)
				}
				break
			}
		}
		if t == nil {
			return fmt.Errorf("layer %s has no registry origin to look up on a mirror", d)
		}
		if err := t.WarmMirror(ctx, d, deadline, warmLog(out, g, vol, d)); err != nil {
			return err
		}
	}
	return nil
}

// fillArgs are the arguments of the detached `obdvol fill` a plan starts.
func (p fillPlan) fillArgs(vol, rate string) []string {
	args := []string{"fill", vol, "--rate", rate}
	if p.Delay > 0 {
		args = append(args, "--delay", p.Delay.String())
	}
	for _, m := range p.Mirrors {
		args = append(args, "--only-from", m)
	}
	if p.MirrorsOnly {
		args = append(args, "--mirrors-only")
	}
	return args
}
