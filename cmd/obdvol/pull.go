package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/volume"
)

type pullOptions struct {
	transferFlags
	Lazy     bool
	Wait     bool
	FillRate string
	// Background fill policy (fillpolicy.go).
	Fill                  string
	FillDelay, FillJitter time.Duration
	fillTimesSet          bool // --fill-delay or --fill-jitter given
	// Eager pulls through mirrors (repo/mirror_warm.go).
	MirrorWait time.Duration
}

func newPullCommand(g *globalOptions) *cobra.Command {
	o := &pullOptions{}
	cmd := &cobra.Command{
		Use:   "pull REF VOL",
		Short: "Pull a snapshot from an OCI registry or layout into volume VOL",
		Long: `Pull the snapshot REF names and record it as volume VOL at that snapshot (or move
an existing VOL forward to it, when VOL's chain is a prefix of the pulled one and
VOL has no writes since its last snapshot). Only layers this host lacks are
fetched; each is verified against its digest before it enters the store, and an
interrupted pull resumes where it stopped. Nothing half-pulled is ever visible.

--lazy registers the volume after fetching only the manifest, the config and each
layer's trailer and index; reads then fetch the chunks they need by range
requests (verified by their checksums). obdvol fill VOL (or --wait) completes it.

--fill chooses what completes a lazy volume in the background (a detached
obdvol fill, logging under --root/run/): mirror-only (the default) fills from
the configured mirrors (--mirror, OBDVOL_MIRRORS, else the registry's
hosts.toml) once they have stored the layers, never from the origin, after
--fill-delay/--fill-jitter when given, and does nothing without a mirror; none leaves it to reads and obdvol fill; now fills from the
origin at once; delayed fills from the origin after --fill-delay plus a random
part of --fill-jitter. Every host of a fleet filling from the origin multiplies
its egress by the fleet's size (docs/fleet.md).`,
		Example: "  obdvol pull registry.example.com/disks/golden:v1 golden\n  obdvol pull --lazy 127.0.0.1:5000/golden:v1 golden --plain-http",
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.fillTimesSet = cmd.Flags().Changed("fill-delay") || cmd.Flags().Changed("fill-jitter")
			if !cmd.Flags().Changed("range-concurrency") {
				o.RangeConcurrency = o.Concurrency // one large blob as parallel as many blobs
			}
			return runPull(cmd.Context(), cmd.OutOrStdout(), g, o, args[0], args[1])
		},
	}
	f := cmd.Flags()
	o.transferFlags.register(f)
	o.Mirror.register(f)
	f.BoolVar(&o.Lazy, "lazy", false, "fetch data on demand; the volume is usable at once")
	f.BoolVar(&o.Wait, "wait", false, "with --lazy: complete the download before returning")
	f.StringVar(&o.Fill, "fill", defaultFillPolicy, "with --lazy: background fill policy: mirror-only, none, now or delayed (true = now, false = none)")
	f.StringVar(&o.FillRate, "fill-rate", "100M", "with --lazy: bytes per second the background fill may use (0: unlimited)")
	f.DurationVar(&o.FillDelay, "fill-delay", 10*time.Minute, "with --fill=delayed (or mirror-only, when given): wait this long before filling")
	f.DurationVar(&o.FillJitter, "fill-jitter", 10*time.Minute, "with --fill=delayed (or mirror-only, when given): and a random part of this (spreads a fleet's fills)")
	f.DurationVar(&o.MirrorWait, "mirror-wait", repo.DefaultMirrorWait, "with mirrors: wait at most this long, per layer, for the first pull-through mirror to store it before fetching it (0: do not wait)")
	return cmd
}

