package repo

import (
	"context"
	"crypto/sha256"
	"encoding"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sort"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"oras.land/oras-go/v2/registry/remote"
)

// fetchParts downloads layer l, which t holds in parts, into the store:
//
//  1. Lock the layer's partial file (openPartial), as fetchBlob does: a
//     concurrent pull of the layer, whole or in parts, waits, then finds
//     it in the store. Everything below runs under that lock.
//  2. Keep the whole parts the file already holds, in order, each
//     checked against its digest (an interrupted assembly's); cut the
//     rest.
//  3. Download the other parts, concurrency at a time, each into its
//     own partial file as fetchBlob does (resumable, checked against its
//     digest) but left there, not adopted into the store.
//  4. Append the parts in order, checking each against its digest again
//     as it is copied (a part file gc removed meanwhile is fetched
//     again), fsync, and remove each part's file once appended.
//  5. Check the layer's size and sha256, then adopt the file into the
//     store (fsync, rename, fsync the directory).
//
// A pull cut in step 3 keeps its part files, one cut in step 4 the
// assembled prefix: the next pull resumes from both. Parts that do not
// make the layer (a config that lies) give an error wrapping
// ErrDigestMismatch and store nothing.
func (s *Store) fetchParts(ctx context.Context, t *Target, l LayerInfo, concurrency int, p Progress) (lp LayerPull, err error) {
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
	h := sha256.New()
	next, kept, err := keptParts(f, l.Parts, h)
	if err != nil {
		return lp, err
	}
	lp.Resumed = kept
	if err := f.Truncate(kept); err != nil {
		return lp, fmt.Errorf("content store: %w", err)
	}
	// Step 3: each distinct part once, in parallel.
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(1, concurrency))
	last := make(map[string]int) // the last index of each part still to append
	for i := next; i < len(l.Parts); i++ {
		part := l.Parts[i]
		if _, ok := last[part.Digest]; !ok {
			g.Go(func() error {
				plp, err := s.fetchPart(gctx, t, part, p)
				mu.Lock()
				lp.Fetched += plp.Fetched
				lp.Resumed += plp.Resumed
				mu.Unlock()
				return err
			})
		}
		last[part.Digest] = i
	}
	if err := g.Wait(); err != nil {
		f.Sync() // keep what was assembled for the next pull
		return lp, err
	}
	// Step 4.
	off := kept
	for i := next; i < len(l.Parts); i++ {
		part := l.Parts[i]
		fetched, err := s.appendPart(ctx, t, f, h, off, part, p)
		lp.Fetched += fetched
		if err != nil {
			f.Sync()
			return lp, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
		off += part.Size
		if last[part.Digest] == i {
			if err := f.Sync(); err != nil { // the part's bytes are in the layer's file for good
				return lp, fmt.Errorf("content store: fsync: %w", err)
			}
			if path, err := s.partialPath(part.Digest); err == nil {
				os.Remove(path)
			}
		}
	}
	// Step 5.
	if got := fmt.Sprintf("sha256:%x", h.Sum(nil)); off != l.Size || got != l.Digest {
		os.Remove(f.Name())
		return lp, fmt.Errorf("the %d parts of layer %s from %s make %d bytes hashing to %s: %w",
			len(l.Parts), l.Digest, t.Ref, off, got, ErrDigestMismatch)
	}
	return lp, s.adoptPartial(f, l.Digest)
}

// keptParts hashes the whole parts at the start of the layer's partial
// file f, in order, into h while each matches its digest, and returns the
// index of the first part not kept and the bytes kept. h then holds
// exactly the kept bytes.
func keptParts(f *os.File, parts []Part, h hash.Hash) (int, int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, fmt.Errorf("content store: %w", err)
	}
	var off int64
	buf := make([]byte, 256<<10)
	for i, part := range parts {
		if off+part.Size > fi.Size() {
			return i, off, nil
		}
		ok, err := copyPart(io.Discard, h, io.NewSectionReader(f, off, part.Size), part, buf)
		if err != nil {
			return 0, 0, fmt.Errorf("content store: read partial %s: %w", f.Name(), err)
		}
		if !ok {
			return i, off, nil
		}
		off += part.Size
	}
	return len(parts), off, nil
}

