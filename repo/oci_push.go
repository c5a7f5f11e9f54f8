package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/content/memory"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"
)

// Progress receives transfer events; the CLI renders them. Methods may be
// called from several goroutines. For each blob whose bytes move, Start
// comes first (total is the blob's size; a retry starts it again), then
// Add for each piece moved (a resumed download adds its kept prefix at
// once), then exactly one Done. Skipped and mounted blobs get no events.
type Progress interface {
	Start(name string, total int64)
	Add(name string, n int64)
	Done(name string, err error)
}

// PushOptions tune a push.
type PushOptions struct {
	Concurrency int // blobs in parallel; default 4
	// MountFrom names repositories of the target's registry ("repo" or
	// "host/repo") whose blobs may be cross-mounted instead of uploaded.
	MountFrom []string
	Progress  Progress // nil: silent
	// Open reads a layer that is not complete in the store (a lazily
	// pulled one, streamed from its source); nil: such layers fail.
	Open func(digest string) (io.ReadCloser, error)
	// ChunkSize > 0 uploads every blob in chunks of this size; 0 uploads
	// monolithically, in chunks after a 413 (upload.go).
	ChunkSize int64
	// MaxBlob, when > 0, is the largest blob a layer is pushed as: a
	// larger layer goes in parts of at most MaxBlob bytes (parts.go).
	// Open's streams must then also be io.ReaderAt.
	MaxBlob int64
}

// TransferResult summarizes a push or pull.
type TransferResult struct {
	Manifest     string `json:"manifest"`
	BytesMoved   int64  `json:"bytes_moved"`
	BytesSkipped int64  `json:"bytes_skipped"`
	BlobsMoved   int    `json:"blobs_moved"`
	BlobsSkipped int    `json:"blobs_skipped"`
	BlobsMounted int    `json:"blobs_mounted"`
	BlobsChunked int    `json:"blobs_chunked"` // of BlobsMoved, uploaded in chunks
	// BytesResumed is how much of BytesSkipped chunked uploads a push
	// left held already (resumed, not sent again).
	BytesResumed int64         `json:"bytes_resumed,omitempty"`
	Duration     time.Duration `json:"duration_ns"`
	LayersSplit  int           `json:"layers_split,omitempty"` // layers pushed in parts
	// Split are the parts of the layers pushed in parts, by layer digest.
	Split map[string][]Part `json:"-"`
}

// Push uploads snapshot chain cfg from the store to t: the config, the
// layers the target lacks (cross-mounted from MountFrom repositories of
// the same registry when possible), then the manifest, tagged with the
// reference (a digest reference must equal the manifest's digest). Blobs
// already present are skipped, so an interrupted push resumes by running
// it again (a blob cut mid-way through a chunked upload goes on from what
// its recorded session holds, upload_record.go; one cut mid-way through a
// whole-blob upload starts over). The target checks every
// blob against its digest as it receives it.
func Push(ctx context.Context, s *Store, t *Target, cfg *ChainConfig, opts PushOptions) (*TransferResult, error) {
	start := time.Now()
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	// The config validated, with the layers in parts (parts.go).
	cfg, parts, closeParts, err := splitLayers(ctx, s, t, cfg, opts)
	if err != nil {
		return nil, err
	}
	defer closeParts()
	cfgBytes, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	cfgDesc := ocispec.Descriptor{MediaType: ConfigMediaType, Digest: digest.FromBytes(cfgBytes), Size: int64(len(cfgBytes))}
	layers := layerDescriptors(cfg)
	mdesc, mb, packed, err := packManifest(ctx, cfg, cfgDesc, layers)
	if err != nil {
		return nil, err
	}
	// Every blob the manifest references goes up, not only those we
	// asked for: the packer puts the empty "{}" blob in place of the
	// layers of a chain that has none (OCI 1.1), and a registry refuses
	// a manifest that names a blob it lacks.
	var m ocispec.Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, fmt.Errorf("pack manifest: %w", err)
	}
	blobs := append([]ocispec.Descriptor{m.Config}, m.Layers...)
	if strings.HasPrefix(t.Ref.Reference, "sha256:") && mdesc.Digest.String() != t.Ref.Reference {
		return nil, fmt.Errorf("the manifest of this snapshot is %s, the reference asks for %s", mdesc.Digest, t.Ref.Reference)
	}
	ps := &pusher{t: t, opts: opts, store: s, open: func(d ocispec.Descriptor) (io.ReadCloser, error) {
		dg := d.Digest.String()
		switch pr, ok := parts[d.Digest]; {
		case d.Digest == cfgDesc.Digest:
			return io.NopCloser(bytes.NewReader(cfgBytes)), nil
		case ok && d.MediaType == PartMediaType:
			return io.NopCloser(io.NewSectionReader(pr.r, pr.off, pr.n)), nil
		case !s.Has(dg):
			if ok, _ := packed.Exists(ctx, d); ok {
				return packed.Fetch(ctx, d) // made by the packer
			}
			if opts.Open != nil {
				return opts.Open(dg)
			}
		}
		return s.Open(dg)
	}}
	// A registry that refused whole blobs before gets chunks at once, of
	// the size it took (upload_record.go).
	var learned int64
	if t.Repo != nil && opts.ChunkSize <= 0 {
		learned = loadChunkSize(s.UploadsDir(), t.Ref.Remote.Registry)
		ps.up.chunk.Store(learned)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Concurrency)
	seen := make(map[digest.Digest]bool) // a chain may hold one blob twice
	for _, d := range blobs {
		if !seen[d.Digest] {
			seen[d.Digest] = true
			g.Go(func() error { return ps.blob(gctx, d) })
		}
	}
	err = g.Wait()
	if c := ps.up.chunk.Load(); c > 0 && c != learned {
		// Best effort: a size not kept costs the next push one refused
		// whole blob, not this push.
		saveChunkSize(s.UploadsDir(), t.Ref.Remote.Registry, c)
	}
	if err != nil {
		return nil, err
	}
	if err := putManifest(ctx, t, mdesc, mb); err != nil {
		return nil, err
	}
	res := TransferResult{Manifest: mdesc.Digest.String(), Duration: time.Since(start),
		BytesMoved: ps.moved.Load(), BytesSkipped: ps.skipped.Load(),
		BlobsMoved: int(ps.nMoved.Load()), BlobsSkipped: int(ps.nSkipped.Load()), BlobsMounted: int(ps.nMounted.Load()),
		BlobsChunked: int(ps.up.chunked.Load()), BytesResumed: ps.resumed.Load()}
	for _, l := range cfg.Layers {
		if len(l.Parts) > 0 && res.Split[l.Digest] == nil {
			if res.Split == nil {
				res.Split = make(map[string][]Part)
			}
			res.Split[l.Digest] = l.Parts
			res.LayersSplit++
		}
	}
	return &res, nil
}

