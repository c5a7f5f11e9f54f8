package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/volume"
)

// globalOptions are the flags every command has.
type globalOptions struct {
	Root       string
	JSON       bool
	NoProgress bool
	// RemoteTimeout bounds how long a read of lazily pulled data retries
	// an unreachable registry before failing with an I/O error.
	RemoteTimeout time.Duration
	CPUProfile    string
	// LazyCacheMax, when set, bounds lazily fetched data after every
	// command (as gc --cache-max does).
	LazyCacheMax string
	// DevDir is where the daemon keeps the stable names of its devices
	// (default /dev/obdvol; tests point it elsewhere).
	DevDir string
	// CacheBytes sizes the manager's chunk cache (obdvol daemon
	// --cache-size); 0 is the manager's default.
	CacheBytes int
	// OnSeal, when set, is the manager's seal observer (the daemon's
	// metrics); not a flag.
	OnSeal func(vol string, d time.Duration, err error)
}

const helpTail = `
Sizes and offsets accept a number of bytes or a suffix K, M, G, T, P, E
(1024-based): 512, 64M, 10G, 1T. Snapshots are addressed VOL@SNAP.

Exit codes: 0 ok, 1 error, 2 usage error.
With --json, every command prints one JSON object on stdout, errors
included ({"version":1,"error":{"message":...,"kind":...,"exit_code":N}}).`

func newRootCommand() (*cobra.Command, *globalOptions) {
	opts := &globalOptions{}
	def := os.Getenv("OBDVOL_ROOT")
	if def == "" {
		def = "/var/lib/obdvol"
	}
	cmd := &cobra.Command{
		Use:           "obdvol",
		Short:         "Volumes made of compressed, content-addressed snapshot chains",
		Long:          "obdvol manages block volumes as chains of immutable, compressed, verified layers\nplus one writable layer, and moves snapshots between hosts through OCI registries.\n" + helpTail,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	// Without Args and a Run, cobra reports an unknown command with a
	// plain error (exit 1); it is a usage error (exit 2).
	cmd.Args = func(c *cobra.Command, args []string) error {
		if len(args) == 0 {
			return nil
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
		if s := c.SuggestionsFor(args[0]); len(s) > 0 {
			msg += fmt.Sprintf(" (did you mean %q?)", s[0])
		}
		return usageError{errors.New(msg + "; see obdvol --help")}
	}
	cmd.RunE = func(c *cobra.Command, args []string) error { return c.Help() }
	f := cmd.PersistentFlags()
	f.StringVar(&opts.Root, "root", def, "state directory (env OBDVOL_ROOT)")
	f.BoolVar(&opts.JSON, "json", false, "print JSON")
	f.BoolVar(&opts.NoProgress, "no-progress", false, "do not show progress")
	f.StringVar(&opts.LazyCacheMax, "lazy-cache-max", os.Getenv("OBDVOL_LAZY_CACHE_MAX"), "bound lazily fetched data to this size after each command (env OBDVOL_LAZY_CACHE_MAX)")
	f.StringVar(&opts.CPUProfile, "cpuprofile", "", "write a CPU profile of this command (for performance work)")
	f.MarkHidden("cpuprofile")
	f.StringVar(&opts.DevDir, "dev-dir", os.Getenv("OBDVOL_DEV_DIR"), "where the daemon keeps /dev/obdvol/VOL links (env OBDVOL_DEV_DIR; default /dev/obdvol)")
	f.MarkHidden("dev-dir")
	cmd.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		// Checked before any command runs: env.close applies it after the
		// command, when an error could no longer stop anything.
		if opts.LazyCacheMax != "" {
			if _, err := parseSize(opts.LazyCacheMax); err != nil {
				return usagef("--lazy-cache-max (or OBDVOL_LAZY_CACHE_MAX): %v", err)
			}
		}
		if opts.CPUProfile == "" {
			return nil
		}
		f, err := os.Create(opts.CPUProfile)
		if err != nil {
			return err
		}
		return pprof.StartCPUProfile(f)
	}
	cmd.PersistentPostRun = func(cmd *cobra.Command, args []string) {
		if opts.CPUProfile != "" {
			pprof.StopCPUProfile()
		}
	}
	f.DurationVar(&opts.RemoteTimeout, "remote-timeout", 30*time.Second, "how long a read of lazily pulled data retries an unreachable registry")
	cmd.AddCommand(
		newCreateCommand(opts), newListCommand(opts), newInfoCommand(opts),
		newImportCommand(opts), newExportCommand(opts), newSnapshotCommand(opts),
		newRollbackCommand(opts), newDeleteCommand(opts), newResizeCommand(opts),
		newFlattenCommand(opts), newGCCommand(opts), newVerifyCommand(opts),
		newVersionCommand(opts), newPushCommand(opts), newPullCommand(opts), newFillCommand(opts),
		newLoginCommand(opts), newLogoutCommand(opts), newServeCommand(opts),
		newActivateCommand(opts), newDeactivateCommand(opts), newDaemonCommand(opts),
	)
	return cmd, opts
}

// env is what commands work with: the catalogue, the content store and
// the volume manager under --root.
type env struct {
	root  string
	cat   *metadata.Catalog
	store *repo.Store
	mgr   *volume.Manager
	// pending are layers a lazy pull is registering: not yet in the
	// catalogue, fetched from where the pull found them.
	pending map[string]pendingLayer
	opts    *globalOptions
	mirror  mirrorFlags // the command's --mirror, --hosts-dir: lazy layers use them too
	// mirrorsOnly: lazy layers fetch from their registries' mirrors only
	// (fill --mirrors-only).
	mirrorsOnly bool
}

type pendingLayer struct {
	fetch repo.RangeFetcher
	size  int64
}

func openEnv(opts *globalOptions) (*env, error) {
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		return nil, err
	}
	store, err := repo.NewStore(root)
	if err != nil {
		return nil, err
	}
	e := &env{root: root, cat: cat, store: store, pending: map[string]pendingLayer{}, opts: opts}
	resolve := remoteResolver(e)
	blobs := repo.Blobs{Store: store, Lazy: repo.LazyOptions{RetryFor: opts.RemoteTimeout}, Remote: func(d string) (repo.RangeFetcher, int64, error) {
		if p, ok := e.pending[d]; ok {
			return p.fetch, p.size, nil
		}
		return resolve(d)
	}}
	mgr := volume.NewManager(root, cat, blobs, volume.Options{CacheBytes: opts.CacheBytes, OnSeal: opts.OnSeal})
	e.mgr = mgr
	if _, err := mgr.Recover(); errors.Is(err, metadata.ErrCorrupt) || errors.Is(err, metadata.ErrBusy) {
		return nil, err // the catalogue cannot answer: nothing else would work
	} else if err != nil {
		// Recovery keeps whatever it could not check (nothing is removed on
		// a guess); the command itself may still work, or fail with a
		// clearer error of its own (a corrupt catalogue, a busy one).
		e.warnf("recovery: %v", err)
	}
	return e, nil
}

