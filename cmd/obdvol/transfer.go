package main

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/pflag"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
)

// transferFlags are shared by push and pull.
type transferFlags struct {
	PlainHTTP   bool
	Concurrency int
}

func (t *transferFlags) register(f *pflag.FlagSet) {
	f.BoolVar(&t.PlainHTTP, "plain-http", false, "use plain HTTP (no TLS)")
	f.IntVar(&t.Concurrency, "concurrency", 4, "blobs transferred in parallel")
}

// barProgress renders repo.Progress as one byte progress bar on stderr.
type barProgress struct {
	mu  sync.Mutex
	bar *progressbar.ProgressBar
	tot int64
}

func newBarProgress(g *globalOptions, label string) repo.Progress {
	if g.NoProgress || g.JSON || !isTerminal(os.Stderr) {
		return nil
	}
	return &barProgress{bar: progressbar.NewOptions64(-1, progressbar.OptionSetDescription(label),
		progressbar.OptionSetWriter(os.Stderr), progressbar.OptionShowBytes(true), progressbar.OptionShowCount(),
		progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())}
}

func (b *barProgress) Start(name string, total int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tot += total
	b.bar.ChangeMax64(b.tot)
}
func (b *barProgress) Add(name string, n int64)    { b.bar.Add64(n) }
func (b *barProgress) Done(name string, err error) {}

func finishBar(p repo.Progress) {
	if b, ok := p.(*barProgress); ok {
		b.bar.Finish()
	}
}

// openTarget parses and opens a reference. Plain HTTP is allowed only
// when asked for.
func openTarget(ref string, f *transferFlags) (*repo.Target, error) {
	r, err := repo.ParseRef(ref)
	if err != nil {
		return nil, usageError{err}
	}
	return repo.OpenTarget(r, repo.TargetOptions{PlainHTTP: f.PlainHTTP})
}

// origin is how a layer's remote location is recorded: the repository,
// with "http://" when it was reached over plain HTTP.
func origin(t *repo.Target, f *transferFlags) string {
	if f.PlainHTTP && !t.Ref.IsLayout() {
		return "http://" + t.Ref.Repository()
	}
	return t.Ref.Repository()
}

// remoteResolver lets the volume manager open layers that are not local
// from the registries recorded as their origins (lazy pulls).
func remoteResolver(e *env) func(digest string) (repo.RangeFetcher, int64, error) {
	return func(digest string) (repo.RangeFetcher, int64, error) {
		var l *metadata.Layer
		if err := e.cat.View(func(tx *metadata.Tx) (err error) { l, err = tx.Layer(digest); return }); err != nil {
			return nil, 0, fmt.Errorf("layer %s is not in the store and has no record: %w", digest, repo.ErrNotFound)
		}
		for _, org := range l.Origins {
			plain := strings.HasPrefix(org, "http://")
			o := strings.TrimPrefix(org, "http://")
			if strings.HasPrefix(o, "oci:") {
				continue
			}
			t, err := openTarget(o+"@"+digest, &transferFlags{PlainHTTP: plain})
			if err != nil || t.Repo == nil {
				continue
			}
			fetch, err := repo.LayerRanges(t.Repo, digest, int64(l.StoredBytes), repoParts(l.Parts[org]))
			if err != nil {
				return nil, 0, fmt.Errorf("layer %s at %s: %w", digest, o, err)
			}
			return fetch, int64(l.StoredBytes), nil
		}
		return nil, 0, fmt.Errorf("layer %s is not in the store and has no registry origin: %w", digest, repo.ErrNotFound)
	}
}

// rate formats bytes over a duration.
func rate(n int64, d time.Duration) string {
	return formatSize(uint64(float64(n)/max(d.Seconds(), 1e-6))) + "/s"
}

// repoParts and metaParts convert a layer's parts between the artifact's
// form (repo.Part) and the catalogue's (metadata.Part, by origin).
func repoParts(ps []metadata.Part) []repo.Part {
	var out []repo.Part
	for _, p := range ps {
		out = append(out, repo.Part{Digest: p.Digest, Size: int64(p.Size)})
	}
	return out
}

func metaParts(ps []repo.Part) []metadata.Part {
	var out []metadata.Part
	for _, p := range ps {
		out = append(out, metadata.Part{Digest: p.Digest, Size: uint64(p.Size)})
	}
	return out
}
