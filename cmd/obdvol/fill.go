package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
)

type fillOptions struct {
	Rate        string
	Concurrency int
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
			e, err := openEnv(g)
			if err != nil {
				return err
			}
			defer e.close()
			e.mirror = o.Mirror
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
	o.Mirror.register(cmd.Flags())
	return cmd
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
