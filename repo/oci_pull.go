package repo

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"oras.land/oras-go/v2/content"
)

// PullOptions tune a pull.
type PullOptions struct {
	Concurrency int      // blobs in parallel; default 4
	Progress    Progress // nil: silent
	// ManifestOnly fetches the manifest and config but no layers (lazy
	// pulls fetch layers on demand).
	ManifestOnly bool
}

// Pulled is what a pull brought.
type Pulled struct {
	TransferResult
	Config *ChainConfig
}

// Pull fetches the snapshot artifact t names: the manifest and config
// (checked against each other and their digests), then every layer the
// store lacks, several at once. Each layer is downloaded into
// Root/partial/<hex>.part, resumed from where an interrupted pull left it
// (a range request), checked against its digest and size, and only then
// renamed into the store. Nothing is recorded anywhere else: the caller
// records the volume once Pull succeeded.
func Pull(ctx context.Context, s *Store, t *Target, opts PullOptions) (*Pulled, error) {
	start := time.Now()
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	mdesc, err := t.Resolve(ctx, t.Ref.Reference)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", t.Ref, err)
	}
	if mdesc.MediaType != ocispec.MediaTypeImageManifest || mdesc.Size > maxManifestBytes {
		return nil, fmt.Errorf("%w: %s is a %s of %d bytes, not an OCI image manifest", ErrArtifact, t.Ref, mdesc.MediaType, mdesc.Size)
	}
	mb, err := content.FetchAll(ctx, t, mdesc)
	if err != nil {
		return nil, fmt.Errorf("fetch manifest of %s: %w", t.Ref, err)
	}
	m, err := ParseManifest(mb)
	if err != nil {
		return nil, err
	}
	cb, err := content.FetchAll(ctx, t, m.Config)
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
	res := &Pulled{Config: cfg}
	res.Manifest = mdesc.Digest.String()
	var moved, skipped atomic.Int64
	var nMoved, nSkipped atomic.Int32
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Concurrency)
	for _, d := range m.Layers {
		if s.Has(d.Digest.String()) || opts.ManifestOnly {
			if s.Has(d.Digest.String()) {
				skipped.Add(d.Size)
				nSkipped.Add(1)
			}
			continue
		}
		g.Go(func() error {
			n, err := s.fetchBlob(gctx, t, d, opts.Progress)
			moved.Add(n)
			if err == nil {
				nMoved.Add(1)
			}
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	res.BytesMoved, res.BytesSkipped = moved.Load(), skipped.Load()
	res.BlobsMoved, res.BlobsSkipped = int(nMoved.Load()), int(nSkipped.Load())
	res.Duration = time.Since(start)
	return res, nil
}

// fetchBlob downloads one blob into the store, resuming a partial file.
// It returns the bytes moved over the network.
func (s *Store) fetchBlob(ctx context.Context, t *Target, d ocispec.Descriptor, p Progress) (int64, error) {
	dg := d.Digest.String()
	if err := ValidateDigest(dg); err != nil {
		return 0, err
	}
	path := filepath.Join(s.PartialDir(), dg[len("sha256:"):]+".part")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	h := sha256.New()
	have, err := io.Copy(h, f) // the prefix an earlier pull fetched
	if err != nil {
		return 0, err
	}
	if have > d.Size {
		have = 0
		h.Reset()
		f.Truncate(0)
	}
	name := shortName(dg)
	if p != nil {
		p.Start(name, d.Size)
		p.Add(name, have)
	}
	rc, err := t.Fetch(ctx, d)
	if err != nil {
		return 0, fmt.Errorf("fetch %s from %s: %w", dg, t.Ref, err)
	}
	defer rc.Close()
	if have > 0 {
		sk, ok := rc.(io.Seeker)
		if !ok {
			have = 0
		} else if _, err := sk.Seek(have, io.SeekStart); err != nil {
			have = 0
		}
		if have == 0 {
			h.Reset()
			f.Truncate(0)
			rc.Close()
			if rc, err = t.Fetch(ctx, d); err != nil {
				return 0, fmt.Errorf("fetch %s from %s: %w", dg, t.Ref, err)
			}
			defer rc.Close()
		}
	}
	if _, err := f.Seek(have, io.SeekStart); err != nil {
		return 0, err
	}
	var moved atomic.Int64
	cr := &countingReader{r: io.LimitReader(rc, d.Size-have+1), n: &moved, name: name, p: p}
	_, err = io.Copy(io.MultiWriter(f, h), cr)
	n := moved.Load()
	if p != nil {
		p.Done(name, err)
	}
	if err != nil {
		// Keep what arrived: the next pull resumes from it.
		f.Sync()
		return n, fmt.Errorf("fetch %s from %s (%d of %d bytes kept for resume): %w", dg, t.Ref, have+n, d.Size, err)
	}
	if have+n != d.Size {
		f.Close()
		os.Remove(path)
		return n, fmt.Errorf("blob %s from %s has %d bytes, the manifest says %d: %w", dg, t.Ref, have+n, d.Size, ErrDigestMismatch)
	}
	if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); got != dg {
		f.Close()
		os.Remove(path)
		return n, fmt.Errorf("blob from %s hashes to %s, want %s: %w", t.Ref, got, dg, ErrDigestMismatch)
	}
	if err := f.Sync(); err != nil {
		return n, err
	}
	dst, _ := s.Path(dg)
	if err := os.Rename(path, dst); err != nil {
		return n, err
	}
	return n, syncDir(filepath.Dir(dst))
}