// warnf prints a warning on stderr (never in --json mode, whose stdout is
// one object).
func (e *env) warnf(format string, args ...any) {
	if e.opts != nil && e.opts.JSON {
		return
	}
	fmt.Fprintf(os.Stderr, "obdvol: warning: "+format+"\n", args...)
}

// openVolume opens a volume for I/O and warns about a snapshot whose seal
// could not be finished at open (the volume works; the next snapshot
// finishes it).
func (e *env) openVolume(name string) (*volume.Volume, error) {
	v, err := e.mgr.Open(name)
	if err != nil {
		return nil, err
	}
	if err := v.SealPending(); err != nil {
		e.warnf("volume %s: an interrupted snapshot could not be finished (%v); the volume works and the next snapshot retries it", name, err)
	}
	return v, nil
}

func (e *env) close() {
	e.mgr.Close()
	if e.opts != nil && e.opts.LazyCacheMax != "" {
		// Best effort: the command itself succeeded or failed already.
		if _, err := gcLazy(e, &gcOptions{CacheMax: e.opts.LazyCacheMax}); err != nil {
			e.warnf("--lazy-cache-max: %v", err)
		}
	}
}

// exactArgs is cobra.ExactArgs as a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %d argument(s), got %d (see --help)", cmd.CommandPath(), n, len(args))
		}
		return nil
	}
}

// parseRef splits VOL[@SNAP]; wantSnap forces/forbids the @SNAP part.
func parseRef(ref string, wantSnap int) (vol, snap string, err error) {
	vol, snap, err = metadata.ParseRef(ref)
	if err != nil {
		return "", "", usageError{err}
	}
	switch {
	case wantSnap > 0 && snap == "":
		return "", "", usagef("%q: want VOL@SNAP", ref)
	case wantSnap < 0 && snap != "":
		return "", "", usagef("%q: want a volume name, not a snapshot", ref)
	}
	return vol, snap, nil
}

const (
	snapOptional  = 0
	snapRequired  = 1
	snapForbidden = -1
)
