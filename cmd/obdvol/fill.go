package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
)

type fillOptions struct {
	Rate        string
	Concurrency int
	Delay       time.Duration // wait before opening anything (a delayed fill)
	OnlyFrom    []string      // mirrors: fetch from these only, never the origin (a mirror-only fill)
	MirrorsOnly bool          // fetch from the registries' configured mirrors only, never the origin
	MirrorWait  time.Duration // at most this long for a mirror to have the layers
	Mirror      mirrorFlags
}

func newFillCommand(g *globalOptions) *cobra.Command {
	o := &fillOptions{}
	cmd := &cobra.Command{
		Use:   "fill VOL",
		Short: "Complete a lazily pulled volume: fetch every missing chunk and verify each layer",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, _, err := parseRef(args[0], snapForbidden); err != nil {
				return err
			}
			rateLimit, err := parseSize(o.Rate)
			if err != nil {
				return err
			}
			if err := o.Mirror.check(); err != nil {
				return err
			}
			for _, m := range o.OnlyFrom {
				if _, _, err := parseMirror(m); err != nil {
					return usageError{err}
				}
			}
			if o.Delay < 0 {
				return usagef("--delay must not be negative")
			}
			if o.MirrorsOnly && len(o.OnlyFrom) > 0 {
				return usagef("--mirrors-only and --only-from: give one")
			}
			if err := fillWait(cmd.Context(), cmd.OutOrStdout(), g, args[0], o.Delay); err != nil {
				return err
			}
			e, err := openEnv(g)
			if err != nil {
				return err
			}
			defer e.close()
			e.mirror = o.Mirror
			if len(o.OnlyFrom) > 0 {
				layers, err := useMirrorsOnly(e, args[0], o.OnlyFrom)
				if err != nil {
					return err
				}
				logf(cmd.OutOrStdout(), g, "fill %s: from mirrors only: %s", args[0], strings.Join(o.OnlyFrom, ", "))
				if err := warmMirrors(cmd.Context(), cmd.OutOrStdout(), g, args[0], layers, o.MirrorWait); err != nil {
					return err
				}
			}
			if o.MirrorsOnly {
				e.mirrorsOnly = true
				logf(cmd.OutOrStdout(), g, "fill %s: from the registries' configured mirrors only", args[0])
				if err := warmConfiguredMirrors(cmd.Context(), cmd.OutOrStdout(), g, e, args[0], o.MirrorWait); err != nil {
					return err
				}
			}
			fillRate, fillConcurrency = int64(rateLimit), o.Concurrency
			n, err := fillVolume(cmd.Context(), e, g, args[0])
			if err != nil {
				return err
			}
			return printFill(cmd.OutOrStdout(), g, args[0], n)
		},
	}
	cmd.Flags().StringVar(&o.Rate, "rate", "0", "bytes per second at most (0: unlimited), e.g. 50M")
	cmd.Flags().IntVar(&o.Concurrency, "concurrency", 2, "range requests in flight")
	cmd.Flags().DurationVar(&o.Delay, "delay", 0, "wait this long before starting (pull --fill=delayed passes it)")
	cmd.Flags().StringSliceVar(&o.OnlyFrom, "only-from", nil, "fetch from these mirrors (http(s)://host[:port]) only, never from the layers' origin (pull --fill=mirror-only passes them)")
	cmd.Flags().BoolVar(&o.MirrorsOnly, "mirrors-only", false, "fetch only from the mirrors configured for the layers' registries (--mirror, $"+repo.EnvMirrors+", hosts.toml), never from the origin (pull --fill=mirror-only passes it when the mirrors come from hosts.toml)")
	cmd.Flags().DurationVar(&o.MirrorWait, "mirror-wait", 15*time.Minute, "with --only-from or --mirrors-only: wait at most this long for a pull-through mirror to store the layers before ranges are asked of it")
	o.Mirror.register(cmd.Flags())
	return cmd
}

// fillWait waits out a delayed fill's delay before anything under --root is
// opened (the waiting process holds nothing), saying so in the fill log.
func fillWait(ctx context.Context, out io.Writer, g *globalOptions, vol string, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	logf(out, g, "fill %s: waiting %s before starting (delayed fill, pid %d)", vol, d, os.Getpid())
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
	}
	logf(out, g, "fill %s: delay over, starting", vol)
	return nil
}

// logf writes a line of the fill log (stdout; nothing in --json mode).
func logf(out io.Writer, g *globalOptions, format string, args ...any) {
	if !g.JSON {
		fmt.Fprintf(out, format+"\n", args...)
	}
}

var (
	fillRate        int64
	fillConcurrency int
)

func printFill(out io.Writer, g *globalOptions, vol string, n int64) error {
	if g.JSON {
		return printJSON(out, map[string]any{"volume": vol, "fetched_bytes": n})
	}
	fmt.Fprintf(out, "%s is complete on this host (fetched %s)\n", vol, formatSize(uint64(n)))
	return nil
}

// fillVolume completes every lazy layer of vol's chain and marks it full.
func fillVolume(ctx context.Context, e *env, g *globalOptions, vol string) (int64, error) {
	rec, err := volumeRecord(e, vol)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, d := range rec.Layers {
		if e.store.Has(d) {
			continue
		}
		l, err := e.mgr.Layer(d)
		if err != nil {
			return total, err
		}
		lb, ok := l.Source().(*repo.LazyBlob)
		if !ok {
			return total, fmt.Errorf("layer %s is neither local nor lazy", d)
		}
		before := lb.Fetched()
		if err := lb.Fill(ctx, e.store, repo.FillOptions{Rate: fillRate, Concurrency: fillConcurrency}); err != nil {
			return total, err
		}
		total += lb.Fetched() - before
		e.cat.Update(func(tx *metadata.Tx) error {
			if lr, err := tx.Layer(d); err == nil {
				lr.State = metadata.LayerFull
				return tx.PutLayer(lr)
			}
			return nil
		})
	}
	return total, nil
}