// copyPart copies part's bytes from r to w, adding them to h, and
// reports whether they were part.Size bytes hashing to part.Digest; when
// not, h is as it was before.
func copyPart(w io.Writer, h hash.Hash, r io.Reader, part Part, buf []byte) (bool, error) {
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return false, err
	}
	ph := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(w, h, ph), io.LimitReader(r, part.Size), buf)
	if err != nil {
		return false, err
	}
	if n == part.Size && fmt.Sprintf("sha256:%x", ph.Sum(nil)) == part.Digest {
		return true, nil
	}
	return false, h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state)
}

// fetchPart makes the partial file of part hold the whole part, checked
// against its digest (fetchBlob without the adoption): it is left in
// partial/ for appendPart. A part that is a blob of the store is left
// there.
func (s *Store) fetchPart(ctx context.Context, t *Target, part Part, p Progress) (lp LayerPull, err error) {
	d := ocispec.Descriptor{MediaType: PartMediaType, Digest: digest.Digest(part.Digest), Size: part.Size}
	lp = LayerPull{Digest: part.Digest, Size: part.Size}
	f, err := s.openPartial(ctx, part.Digest)
	if err != nil || f == nil {
		return lp, err
	}
	defer f.Close()
	name := shortName(part.Digest)
	for attempt := 0; ; attempt++ {
		if p != nil {
			p.Start(name, d.Size)
		}
		resumed, fetched, err := download(ctx, t, d, f, p, name)
		if p != nil {
			p.Done(name, err)
		}
		lp.Fetched += fetched
		if attempt == 0 {
			lp.Resumed = resumed
		}
		if err == nil {
			if err := f.Sync(); err != nil {
				return lp, fmt.Errorf("content store: fsync: %w", err)
			}
			return lp, nil
		}
		if !errors.Is(err, ErrDigestMismatch) { // cut by the network
			f.Sync()
			return lp, err
		}
		if resumed == 0 || attempt > 0 {
			os.Remove(f.Name())
			return lp, err
		}
		if err := f.Truncate(0); err != nil {
			return lp, fmt.Errorf("content store: %w", err)
		}
		lp.Resumed = 0
	}
}

// appendPart appends part (its partial file, or its store blob) to the
// layer's file f at off, adding it to h. A part file that does not hold
// the part (removed by gc, damaged) is fetched again once. It returns the
// bytes fetched.
func (s *Store) appendPart(ctx context.Context, t *Target, f *os.File, h hash.Hash, off int64, part Part, p Progress) (int64, error) {
	buf := make([]byte, 256<<10)
	var fetched int64
	for attempt := 0; ; attempt++ {
		src, err := s.openPartial(ctx, part.Digest)
		if err == nil && src == nil {
			src, err = s.Open(part.Digest)
		}
		if err != nil {
			return fetched, err
		}
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			src.Close()
			return fetched, err
		}
		ok, err := copyPart(f, h, io.NewSectionReader(src, 0, part.Size), part, buf)
		src.Close()
		if err != nil {
			return fetched, fmt.Errorf("content store: part %s: %w", part.Digest, err)
		}
		if ok {
			return fetched, nil
		}
		if err := f.Truncate(off); err != nil {
			return fetched, fmt.Errorf("content store: %w", err)
		}
		if attempt > 0 {
			return fetched, fmt.Errorf("part %s does not match its digest after a second fetch: %w", part.Digest, ErrDigestMismatch)
		}
		if path, err := s.partialPath(part.Digest); err == nil {
			os.Remove(path)
		}
		lp, err := s.fetchPart(ctx, t, part, p)
		fetched += lp.Fetched
		if err != nil {
			return fetched, err
		}
	}
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