func runPull(ctx context.Context, out io.Writer, g *globalOptions, o *pullOptions, ref, vol string) error {
	if err := metadata.ValidateName("volume", vol); err != nil {
		return usageError{err}
	}
	if err := o.Mirror.check(); err != nil {
		return err
	}
	t, err := openTarget(ref, &o.transferFlags)
	if err != nil {
		return err
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	e.mirror = o.Mirror
	lazy := o.Lazy && t.Repo != nil // a layout is local: pull it whole
	var plan fillPlan
	if lazy {
		if plan, err = planFill(o, t.MirrorHosts()); err != nil {
			return err
		}
	}
	p := newBarProgress(g, "pull")
	// The lease keeps gc (in any process) away from the layers from
	// before the first is fetched until AdoptChain references them.
	var lease *volume.Lease
	defer func() { lease.Release() }()
	takeLease := func(digests []string) (err error) {
		lease, err = e.mgr.Lease("pull "+vol, digests...)
		return err
	}
	res, err := repo.Pull(ctx, e.store, t, repo.PullOptions{Concurrency: o.Concurrency, Progress: p, ManifestOnly: lazy, Lease: takeLease,
		RangeConcurrency: o.RangeConcurrency, MirrorWait: pullMirrorWait(o.MirrorWait)})
	finishBar(p)
	if err != nil {
		return err
	}
	cfg := res.Config
	org := origin(t, &o.transferFlags)
	spec := volume.ChainSpec{Size: cfg.VirtualSize, BlockSize: cfg.BlockSize, ChunkSize: cfg.ChunkSize, Codec: cfg.Codec,
		Snapshot: cfg.Snapshot, Origin: t.Ref.String(), Lease: lease}
	var remote int
	for _, l := range cfg.Layers {
		state := metadata.LayerFull
		if !e.store.Has(l.Digest) {
			state = metadata.LayerRemote
			fetch, err := repo.LayerRanges(t.Repo, l.Digest, l.Size, l.Parts)
			if err != nil {
				return err
			}
			e.pending[l.Digest] = pendingLayer{fetch: fetch, size: l.Size}
			remote++
		}
		ml := metadata.Layer{Digest: l.Digest, StoredBytes: uint64(l.Size),
			VirtualSize: l.VirtualSize, DataBytes: l.DataBytes, Extents: l.Extents, State: state, Origins: []string{org}}
		if len(l.Parts) > 0 { // lazy reads from org fetch the parts (remoteResolver)
			ml.Parts = map[string][]metadata.Part{org: metaParts(l.Parts)}
		}
		spec.Layers = append(spec.Layers, ml)
	}
	start := time.Now()
	if testHookBeforeAdopt != nil {
		testHookBeforeAdopt()
	}
	ad, err := e.mgr.AdoptChain(vol, spec)
	if err != nil {
		return err
	}
	if err := lease.Release(); err != nil {
		return err
	}
	ready := time.Since(start) + res.Duration
	var prefetched int64
	if lazy && len(cfg.Prefetch) > 0 {
		if prefetched, err = replayPrefetch(e, vol, cfg.Prefetch); err != nil {
			return err
		}
	}
	var filled int64
	if lazy && o.Wait {
		if filled, err = fillVolume(ctx, e, g, vol); err != nil {
			return err
		}
	}
	var fillLog string
	if lazy && !o.Wait && remote > 0 && plan.Skipped == "" {
		if fillLog, err = startBackgroundFill(e, vol, o.FillRate, plan); err != nil {
			return err
		}
	}
	if g.JSON {
		return printJSON(out, map[string]any{"reference": t.Ref.String(), "volume": vol, "snapshot": cfg.Snapshot, "fill_log": fillLog,
			"fast_forward": ad.FastForward, "prefetched_bytes": prefetched, "lazy": lazy, "remote_layers": remote, "result": res.TransferResult,
			"filled_bytes": filled, "ready_seconds": ready.Seconds(), "hosts": t.HostStats(), "fill_policy": plan.Policy, "fill_delay_seconds": plan.Delay.Seconds()})
	}
	verb := "created"
	if ad.FastForward {
		verb = "moved forward"
	}
	fmt.Fprintf(out, "pulled %s: volume %s %s at %s@%s (%d layers)\n  fetched %s in %d blob(s), had %s in %d, %.2fs, %s\n",
		t.Ref, vol, verb, vol, cfg.Snapshot, len(cfg.Layers), formatSize(uint64(res.BytesMoved)), res.BlobsMoved,
		formatSize(uint64(res.BytesSkipped)), res.BlobsSkipped, res.Duration.Seconds(), rate(res.BytesMoved, res.Duration))
	printHosts(out, t)
	if lazy && !o.Wait && remote > 0 {
		fmt.Fprintf(out, "  lazy: %d layer(s) fetch on demand (usable after %.2fs); obdvol fill %s completes them\n", remote, ready.Seconds(), vol)
		if prefetched > 0 {
			fmt.Fprintf(out, "  prefetched %s named by the snapshot's prefetch list\n", formatSize(uint64(prefetched)))
		}
		switch {
		case fillLog != "" && plan.Delay > 0:
			fmt.Fprintf(out, "  background fill (%s) starts in %s (log %s)\n", plan.Policy, plan.Delay.Round(time.Second), fillLog)
		case fillLog != "":
			fmt.Fprintf(out, "  background fill (%s) started (log %s)\n", plan.Policy, fillLog)
		default:
			fmt.Fprintf(out, "  no background fill (%s)\n", plan.Skipped)
		}
	}
	return nil
}

// testHookBeforeAdopt, set by tests, runs between the fetch of a pull's
// layers and the transaction that references them.
var testHookBeforeAdopt func()

// startBackgroundFill runs `obdvol fill VOL --rate R` (with the plan's
// delay and mirrors) detached (its own session, surviving this command),
// logging under --root/run/.
func startBackgroundFill(e *env, vol, rate string, plan fillPlan) (string, error) {
	if _, err := parseSize(rate); err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	logPath := filepath.Join(e.root, "run", "fill-"+vol+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return "", err
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return "", err
	}
	defer lf.Close()
	cmd := exec.Command(self, append(append([]string{"--root", e.root, "--no-progress"}, plan.fillArgs(vol, rate)...), e.mirror.args()...)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("background fill: %w", err)
	}
	cmd.Process.Release()
	return logPath, nil
}

// replayPrefetch reads the ranges of a prefetch list through the volume,
// so that a lazy volume fetches them now, in the order they were used.
func replayPrefetch(e *env, vol string, ranges []repo.PrefetchRange) (int64, error) {
	v, err := e.openVolume(vol)
	if err != nil {
		return 0, err
	}
	defer v.Close()
	rs := make([]volume.Range, len(ranges))
	for i, r := range ranges {
		rs[i] = volume.Range{Off: r.Off, Len: r.Len}
	}
	return v.Prefetch(rs)
}

// pullMirrorWait is --mirror-wait as repo.PullOptions.MirrorWait: 0 (do
// not wait) is negative there.
func pullMirrorWait(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
