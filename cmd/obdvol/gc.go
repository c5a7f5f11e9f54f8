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
		Short: "Remove layers that no volume, snapshot or operation in flight references, and print what was freed",
		Long: `Remove the layers (complete and lazily fetched) that no volume or snapshot
references and no operation in flight (a pull, a snapshot) has leased, the
leases of processes that died, and what dead writers left behind: temp files
of a killed snapshot or flatten, partial downloads of a failed pull (a later
pull of that layer starts over), orphan present-maps. Files a running process
is writing are kept, however old.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGC(cmd.Context(), cmd.OutOrStdout(), g, o)
		},
	}
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "only print what would be removed")
	cmd.Flags().StringVar(&o.CacheMax, "cache-max", "", "also shrink lazily fetched data to at most this size (it is fetched again on demand)")
	return cmd
}

func runGC(ctx context.Context, out io.Writer, g *globalOptions, o *gcOptions) error {
	// Every flag is checked before anything is removed.
	limit := int64(-1)
	if o.CacheMax != "" {
		n, err := parseSize(o.CacheMax)
		if err != nil {
			return usageError{fmt.Errorf("--cache-max: %w", err)}
		}
		limit = int64(n)
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	res, err := e.mgr.GC(ctx, o.DryRun, func(d string) int64 { n, _ := e.store.Size(d); return n })
	if err != nil {
		return err
	}
	var evicted int64
	if limit >= 0 && !o.DryRun {
		if evicted, err = evictLazy(e, limit); err != nil {
			return err
		}
	}
	if g.JSON {
		return printJSON(out, map[string]any{"dry_run": o.DryRun, "blobs": res.Blobs, "bytes": res.Bytes,
			"lazy": res.Lazy, "lazy_bytes_freed": evicted, "expired_leases": res.ExpiredLeases,
			"leftovers": res.Leftovers, "leftover_bytes": res.LeftoverBytes})
	}
	verb := "removed"
	if o.DryRun {
		verb = "would remove"
	}
	if evicted > 0 {
		fmt.Fprintf(out, "freed %s of lazily fetched data\n", formatSize(uint64(evicted)))
	}
	for _, d := range res.Blobs {
		fmt.Fprintf(out, "%s %s\n", verb, d)
	}
	for _, d := range res.Lazy {
		fmt.Fprintf(out, "%s lazily fetched %s\n", verb, d)
	}
	for _, id := range res.ExpiredLeases {
		fmt.Fprintf(out, "%s expired lease %s (its process is gone)\n", verb, id)
	}
	for _, p := range res.Leftovers {
		fmt.Fprintf(out, "%s leftover %s\n", verb, p)
	}
	fmt.Fprintf(out, "%s %d blob(s), %s; %d leftover file(s), %s\n", verb, len(res.Blobs), formatSize(res.Bytes),
		len(res.Leftovers), formatSize(res.LeftoverBytes))
	return nil
}

// gcLazy bounds lazily fetched data after a command (--lazy-cache-max).
// Removing the lazy files nothing references is gc's job (Manager.GC,
// under the catalogue's lock, respecting leases).
func gcLazy(e *env, o *gcOptions) (int64, error) {
	if o.CacheMax == "" || o.DryRun {
		return 0, nil
	}
	limit, err := parseSize(o.CacheMax)
	if err != nil {
		return 0, err
	}
	return evictLazy(e, int64(limit))
}

// evictLazy evicts fetched pages of the lazy layers the catalogue
// references (largest first) until lazily fetched data fits in limit
// bytes. Complete local blobs are never evicted, only pages that a
// registry can serve again.
func evictLazy(e *env, limit int64) (int64, error) {
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
		if !refs[d] || e.store.Has(d) {
			continue // not ours to evict: gc removes it, or a pull in flight holds it
		}
		total += e.store.LocalBytes(d)
		live = append(live, d)
	}
	sort.Slice(live, func(i, j int) bool { return e.store.LocalBytes(live[i]) > e.store.LocalBytes(live[j]) })
	for _, d := range live {
		if total <= limit {
			break
		}
		n := e.store.LocalBytes(d)
		keep := max(0, n-(total-limit))
		f, err := e.store.EvictLazy(d, keep)
		if err != nil {
			return freed, err
		}
		freed += f
		total -= f
	}
	return freed, nil
}
