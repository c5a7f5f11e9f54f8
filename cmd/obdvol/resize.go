package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

type resizeOptions struct{ Shrink bool }

func newResizeCommand(g *globalOptions) *cobra.Command {
	o := &resizeOptions{}
	cmd := &cobra.Command{
		Use:     "resize VOL SIZE",
		Short:   "Grow a volume (or shrink it, with --shrink); grown space reads as zeros",
		Example: "  obdvol resize golden 20G",
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runResize(cmd.Context(), cmd.OutOrStdout(), g, o, args[0], args[1])
		},
	}
	cmd.Flags().BoolVar(&o.Shrink, "shrink", false, "allow shrinking (drops data past the new end)")
	return cmd
}

func runResize(ctx context.Context, out io.Writer, g *globalOptions, o *resizeOptions, ref, sizeArg string) error {
	name, _, err := parseRef(ref, snapForbidden)
	if err != nil {
		return err
	}
	size, err := parseSize(sizeArg)
	if err != nil {
		return err
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	if err := e.mgr.Resize(name, size, o.Shrink); err != nil {
		return err
	}
	if g.JSON {
		return printJSON(out, map[string]any{"volume": name, "size": size})
	}
	fmt.Fprintf(out, "resized %s to %s\n", name, formatSize(size))
	return nil
}
