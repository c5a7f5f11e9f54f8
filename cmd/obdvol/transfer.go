package main

import (
	"fmt"
	"io"
	"os"
	"sort"
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
	Mirror      mirrorFlags // registered by pull (and fill); zero: the environment's

	RangeConcurrency int // pull: range requests at once for one large blob (rangeauth)
	// MirrorsOnly (no flag: fill --mirrors-only): content comes from the
	// registry's configured mirrors only (repo.TargetOptions.MirrorsOnly).
	MirrorsOnly bool
}

func (t *transferFlags) register(f *pflag.FlagSet) {
	f.BoolVar(&t.PlainHTTP, "plain-http", false, "use plain HTTP (no TLS)")
	f.IntVar(&t.Concurrency, "concurrency", 4, "blobs transferred in parallel")
	f.IntVar(&t.RangeConcurrency, "range-concurrency", 4, "pull: range requests in parallel for one blob of 64 MiB or more (1: one stream; default: --concurrency)")
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
	return repo.OpenTarget(r, repo.TargetOptions{PlainHTTP: f.PlainHTTP, Mirrors: f.Mirror.Mirrors, HostsDir: f.Mirror.HostsDir,
		MirrorsOnly: f.MirrorsOnly})
}

// mirrorFlags say where pulls may be served from besides the registry
// (see repo/mirrors.go): the pull and fill commands take them, and the
// lazy layers a command opens (remoteResolver, env.mirror) use them too.
// Unset, each process reads OBDVOL_MIRRORS and OBDVOL_HOSTS_DIR (the
// daemon serving lazy volumes included).
type mirrorFlags struct {
	Mirrors  []string // nil: $OBDVOL_MIRRORS
	HostsDir string   // "": $OBDVOL_HOSTS_DIR, else /etc/obdvol/certs.d
}

func (m *mirrorFlags) register(f *pflag.FlagSet) {
	f.StringArrayVar(&m.Mirrors, "mirror", nil, "mirror (pull-through cache, P2P agent) tried before every registry for blobs, as http[s]://host[:port][/path]; repeatable; \"\" for none (default $"+repo.EnvMirrors+")")
	f.StringVar(&m.HostsDir, "hosts-dir", "", "directory of per-registry <host>/hosts.toml files, containerd's format (default $"+repo.EnvHostsDir+", else "+repo.DefaultHostsDir+")")
}

// check validates the mirror URLs (a usage error, before anything runs);
// an empty --mirror "" means none, whatever the environment says.
func (m *mirrorFlags) check() error {
	if m.Mirrors == nil {
		return nil
	}
	kept := []string{}
	for _, u := range m.Mirrors {
		if u == "" {
			continue
		}
		if _, err := repo.ParseEndpointURL(u, false); err != nil {
			return usageError{fmt.Errorf("--mirror: %w", err)}
		}
		kept = append(kept, u)
	}
	m.Mirrors = kept
	return nil
}

// args gives the flags back, for a child process (the background fill).
func (m *mirrorFlags) args() []string {
	var a []string
	for _, u := range m.Mirrors {
		a = append(a, "--mirror", u)
	}
	if m.Mirrors != nil && len(m.Mirrors) == 0 {
		a = append(a, "--mirror=") // none, whatever the environment says
	}
	if m.HostsDir != "" {
		a = append(a, "--hosts-dir", m.HostsDir)
	}
	return a
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
		var openErr error
		for _, org := range l.Origins {
			plain := strings.HasPrefix(org, "http://")
			o := strings.TrimPrefix(org, "http://")
			if strings.HasPrefix(o, "oci:") {
				continue
			}
			t, err := openTarget(o+"@"+digest, &transferFlags{PlainHTTP: plain, Mirror: e.mirror, MirrorsOnly: e.mirrorsOnly})
			if err != nil || t.Repo == nil {
				openErr = err
				continue
			}
			fetch, err := repo.LayerRanges(t.Repo, digest, int64(l.StoredBytes), repoParts(l.Parts[org]))
			if err != nil {
				return nil, 0, fmt.Errorf("layer %s at %s: %w", digest, o, err)
			}
			return fetch, int64(l.StoredBytes), nil
		}
		if openErr != nil {
			return nil, 0, fmt.Errorf("layer %s is not in the store and its registry cannot be reached: %w (%w)", digest, openErr, repo.ErrNotFound)
		}
		return nil, 0, fmt.Errorf("layer %s is not in the store and has no registry origin: %w", digest, repo.ErrNotFound)
	}
}

// rate formats bytes over a duration.
func rate(n int64, d time.Duration) string {
	return formatSize(uint64(float64(n)/max(d.Seconds(), 1e-6))) + "/s"
}

// printHosts says which hosts served a pull when mirrors are configured.
func printHosts(out io.Writer, t *repo.Target) {
	hs := t.HostStats()
	names := make([]string, 0, len(hs))
	for h := range hs {
		names = append(names, h)
	}
	sort.Strings(names)
	for _, h := range names {
		s, kind := hs[h], "registry"
		if s.Mirror {
			kind = "mirror"
		}
		fmt.Fprintf(out, "  %s %s: %s in %d answer(s), %d fell through\n", kind, h, formatSize(uint64(s.Bytes)), s.Requests, s.Failures)
	}
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
