package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

func newFlattenCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "flatten VOL",
		Short: "Merge a volume's chain into one layer (snapshots keep their chains)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFlatten(cmd.Context(), cmd.OutOrStdout(), g, args[0])
		},
	}
}

func runFlatten(ctx context.Context, out io.Writer, g *globalOptions, ref string) error {
	name, _, err := parseRef(ref, snapForbidden)
	if err != nil {
		return err
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	v, err := e.openVolume(name)
	if err != nil {
		return err
	}
	defer v.Close()
	before := len(v.Record().Layers)
	l, err := v.Flatten(ctx)
	if err != nil {
		return err
	}
	if g.JSON {
		return printJSON(out, map[string]any{"volume": name, "layers_before": before, "layer": l})
	}
	if l == nil {
		fmt.Fprintf(out, "%s has no sealed layers: nothing to flatten\n", name)
		return nil
	}
	fmt.Fprintf(out, "flattened %s: %d layer(s) -> 1 (%s, %s stored)\n", name, before, l.Digest, formatSize(l.StoredBytes))
	return nil
}
