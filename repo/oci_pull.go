package repo

import (
	"context"
	"fmt"
	"time"

	"github.com/obdvol/obdvol/snapshot"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
)

// PullOptions tune a pull.
type PullOptions struct {
	Concurrency int      // blobs in parallel; default 4
	Progress    Progress // nil: silent
	// ManifestOnly fetches the manifest and config but no layers (lazy
	// pulls fetch layers on demand).
	ManifestOnly bool
	// Lease, when set, is called with the layer digests once the manifest
	// and config are checked, before the store is asked whether it has
	// any of them and before any is fetched; an error stops the pull.
	// The caller records a lease there (volume.Manager.Lease), so that gc
	// keeps the layers until the caller references them.
	Lease func(digests []string) error
	// RangeConcurrency is how many range requests one large blob (at
	// least RangeMin bytes, 64 MiB by default) downloads over at once;
	// default 4, 1 for one stream (oci_fetch_ranges.go).
	RangeConcurrency int
	RangeMin         int64
	// MirrorWait bounds, per layer blob (or part), how long a pull with
	// mirrors waits for the first pull-through mirror to store the blob
	// before fetching it (mirror_warm.go): a cold mirror asked by many
	// hosts at once costs the origin a copy per host. 0 means
	// DefaultMirrorWait; negative, no wait.
	MirrorWait time.Duration
}

// DefaultMirrorWait is PullOptions.MirrorWait's default.
const DefaultMirrorWait = 15 * time.Minute

// Pulled is what a pull brought.
type Pulled struct {
	TransferResult
	Config *ChainConfig
	Layers []LayerPull // one per layer of the chain, base first
}

// LayerPull is what a pull did with one layer.
type LayerPull struct {
	Digest  string `json:"digest"`
	Size    int64  `json:"size"`
	Present bool   `json:"present"` // already in the store (or earlier in the chain): nothing fetched
	Resumed int64  `json:"resumed"` // bytes of an interrupted pull's partial file reused
	Fetched int64  `json:"fetched"` // bytes received over the network (a restart counts twice)
}