// packManifest builds the manifest of the artifact (oras.PackManifest:
// OCI 1.1 with our artifactType) without pushing it. It returns the
// packer's store too, which holds the manifest and any blob the packer
// made for it (the empty "{}" layer of a chain with no layers).
func packManifest(ctx context.Context, cfg *ChainConfig, cfgDesc ocispec.Descriptor, layers []ocispec.Descriptor) (ocispec.Descriptor, []byte, *memory.Store, error) {
	ann := map[string]string{
		ocispec.AnnotationCreated: cfg.Created.UTC().Format(time.RFC3339),
		ocispec.AnnotationTitle:   cfg.Volume + "@" + cfg.Snapshot,
	}
	mem := memory.New()
	mdesc, err := oras.PackManifest(ctx, mem, oras.PackManifestVersion1_1, ArtifactType,
		oras.PackManifestOptions{Layers: layers, ConfigDescriptor: &cfgDesc, ManifestAnnotations: ann})
	if err != nil {
		return mdesc, nil, nil, fmt.Errorf("pack manifest: %w", err)
	}
	mb, err := content.FetchAll(ctx, mem, mdesc)
	return mdesc, mb, mem, err
}

// putManifest pushes the manifest under t's tag with one request where
// the target can (a registry's PUT /manifests/<tag>), or by digest when
// the reference is one.
func putManifest(ctx context.Context, t *Target, mdesc ocispec.Descriptor, mb []byte) error {
	if !strings.HasPrefix(t.Ref.Reference, "sha256:") {
		if _, err := oras.TagBytes(ctx, t, mdesc.MediaType, mb, t.Ref.Reference); err != nil {
			return fmt.Errorf("push manifest to %s: %w", t.Ref, err)
		}
		return nil
	}
	if err := t.Push(ctx, mdesc, bytes.NewReader(mb)); err != nil && !errors.Is(err, errdef.ErrAlreadyExists) {
		return fmt.Errorf("push manifest to %s: %w", t.Ref, err)
	}
	return nil
}

// pusher uploads the blobs of one push; its methods run concurrently.
type pusher struct {
	t     *Target
	opts  PushOptions
	store *Store // its UploadsDir records chunked uploads (upload_record.go)
	open  func(ocispec.Descriptor) (io.ReadCloser, error)

	moved, skipped             atomic.Int64
	nMoved, nSkipped, nMounted atomic.Int32
	resumed                    atomic.Int64 // bytes recorded sessions held
	up                         uploads      // chunked or monolithic (upload.go)
}

