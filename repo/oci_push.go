package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"oras.land/oras-go/v2"
)

// Progress receives transfer events; the CLI renders them. Methods may be
// called from several goroutines.
type Progress interface {
	Start(name string, total int64)
	Add(name string, n int64)
	Done(name string, err error)
}

// PushOptions tune a push.
type PushOptions struct {
	Concurrency int      // blobs in parallel; default 4
	MountFrom   []string // repositories of the same registry to cross-mount from
	Progress    Progress // nil: silent
	// Open reads a layer that is not complete in the store (a lazily
	// pulled one, streamed from its source); nil: such layers fail.
	Open func(digest string) (io.ReadCloser, error)
}

// TransferResult summarizes a push or pull.
type TransferResult struct {
	Manifest     string        `json:"manifest"`
	BytesMoved   int64         `json:"bytes_moved"`
	BytesSkipped int64         `json:"bytes_skipped"`
	BlobsMoved   int           `json:"blobs_moved"`
	BlobsSkipped int           `json:"blobs_skipped"`
	BlobsMounted int           `json:"blobs_mounted"`
	Duration     time.Duration `json:"duration_ns"`
}

// Push uploads snapshot chain cfg from the store to t: the config, the
// layers the target lacks (cross-mounted from MountFrom repositories of
// the same registry when possible), then the manifest, tagged with the
// reference. Blobs already present are skipped, so an interrupted push
// resumes by running it again. Layers are verified by digest as they are
// read from the store.
func Push(ctx context.Context, s *Store, t *Target, cfg *ChainConfig, opts PushOptions) (*TransferResult, error) {
	start := time.Now()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	cfgBytes, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cfgDesc := ocispec.Descriptor{MediaType: ConfigMediaType, Digest: digest.FromBytes(cfgBytes), Size: int64(len(cfgBytes))}
	layers := layerDescriptors(cfg)
	var res TransferResult
	var moved, skipped atomic.Int64
	var nMoved, nSkipped, nMounted atomic.Int32
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Concurrency)
	for _, d := range append([]ocispec.Descriptor{cfgDesc}, layers...) {
		g.Go(func() error {
			ok, err := t.Exists(gctx, d)
			if err != nil {
				return fmt.Errorf("push %s: %w", d.Digest, err)
			}
			if ok {
				skipped.Add(d.Size)
				nSkipped.Add(1)
				return nil
			}
			if t.Repo != nil && d.MediaType == LayerMediaType {
				for _, from := range opts.MountFrom {
					from = strings.TrimPrefix(from, t.Ref.Host()+"/")
					if from == t.Ref.Remote.Repository {
						continue
					}
					if err := t.Repo.Mount(gctx, d, from, nil); err == nil {
						skipped.Add(d.Size)
						nMounted.Add(1)
						return nil
					}
				}
			}
			var r io.Reader
			if d.Digest == cfgDesc.Digest {
				r = bytes.NewReader(cfgBytes)
			} else {
				var f io.ReadCloser
				var err error
				if !s.Has(d.Digest.String()) && opts.Open != nil {
					f, err = opts.Open(d.Digest.String())
				} else {
					f, err = s.Open(d.Digest.String())
				}
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			}
			name := shortName(d.Digest.String())
			if opts.Progress != nil {
				opts.Progress.Start(name, d.Size)
			}
			err = t.Push(gctx, d, &countingReader{r: r, n: &moved, name: name, p: opts.Progress})
			if opts.Progress != nil {
				opts.Progress.Done(name, err)
			}
			if err != nil {
				return fmt.Errorf("push %s to %s: %w", d.Digest, t.Ref, err)
			}
			nMoved.Add(1)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	ann := map[string]string{
		ocispec.AnnotationCreated: cfg.Created.UTC().Format(time.RFC3339),
		ocispec.AnnotationTitle:   cfg.Volume + "@" + cfg.Snapshot,
	}
	mdesc, err := oras.PackManifest(ctx, t, oras.PackManifestVersion1_1, ArtifactType,
		oras.PackManifestOptions{Layers: layers, ConfigDescriptor: &cfgDesc, ManifestAnnotations: ann})
	if err != nil {
		return nil, fmt.Errorf("push manifest to %s: %w", t.Ref, err)
	}
	if strings.HasPrefix(t.Ref.Reference, "sha256:") {
		if mdesc.Digest.String() != t.Ref.Reference {
			return nil, fmt.Errorf("pushed manifest is %s, the reference asks for %s", mdesc.Digest, t.Ref.Reference)
		}
	} else if err := t.Tag(ctx, mdesc, t.Ref.Reference); err != nil {
		return nil, fmt.Errorf("tag %s: %w", t.Ref, err)
	}
	res.Manifest = mdesc.Digest.String()
	res.BytesMoved, res.BytesSkipped = moved.Load(), skipped.Load()
	res.BlobsMoved, res.BlobsSkipped, res.BlobsMounted = int(nMoved.Load()), int(nSkipped.Load()), int(nMounted.Load())
	res.Duration = time.Since(start)
	return &res, nil
}

type countingReader struct {
	r    io.Reader
	n    *atomic.Int64
	name string
	p    Progress
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n.Add(int64(n))
	if c.p != nil && n > 0 {
		c.p.Add(c.name, int64(n))
	}
	return n, err
}

func shortName(d string) string {
	if len(d) > 7+12 {
		return d[7 : 7+12]
	}
	return d
}
