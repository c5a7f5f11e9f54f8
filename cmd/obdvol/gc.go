package main

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/metadata"
)

type gcOptions struct {
	DryRun   bool
	CacheMax string
}

func newGCCommand(g *globalOptions) *cobra.Command {
	o := &gcOptions{}
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove layers that no volume or snapshot references, and print what was freed",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGC(cmd.Context(), cmd.OutOrStdout(), g, o)
		},
	}
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "only print what would be removed")
	cmd.Flags().StringVar(&o.CacheMax, "cache-max", "", "also shrink lazily fetched data to at most this size (it is fetched again on demand)")
	return cmd
}

func runGC(ctx context.Context, out io.Writer, g *globalOptions, o *gcOptions) error {
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	res, err := e.mgr.GC(ctx, o.DryRun, func(d string) int64 { n, _ := e.store.Size(d); return n })
	if err != nil {
		return err
	}
	lazyFreed, err := gcLazy(e, o)
	if err != nil {
		return err
	}
	if g.JSON {
		return printJSON(out, map[string]any{"dry_run": o.DryRun, "blobs": res.Blobs, "bytes": res.Bytes, "lazy_bytes_freed": lazyFreed})
	}
	if lazyFreed > 0 {
		fmt.Fprintf(out, "freed %s of lazily fetched data\n", formatSize(uint64(lazyFreed)))
	}
	verb := "removed"
	if o.DryRun {
		verb = "would remove"
	}
	for _, d := range res.Blobs {
		fmt.Fprintf(out, "%s %s\n", verb, d)
	}
	fmt.Fprintf(out, "%s %d blob(s), %s\n", verb, len(res.Blobs), formatSize(res.Bytes))
	return nil
}

// gcLazy removes lazy partial files no volume references and, with
// --cache-max, evicts fetched pages (largest blobs first) until the lazy
// cache fits. Complete local blobs are never evicted: only pages that a
// registry can serve again.
func gcLazy(e *env, o *gcOptions) (int64, error) {
	digests, err := e.store.LazyDigests()
	if err != nil {
		return 0, err
	}
	var refs map[string]bool
	if err := e.cat.View(func(tx *metadata.Tx) (err error) { refs, err = tx.ReferencedLayers(); return }); err != nil {
		return 0, err
	}
	var freed, total int64
	var live []string
	for _, d := range digests {
		n := e.store.LocalBytes(d)
		if !refs[d] || e.store.Has(d) {
			if !o.DryRun {
				if err := e.store.RemoveLazy(d); err != nil {
					return freed, err
				}
			}
			freed += n
			continue
		}
		total += n
		live = append(live, d)
	}
	if o.CacheMax == "" || o.DryRun {
		return freed, nil
	}
	limit, err := parseSize(o.CacheMax)
	if err != nil {
		return freed, err
	}
	sort.Slice(live, func(i, j int) bool { return e.store.LocalBytes(live[i]) > e.store.LocalBytes(live[j]) })
	for _, d := range live {
		if total <= int64(limit) {
			break
		}
		n := e.store.LocalBytes(d)
		keep := max(0, n-(total-int64(limit)))
		f, err := e.store.EvictLazy(d, keep)
		if err != nil {
			return freed, err
		}
		freed += f
		total -= f
	}
	return freed, nil
}