// Pull fetches the snapshot artifact t names: the manifest and config
// (checked against each other and their digests), then every layer the
// store lacks, several at once (see fetchBlob: resumable, verified, locked
// against concurrent pulls of the same blob). A blob that fails its check
// gives an error wrapping ErrDigestMismatch and stores nothing. Every
// layer's trailer (read from the store, or by a range request for a layer
// ManifestOnly leaves remote) must agree with the config, else the pull
// fails with ErrArtifact and the caller records nothing. Nothing is
// recorded anywhere else: the caller records the volume once Pull
// succeeded, under the lease opts.Lease took. With ManifestOnly, Layers says which layers are present and
// nothing is fetched.
func Pull(ctx context.Context, s *Store, t *Target, opts PullOptions) (*Pulled, error) {
	start := time.Now()
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	if opts.MirrorWait == 0 {
		opts.MirrorWait = DefaultMirrorWait
	}
	mdesc, err := t.Resolve(ctx, t.Ref.Reference)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", t.Ref, err)
	}
	if mdesc.MediaType != ocispec.MediaTypeImageManifest || mdesc.Size > maxManifestBytes {
		return nil, fmt.Errorf("%w: %s is a %s of %d bytes, not an OCI image manifest", ErrArtifact, t.Ref, mdesc.MediaType, mdesc.Size)
	}
	mb, err := fetchAllChecked(ctx, t, mdesc)
	if err != nil {
		return nil, fmt.Errorf("fetch manifest of %s: %w", t.Ref, err)
	}
	m, err := ParseManifest(mb)
	if err != nil {
		return nil, err
	}
	cb, err := fetchAllChecked(ctx, t, m.Config)
	if err != nil {
		return nil, fmt.Errorf("fetch config of %s: %w", t.Ref, err)
	}
	cfg, err := ParseConfig(cb)
	if err != nil {
		return nil, err
	}
	if err := matchLayers(m, cfg); err != nil {
		return nil, err
	}
	if opts.Lease != nil {
		digests := make([]string, len(cfg.Layers))
		for i, l := range cfg.Layers {
			digests[i] = l.Digest
		}
		if err := opts.Lease(digests); err != nil {
			return nil, fmt.Errorf("pull %s: %w", t.Ref, err)
		}
	}
	res := &Pulled{Config: cfg, Layers: make([]LayerPull, len(cfg.Layers))}
	res.Manifest = mdesc.Digest.String()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Concurrency)
	first := make(map[string]bool) // a chain may hold one blob twice: fetch it once
	for i, l := range cfg.Layers {
		dg := l.Digest
		res.Layers[i] = LayerPull{Digest: dg, Size: l.Size, Present: s.Has(dg) || first[dg]}
		if res.Layers[i].Present || opts.ManifestOnly {
			continue
		}
		first[dg] = true
		g.Go(func() (err error) {
			if len(l.Parts) > 0 { // parts.go: its parts, in parallel too
				res.Layers[i], err = s.fetchParts(gctx, t, l, opts.Concurrency, opts.MirrorWait, opts.Progress)
				return err
			}
			if err := t.warmMirror(gctx, dg, opts.MirrorWait); err != nil {
				return err
			}
			d := ocispec.Descriptor{MediaType: LayerMediaType, Digest: digest.Digest(dg), Size: l.Size}
			res.Layers[i], err = s.fetchBlob(gctx, t, d, rangeOptions{conc: opts.RangeConcurrency, min: opts.RangeMin}, opts.Progress)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if err := checkTrailers(ctx, s, t, cfg); err != nil {
		if t.mirrors == nil || ctx.Err() != nil {
			return nil, err
		}
		// A mirror may have served a bad trailer: ask the origin.
		if err := checkTrailers(withoutMirrors(ctx), s, t, cfg); err != nil {
			return nil, err
		}
	}
	for _, l := range res.Layers {
		res.BytesMoved += l.Fetched
		switch {
		case l.Present:
			res.BytesSkipped += l.Size
			res.BlobsSkipped++
		case l.Fetched > 0 || l.Resumed > 0:
			res.BlobsMoved++
		}
	}
	res.Duration = time.Since(start)
	return res, nil
}

// checkTrailers reads each layer's trailer and checks the config against
// it (ChainConfig.CheckTrailer): a local layer from the store, a remote
// one by a range request of its last TrailerSize bytes.
func checkTrailers(ctx context.Context, s *Store, t *Target, cfg *ChainConfig) error {
	for i, l := range cfg.Layers {
		b, err := readTrailer(ctx, s, t, l)
		if err != nil {
			return fmt.Errorf("layer %s: trailer: %w", l.Digest, err)
		}
		tr, err := snapshot.ParseTrailer(b, l.Size)
		if err != nil {
			return fmt.Errorf("%w: layer %s: %v", ErrArtifact, l.Digest, err)
		}
		if err := cfg.CheckTrailer(i, tr); err != nil {
			return err
		}
	}
	return nil
}

func readTrailer(ctx context.Context, s *Store, t *Target, l LayerInfo) ([]byte, error) {
	if l.Size < snapshot.TrailerSize {
		return nil, fmt.Errorf("%w: blob of %d bytes", ErrArtifact, l.Size)
	}
	off := l.Size - snapshot.TrailerSize
	if s.Has(l.Digest) {
		f, err := s.Open(l.Digest)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		b := make([]byte, snapshot.TrailerSize)
		if _, err := f.ReadAt(b, off); err != nil {
			return nil, err
		}
		return b, nil
	}
	if t.Repo == nil {
		return nil, fmt.Errorf("not in the store and %s serves no ranges", t.Ref)
	}
	fetch, err := LayerRanges(t.Repo, l.Digest, l.Size, l.Parts)
	if err != nil {
		return nil, err
	}
	b, err := fetch.FetchRange(ctx, l.Digest, off, snapshot.TrailerSize)
	if err == nil && len(b) != snapshot.TrailerSize {
		err = fmt.Errorf("range request returned %d bytes, want %d", len(b), snapshot.TrailerSize)
	}
	return b, err
}