// blob makes sure the target holds d: skipped if it has it, else
// cross-mounted, else uploaded.
func (p *pusher) blob(ctx context.Context, d ocispec.Descriptor) error {
	ok, err := p.t.Exists(ctx, d)
	if err != nil {
		return fmt.Errorf("push %s to %s: %w", d.Digest, p.t.Ref, err)
	}
	if ok {
		p.skipped.Add(d.Size)
		p.nSkipped.Add(1)
		return nil
	}
	name := shortName(d.Digest.String())
	var opened io.Closer // set once d's bytes are being sent
	content := func() (io.ReadCloser, error) {
		f, err := p.open(d)
		if err != nil {
			return nil, fmt.Errorf("read from the content store: %w", err)
		}
		if p.opts.Progress != nil {
			p.opts.Progress.Start(name, d.Size)
		}
		rc := &readCloser{r: &countingReader{r: f, n: &p.moved, name: name, p: p.opts.Progress}, c: f}
		opened = rc
		return rc, nil
	}
	if d.MediaType == LayerMediaType || d.MediaType == PartMediaType {
		// A registry that answers the mount with an upload session gets
		// the blob in one PUT there, unless this push uploads in chunks:
		// then (and when that PUT is refused with 413) the session is
		// left and upload sends the blob its own way.
		var body *detachable
		mountContent := func() (io.ReadCloser, error) {
			if p.opts.ChunkSize > 0 || p.up.chunk.Load() != 0 {
				return nil, errMountUpload
			}
			rc, err := content()
			if err != nil {
				return nil, err
			}
			body = &detachable{r: rc}
			return io.NopCloser(body), nil
		}
		mounted, err := mount(ctx, p.t, d, p.opts.MountFrom, mountContent)
		if mounted && opened == nil {
			p.skipped.Add(d.Size)
			p.nMounted.Add(1)
			return nil
		}
		if opened != nil && isTooLarge(err) {
			p.moved.Add(-body.detach()) // the registry took none of it
			opened.Close()
			if p.opts.Progress != nil {
				p.opts.Progress.Done(name, errUploadRestart)
			}
			opened = nil
			p.up.chunk.CompareAndSwap(0, DefaultChunkSize)
		}
		if opened == nil {
			err = p.upload(ctx, d, content)
		}
		return p.done(name, d, opened, err)
	}
	err = p.upload(ctx, d, content)
	return p.done(name, d, opened, err)
}

// errMountUpload refuses a mount's upload session: the push uploads in
// chunks, in a session of its own.
var errMountUpload = errors.New("upload in chunks, not into the mount's session")

// upload sends d's bytes, monolithically or in chunks (upload.go); a
// monolithic upload answered 401 is sent once more, reopened (send).
func (p *pusher) upload(ctx context.Context, d ocispec.Descriptor, content func() (io.ReadCloser, error)) error {
	return p.send(ctx, d, content)
}

// done closes what was opened, ends d's progress and counts it.
func (p *pusher) done(name string, d ocispec.Descriptor, opened io.Closer, err error) error {
	if opened != nil {
		opened.Close()
		if p.opts.Progress != nil {
			p.opts.Progress.Done(name, err)
		}
	}
	if err != nil {
		return fmt.Errorf("push %s to %s: %w", d.Digest, p.t.Ref, err)
	}
	p.nMoved.Add(1)
	return nil
}

// mount cross-mounts blob d into t's repository from the first of the
// repositories from (names in t's registry, "host/" prefix optional;
// other registries are skipped) that holds it, found with a HEAD there
// first: a mount the registry cannot do opens an upload session, which
// would otherwise be left behind. If the registry answers a mount with an
// upload session anyway, the blob is uploaded into it through content.
// It reports whether a mount request succeeded.
func mount(ctx context.Context, t *Target, d ocispec.Descriptor, from []string, content func() (io.ReadCloser, error)) (bool, error) {
	if t.Repo == nil {
		return false, nil
	}
	host := t.Ref.Host()
	for _, name := range from {
		name = strings.TrimPrefix(name, host+"/")
		if first, _, ok := strings.Cut(name, "/"); ok && strings.ContainsAny(first, ".:") || name == "" || name == t.Ref.Remote.Repository {
			continue // another registry's (host names hold a dot or port), or this repository
		}
		src, err := remote.NewRepository(host + "/" + name)
		if err != nil {
			continue
		}
		src.Client, src.PlainHTTP = t.Repo.Client, t.Repo.PlainHTTP
		if ok, err := src.Blobs().Exists(ctx, d); err != nil || !ok {
			continue
		}
		if err := t.Repo.Mount(ctx, d, name, content); err != nil {
			return false, err
		}
		return true, nil
	}
	return false, nil
}

// readCloser closes its file once, however often it is closed.
type readCloser struct {
	r    io.Reader
	c    io.Closer
	once sync.Once
}

func (r *readCloser) Read(b []byte) (int, error) { return r.r.Read(b) }

func (r *readCloser) Close() error {
	var err error
	r.once.Do(func() { err = r.c.Close() })
	return err
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
