package repo

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"oras.land/oras-go/v2/registry/remote"
)

// fetchParts downloads layer l, which t holds in parts, into the store:
//
//  1. Lock the layer's partial file (openPartial), as fetchBlob does: a
//     concurrent pull of the layer, whole or in parts, in any process,
//     waits, then finds it in the store. All below runs under that lock.
//  2. Find the parts the file already holds: each part's range of the
//     file hashed against the part's digest (an interrupted pull's; a
//     range torn by a crash or never written fails and is fetched again).
//  3. Fetch the others, concurrency at a time, each written at its
//     offset in the file as it arrives (its size checked).
//  4. Meanwhile, hash the file in order, each part once it is there
//     (read back from the page cache): the layer's sha256 must match,
//     else each part is checked against its digest, the good ones kept
//     for the next pull; then adopt the file into the store (fsync,
//     rename, fsync the directory).
//
// The layer is written once and hashed once, with no copy of its parts
// on disk, and a pull cut anywhere resumes part by part. A bad part, or
// parts that check out one by one but do not make the layer (a config
// that lies), give an error wrapping ErrDigestMismatch; in the second
// case the file is removed.
func (s *Store) fetchParts(ctx context.Context, t *Target, l LayerInfo, concurrency int, mirrorWait time.Duration, p Progress) (lp LayerPull, err error) {
	lp = LayerPull{Digest: l.Digest, Size: l.Size}
	if err := ValidateParts(l.Digest, l.Size, l.Parts); err != nil {
		return lp, err
	}
	f, err := s.openPartial(ctx, l.Digest)
	if err != nil {
		return lp, err
	}
	if f == nil {
		lp.Present = true // another pull completed it while we waited
		return lp, nil
	}
	defer f.Close()
	have, err := partsPresent(f, l.Parts)
	if err != nil {
		return lp, err
	}
	// The layer's sha256 is taken in order as the parts land, while the
	// later ones are still downloading.
	ready := make([]chan struct{}, len(l.Parts))
	for i := range ready {
		ready[i] = make(chan struct{})
	}
	hctx, stopHash := context.WithCancel(ctx)
	defer stopHash()
	h := sha256.New()
	hashed := make(chan error, 1)
	go func() { hashed <- hashInOrder(hctx, h, f, l.Parts, ready) }()
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, concurrency))
	var off int64
	for i, part := range l.Parts {
		at := off
		off += part.Size
		if have[i] {
			lp.Resumed += part.Size
			close(ready[i])
			continue
		}
		g.Go(func() error {
			if err := t.warmMirror(gctx, part.Digest, mirrorWait); err != nil {
				return err
			}
			n, err := fetchPartAt(gctx, t, part, f, at, p)
			mu.Lock()
			lp.Fetched += n
			mu.Unlock()
			if err != nil {
				return fmt.Errorf("layer %s: %w", l.Digest, err)
			}
			close(ready[i])
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		stopHash()
		<-hashed
		return lp, err // the parts written stay for the next pull
	}
	if err := <-hashed; err != nil {
		return lp, fmt.Errorf("content store: read partial %s: %w", f.Name(), err)
	}
	if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); got != l.Digest {
		// Which parts are bad? Those that are not are kept for the
		// next pull; when none is, the parts do not make the layer.
		have, err := partsPresent(f, l.Parts)
		var bad []string
		for i, ok := range have {
			if !ok {
				bad = append(bad, l.Parts[i].Digest)
			}
		}
		if err != nil || len(bad) == 0 {
			os.Remove(f.Name())
			return lp, fmt.Errorf("the %d parts of layer %s from %s hash to %s: %w", len(l.Parts), l.Digest, t.Ref, got, ErrDigestMismatch)
		}
		return lp, fmt.Errorf("layer %s from %s: parts %v do not match their digests: %w", l.Digest, t.Ref, bad, ErrDigestMismatch)
	}
	if err := f.Truncate(l.Size); err != nil { // a longer file from elsewhere
		return lp, fmt.Errorf("content store: %w", err)
	}
	return lp, s.adoptPartial(f, l.Digest)
}

