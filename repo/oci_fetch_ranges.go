package repo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// A large blob is downloaded over several range requests at once: it is
// cut into segments (a power of two, a quarter of rangeOptions.min: 16 MiB
// by default), up to rangeOptions.conc of them in flight, each written at
// its offset in the .part file. A segment that landed is fdatasynced, then
// recorded in partial/<hex>.segs (the present-map format of lazy blobs,
// lazy_map.go, with the segment as its page), so that an interrupted pull
// fetches only the missing segments. The whole file's sha256 is checked
// at the end, as for one stream. A registry that ignores Range (a 200
// answer) falls back to one stream from 0.
//
// A .segs file is believed only while the .part file has the blob's size
// (a ranged download sizes it at once; a one-stream download grows it);
// otherwise the .part file is a prefix, whose whole segments count as
// present. Either way a wrong byte only costs the check at the end, after
// which fetchBlob starts over once from zero.

// rangeOptions say when one blob downloads over several range requests.
type rangeOptions struct {
	conc int   // range requests in flight for one blob; <= 1: one stream
	min  int64 // blobs at least this large are cut into segments
}

const (
	defaultRangeConcurrency = 4
	defaultRangeMin         = 64 << 20
	minSegment              = 64 << 10
)

func (o rangeOptions) withDefaults() rangeOptions {
	if o.conc == 0 {
		o.conc = defaultRangeConcurrency
	}
	if o.min <= 0 {
		o.min = defaultRangeMin
	}
	return o
}

// segment is the segment size: the largest power of two at most min/4,
// from 64 KiB to 1 GiB.
func (o rangeOptions) segment() int64 {
	seg := int64(minSegment)
	for seg*2 <= o.min/4 && seg < maxLazyPage {
		seg *= 2
	}
	return seg
}

// segsPath is the segment map of a partial file.
func segsPath(part string) string { return strings.TrimSuffix(part, ".part") + ".segs" }

// ranged reports whether blob d downloads in segments: from a registry
// that is not known to ignore Range, large enough and allowed to, or
// already begun that way.
func (o rangeOptions) ranged(t *Target, d ocispec.Descriptor, part string) bool {
	if t.Repo == nil || (RegistryRanges{Repo: t.Repo}).rangeIgnored() {
		return false
	}
	if _, err := os.Stat(segsPath(part)); err == nil {
		return true
	}
	return o.conc > 1 && d.Size >= o.min
}

// downloadRanges completes partial file f with blob d from t in segments.
// It returns the bytes reused from f and the bytes received.
func downloadRanges(ctx context.Context, t *Target, d ocispec.Descriptor, f *os.File, o rangeOptions, p Progress, name string) (have, n int64, err error) {
	dg := d.Digest.String()
	seg := o.segment()
	segs := segsPath(f.Name())
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, fmt.Errorf("content store: %w", err)
	}
	var done pageSet
	if _, serr := os.Stat(segs); serr == nil && fi.Size() == d.Size {
		done = readLazyMap(segs, seg, d.Size)
	} else if fi.Size() <= d.Size { // a prefix (or nothing)
		if fi.Size() == d.Size {
			done.add(0, lazyPages(d.Size, seg))
		} else if k := fi.Size() / seg; k > 0 {
			done.add(0, k)
		}
	}
	if err := f.Truncate(d.Size); err != nil {
		return 0, 0, fmt.Errorf("content store: %w", err)
	}
	if err := writeLazyMap(segs, seg, d.Size, &done, false); err != nil {
		return 0, 0, fmt.Errorf("content store: %w", err)
	}
	have = done.bytes(seg, d.Size)
	if p != nil && have > 0 {
		p.Add(name, have)
	}
	var moved atomic.Int64
	var mu sync.Mutex // done and the .segs file
	// A failed segment stops new ones; those in flight finish (and are
	// kept for the next pull). So does a whole-blob answer (the registry
	// ignores Range): the first is streamed into f from 0 as one stream,
	// later ones are dropped.
	var g errgroup.Group
	var stop, claimed atomic.Bool
	g.SetLimit(max(o.conc, 1))
	// The first request goes alone until its answer's headers arrive, so
	// that a registry ignoring Range sends one whole blob, not one for
	// every request in flight.
	answered := make(chan struct{})
	var once sync.Once
	headers := func() { once.Do(func() { close(answered) }) }
	whole := func(body io.Reader) error {
		if !claimed.CompareAndSwap(false, true) {
			return nil
		}
		stop.Store(true)
		headers()
		cr := &countingReader{r: io.LimitReader(body, d.Size+1), n: &moved, name: name, p: p}
		got, err := io.CopyBuffer(io.NewOffsetWriter(f, 0), cr, make([]byte, 256<<10))
		if err == nil && got != d.Size {
			err = fmt.Errorf("whole-blob answer (the registry ignores Range) has %d bytes, the manifest says %d: %w", got, d.Size, ErrDigestMismatch)
		}
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		done.add(0, lazyPages(d.Size, seg))
		return nil // the final check hashes it; not recorded: a stream from 0 does not resume
	}
	var missing []int64 // listed first: workers change done
	for i := int64(0); i < lazyPages(d.Size, seg); i++ {
		if !done.has(i) {
			missing = append(missing, i)
		}
	}
	for k, i := range missing {
		if k == 1 {
			select {
			case <-answered:
			case <-ctx.Done():
			}
		}
		if stop.Load() || ctx.Err() != nil {
			break
		}
		g.Go(func() error {
			off := i * seg
			m := min(seg, d.Size-off)
			var err error
			for try := 0; try < 3; try++ {
				if err = fetchSegment(ctx, t.Repo, d, f, off, m, &moved, p, name, headers, whole); err == nil ||
					errors.Is(err, errWholeLanded) || errors.Is(err, ErrBadRange) || errors.Is(err, ErrUnauthorized) ||
					errors.Is(err, errdef.ErrNotFound) || errors.Is(err, ErrDigestMismatch) || ctx.Err() != nil || try == 2 {
					break
				}
				select { // a cut connection: again, after a moment
				case <-ctx.Done():
				case <-time.After(time.Duration(try+1) * 200 * time.Millisecond):
				}
			}
			headers() // (also when it failed)
			if errors.Is(err, errWholeLanded) {
				return nil
			}
			if err != nil {
				stop.Store(true)
				return err
			}
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				return fmt.Errorf("content store: fdatasync: %w", err)
			}
			mu.Lock()
			defer mu.Unlock()
			done.add(i, i+1)
			return writeLazyMap(segs, seg, d.Size, &done, false)
		})
	}
	err = g.Wait()
	n = moved.Load()
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return have, n, fmt.Errorf("fetch %s from %s (%d of %d bytes kept for resume): %w", dg, t.Ref, done.bytes(seg, d.Size), d.Size, err)
	}
	h := newHasher()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, d.Size)); err != nil {
		return have, n, fmt.Errorf("content store: read partial %s: %w", dg, err)
	}
	if got := h.digest(); got != dg {
		return have, n, fmt.Errorf("blob from %s hashes to %s, want %s: %w", t.Ref, got, dg, ErrDigestMismatch)
	}
	return have, n, nil
}

