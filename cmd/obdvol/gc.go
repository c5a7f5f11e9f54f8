package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

type gcOptions struct{ DryRun bool }

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
	if g.JSON {
		return printJSON(out, map[string]any{"dry_run": o.DryRun, "blobs": res.Blobs, "bytes": res.Bytes})
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