// hashInOrder adds the parts' ranges of f to h in order, each once its
// ready channel is closed, until ctx ends.
func hashInOrder(ctx context.Context, h io.Writer, f *os.File, parts []Part, ready []chan struct{}) error {
	buf := make([]byte, 256<<10)
	var off int64
	for i, part := range parts {
		select {
		case <-ready[i]:
		case <-ctx.Done():
			return ctx.Err()
		}
		if _, err := io.CopyBuffer(h, io.NewSectionReader(f, off, part.Size), buf); err != nil {
			return err
		}
		off += part.Size
	}
	return nil
}

// partsPresent reports, for each part, whether the layer's partial file
// f already holds it: its range is within the file and hashes to the
// part's digest.
func partsPresent(f *os.File, parts []Part) ([]bool, error) {
	have := make([]bool, len(parts))
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return have, err
	}
	buf := make([]byte, 256<<10)
	var off int64
	for i, part := range parts {
		if off+part.Size > fi.Size() {
			break
		}
		h := sha256.New()
		if _, err := io.CopyBuffer(h, io.NewSectionReader(f, off, part.Size), buf); err != nil {
			return nil, fmt.Errorf("content store: read partial %s: %w", f.Name(), err)
		}
		have[i] = fmt.Sprintf("sha256:%x", h.Sum(nil)) == part.Digest
		off += part.Size
	}
	return have, nil
}

// fetchPartAt downloads part from t into f at offset off, checking its
// size, and returns the bytes received. Its digest is not checked here:
// the layer's is (fetchParts), and only when that fails are the parts
// checked one by one, so a pull hashes the layer's bytes once, as a pull
// of a whole blob does.
func fetchPartAt(ctx context.Context, t *Target, part Part, f *os.File, off int64, p Progress) (n int64, err error) {
	d := ocispec.Descriptor{MediaType: PartMediaType, Digest: digest.Digest(part.Digest), Size: part.Size}
	name := shortName(part.Digest)
	if p != nil {
		p.Start(name, part.Size)
		defer func() { p.Done(name, err) }()
	}
	rc, from, err := openBlobAt(ctx, t, d, 0)
	if err != nil {
		return 0, fmt.Errorf("fetch part %s from %s: %w", part.Digest, t.Ref, err)
	}
	defer rc.Close()
	if from != 0 {
		return 0, fmt.Errorf("fetch part %s from %s: the stream starts at %d", part.Digest, t.Ref, from)
	}
	var moved atomic.Int64
	cr := &countingReader{r: io.LimitReader(rc, part.Size+1), n: &moved, name: name, p: p}
	_, err = io.CopyBuffer(&limitWriter{io.NewOffsetWriter(f, off), part.Size}, cr, make([]byte, 256<<10))
	n = moved.Load()
	if err != nil && !errors.Is(err, errPartTooLong) {
		return n, fmt.Errorf("fetch part %s from %s: %w", part.Digest, t.Ref, err)
	}
	if n != part.Size {
		return n, fmt.Errorf("part %s from %s has %d bytes or more, the config says %d: %w", part.Digest, t.Ref, n, part.Size, ErrDigestMismatch)
	}
	return n, nil
}

var errPartTooLong = errors.New("part longer than its size")

// limitWriter writes at most n bytes (a part never spills into the
// next one's range); more is errPartTooLong.
type limitWriter struct {
	w io.Writer
	n int64
}

func (l *limitWriter) Write(b []byte) (int, error) {
	if int64(len(b)) > l.n {
		n, err := l.w.Write(b[:l.n])
		l.n -= int64(n)
		if err == nil {
			err = errPartTooLong
		}
		return n, err
	}
	n, err := l.w.Write(b)
	l.n -= int64(n)
	return n, err
}

