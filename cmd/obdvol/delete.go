package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

type deleteOptions struct{ Force bool }

func newDeleteCommand(g *globalOptions) *cobra.Command {
	o := &deleteOptions{}
	cmd := &cobra.Command{
		Use:   "delete VOL | VOL@SNAP",
		Short: "Delete a volume (with its snapshots) or one snapshot",
		Long: `Delete a volume with its snapshots, or one snapshot. Refused while a clone was made
from it, unless --force (the clone keeps every layer it uses). Layers stay in the
store while anything references them; obdvol gc removes the rest.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDelete(cmd.Context(), cmd.OutOrStdout(), g, o, args[0])
		},
	}
	cmd.Flags().BoolVar(&o.Force, "force", false, "delete even though clones were made from it")
	return cmd
}

func runDelete(ctx context.Context, out io.Writer, g *globalOptions, o *deleteOptions, ref string) error {
	name, snap, err := parseRef(ref, snapOptional)
	if err != nil {
		return err
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	if snap != "" {
		err = e.mgr.DeleteSnapshot(name, snap, o.Force)
	} else {
		err = e.mgr.Delete(name, o.Force)
	}
	if err != nil {
		return err
	}
	if g.JSON {
		return printJSON(out, map[string]any{"deleted": ref})
	}
	fmt.Fprintf(out, "deleted %s\n", ref)
	return nil
}
