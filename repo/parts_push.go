package repo

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
)

// partSource is where a push reads a part from: a range of its layer.
type partSource struct {
	r      io.ReaderAt
	off, n int64
}

// splitLayers returns a copy of cfg in which each layer larger than
// opts.MaxBlob (and without parts already) is cut into parts of at most
// MaxBlob bytes, and where each part's bytes are. The parts' digests are
// computed by reading the layer (a store file, or opts.Open's stream,
// which must then be an io.ReaderAt), parts in parallel, without copying
// anything; a layer with parts already (the caller's) keeps them. The
// readers stay open until close is called. A config with a
// layer in parts gets version ConfigVersionParts; one without stays at
// its version, so a push without parts makes the manifest it always made.
//
// A layer the target already holds whole (t.Exists) is not split: the
// registry took it, and a lazily pulled layer need not be read to be
// skipped.
func splitLayers(ctx context.Context, s *Store, t *Target, cfg *ChainConfig, opts PushOptions) (out *ChainConfig, src map[digest.Digest]partSource, close func(), err error) {
	c := *cfg
	c.Layers = append([]LayerInfo(nil), cfg.Layers...)
	pre := withPartsVersion(c)
	if err := pre.Validate(); err != nil { // before anything is read
		return nil, nil, func() {}, err
	}
	src = make(map[digest.Digest]partSource)
	var closers []io.Closer
	close = func() {
		for _, c := range closers {
			c.Close()
		}
	}
	defer func() {
		if err != nil {
			close()
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Concurrency)
	opened := make(map[string]io.ReaderAt) // a chain may hold one layer twice
	for i := range c.Layers {
		l := &c.Layers[i]
		sizes := splitSizes(l.Size, opts.MaxBlob)
		if len(l.Parts) == 0 && sizes == nil {
			continue
		}
		if t != nil {
			whole := ocispec.Descriptor{MediaType: LayerMediaType, Digest: digest.Digest(l.Digest), Size: l.Size}
			if ok, err := t.Exists(ctx, whole); err != nil {
				return nil, nil, close, fmt.Errorf("push %s to %s: %w", l.Digest, t.Ref, err)
			} else if ok {
				l.Parts = nil
				continue
			}
		}
		if len(sizes) > maxBlobs {
			return nil, nil, close, fmt.Errorf("layer %s of %d bytes would be %d parts of %d bytes (at most %d): raise the blob size limit",
				l.Digest, l.Size, len(sizes), opts.MaxBlob, maxBlobs)
		}
		r, ok := opened[l.Digest]
		if !ok {
			var cl io.Closer
			if r, cl, err = openLayerAt(s, l.Digest, opts); err != nil {
				return nil, nil, close, err
			}
			closers = append(closers, cl)
			opened[l.Digest] = r
		}
		if len(l.Parts) > 0 {
			continue // the caller's parts
		}
		l.Parts = make([]Part, len(sizes))
		var off int64
		for j, n := range sizes {
			part, at := &l.Parts[j], off
			off += n
			g.Go(func() error {
				h := sha256.New()
				if _, err := io.CopyBuffer(h, io.NewSectionReader(r, at, n), make([]byte, 256<<10)); err != nil {
					return fmt.Errorf("layer %s: read part at %d: %w", l.Digest, at, err)
				}
				if err := gctx.Err(); err != nil {
					return err
				}
				*part = Part{Digest: fmt.Sprintf("sha256:%x", h.Sum(nil)), Size: n}
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		return nil, nil, close, err
	}
	c = withPartsVersion(c)
	for _, l := range c.Layers {
		var off int64
		for _, p := range l.Parts {
			src[digest.Digest(p.Digest)] = partSource{r: opened[l.Digest], off: off, n: p.Size}
			off += p.Size
		}
	}
	if err := c.Validate(); err != nil {
		return nil, nil, close, err
	}
	return &c, src, close, nil
}

// openLayerAt opens layer dg for reads at offsets: the store's file, or
// what opts.Open returns (when it can read at offsets).
func openLayerAt(s *Store, dg string, opts PushOptions) (io.ReaderAt, io.Closer, error) {
	if s.Has(dg) || opts.Open == nil {
		f, err := s.Open(dg)
		if err != nil {
			return nil, nil, fmt.Errorf("read from the content store: %w", err)
		}
		return f, f, nil
	}
	rc, err := opts.Open(dg)
	if err != nil {
		return nil, nil, err
	}
	ra, ok := rc.(io.ReaderAt)
	if !ok {
		rc.Close()
		return nil, nil, fmt.Errorf("layer %s is not local and its source cannot be read in parts", dg)
	}
	return ra, rc, nil
}

// withPartsVersion returns c with the version a config with its layers
// needs: ConfigVersionParts when a layer is in parts.
func withPartsVersion(c ChainConfig) ChainConfig {
	for _, l := range c.Layers {
		if len(l.Parts) > 0 {
			c.Version = max(c.Version, ConfigVersionParts)
		}
	}
	return c
}