// LayerRanges returns the RangeFetcher that reads ranges of layer dg (of
// size bytes) from registry repository r: the blob itself (RegistryRanges),
// or, for a layer the repository holds in parts, the parts (NewPartRanges).
// Lazy reads in every process get their fetcher here (cmd/obdvol
// remoteResolver, pull --lazy).
func LayerRanges(r *remote.Repository, dg string, size int64, parts []Part) (RangeFetcher, error) {
	if len(parts) == 0 {
		return RegistryRanges{Repo: r}, nil
	}
	return NewPartRanges(dg, size, parts, RegistryRanges{Repo: r})
}

// PartRanges reads ranges of a layer stored in parts: a range maps onto
// the parts it covers, one request to fetch per part (a range across a
// part boundary is two requests, concatenated). The lazy blob is keyed by
// the layer's digest, and a fill checks the whole layer's sha256.
type PartRanges struct {
	layer string
	size  int64
	parts []Part
	ends  []int64 // ends[i]: the end of part i in the layer
	fetch RangeFetcher
}

// NewPartRanges returns the fetcher of layer dg of size bytes whose parts
// (ValidateParts) fetch reads.
func NewPartRanges(dg string, size int64, parts []Part, fetch RangeFetcher) (*PartRanges, error) {
	if err := ValidateParts(dg, size, parts); err != nil {
		return nil, err
	}
	if len(parts) == 0 {
		return nil, fmt.Errorf("%w: layer %s has no parts", ErrArtifact, dg)
	}
	pr := &PartRanges{layer: dg, size: size, parts: parts, ends: make([]int64, len(parts)), fetch: fetch}
	var end int64
	for i, p := range parts {
		end += p.Size
		pr.ends[i] = end
	}
	return pr, nil
}

// FetchRange implements RangeFetcher.
func (pr *PartRanges) FetchRange(ctx context.Context, dg string, off, n int64) ([]byte, error) {
	b, _, err := pr.fetchRangeTotal(ctx, dg, off, n)
	return b, err
}

// fetchRangeTotal fetches [off, off+n) of the layer from its parts. The
// total it returns is the layer's size when the remote stated the size
// of every part it read and each was the part's size, else -1; a part
// whose stated size differs is an error wrapping ErrDigestMismatch.
func (pr *PartRanges) fetchRangeTotal(ctx context.Context, dg string, off, n int64) ([]byte, int64, error) {
	if dg != pr.layer {
		return nil, -1, fmt.Errorf("the part fetcher of layer %s asked for %s", pr.layer, dg)
	}
	if off < 0 || n <= 0 || n > maxFetchSpan || off > pr.size-n {
		return nil, -1, fmt.Errorf("range [%d,+%d) of layer %s of %d bytes is invalid", off, n, dg, pr.size)
	}
	i := sort.Search(len(pr.ends), func(i int) bool { return pr.ends[i] > off })
	var out []byte
	total := pr.size
	for end := off + n; off < end; i++ {
		start := pr.ends[i] - pr.parts[i].Size
		m := min(end, pr.ends[i]) - off
		var b []byte
		var tot int64 = -1
		var err error
		if rt, ok := pr.fetch.(rangeTotaler); ok {
			b, tot, err = rt.fetchRangeTotal(ctx, pr.parts[i].Digest, off-start, m)
		} else {
			b, err = pr.fetch.FetchRange(ctx, pr.parts[i].Digest, off-start, m)
		}
		if tot >= 0 && tot != pr.parts[i].Size {
			return nil, -1, fmt.Errorf("the registry has %d bytes of part %s of layer %s, the config says %d: %w",
				tot, pr.parts[i].Digest, dg, pr.parts[i].Size, ErrDigestMismatch)
		}
		if tot < 0 {
			total = -1
		}
		if err != nil {
			return nil, -1, fmt.Errorf("layer %s: %w", dg, err)
		}
		if int64(len(b)) != m {
			return nil, -1, fmt.Errorf("layer %s: part %s range [%d,+%d): got %d bytes", dg, pr.parts[i].Digest, off-start, m, len(b))
		}
		if out == nil && m == n {
			return b, total, nil // within one part: no copy
		}
		if out == nil {
			out = make([]byte, 0, n)
		}
		out = append(out, b...)
		off += m
	}
	return out, total, nil
}