// fetchSegment asks the registry for [off, off+m) of blob d and writes it
// at off in f. The answer must be a 206 with exactly that Content-Range
// (else ErrBadRange) and m bytes. A 200 (the whole blob) goes to whole,
// and then the answer is errWholeLanded or whole's error.
func fetchSegment(ctx context.Context, repo *remote.Repository, d ocispec.Descriptor, f *os.File, off, m int64,
	moved *atomic.Int64, p Progress, name string, headers func(), whole func(body io.Reader) error) error {
	req, err := blobRequest(ctx, repo, d.Digest.String())
	if err != nil {
		return err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+m-1))
	var client remote.Client = auth.DefaultClient
	if repo.Client != nil {
		client = repo.Client
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		headers() // a whole-blob answer calls it once it is claimed
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		first, last, total, err := parseContentRange(cr)
		if err != nil || first != off || last != off+m-1 || (total >= 0 && total != d.Size) ||
			(resp.ContentLength >= 0 && resp.ContentLength != m) {
			return fmt.Errorf("asked for bytes=%d-%d, the registry answered 206 with Content-Range %q, Content-Length %d "+
				"(it or a proxy in front of it serves other bytes than asked): %w", off, off+m-1, cr, resp.ContentLength, ErrBadRange)
		}
	case http.StatusOK:
		rangeIgnoredHosts.Store(repo.Reference.Host(), time.Now())
		if resp.ContentLength >= 0 && resp.ContentLength != d.Size {
			return fmt.Errorf("whole-blob answer of %d bytes, the manifest says %d: %w", resp.ContentLength, d.Size, ErrDigestMismatch)
		}
		if err := whole(resp.Body); err != nil {
			return err
		}
		return errWholeLanded
	case http.StatusNotFound:
		return fmt.Errorf("%s: %w", d.Digest, errdef.ErrNotFound)
	case http.StatusUnauthorized:
		return fmt.Errorf("registry answered %s: %w", resp.Status, ErrUnauthorized)
	default:
		return fmt.Errorf("registry answered %s", resp.Status)
	}
	cr := &countingReader{r: io.LimitReader(resp.Body, m), n: moved, name: name, p: p}
	got, err := io.CopyBuffer(io.NewOffsetWriter(f, off), cr, make([]byte, 256<<10))
	if err == nil && got != m {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return fmt.Errorf("bytes %d-%d: the answer ended after %d of %d bytes: %w", off, off+m-1, got, m, err)
	}
	return nil
}
