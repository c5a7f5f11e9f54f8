package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

type rollbackOptions struct{ Force bool }

func newRollbackCommand(g *globalOptions) *cobra.Command {
	o := &rollbackOptions{}
	cmd := &cobra.Command{
		Use:   "rollback VOL@SNAP",
		Short: "Return a volume to exactly a snapshot's content (drops layers, rewrites nothing)",
		Long: `Return the volume to snapshot SNAP: its chain becomes the snapshot's and its writable
layer is discarded. It takes the same time whatever the volume's size. Snapshots newer
than SNAP are removed, which needs --force; a snapshot that a clone was made from is
never removed (the rollback is refused, naming the clone).`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRollback(cmd.Context(), cmd.OutOrStdout(), g, o, args[0])
		},
	}
	cmd.Flags().BoolVar(&o.Force, "force", false, "remove snapshots newer than SNAP")
	return cmd
}

func runRollback(ctx context.Context, out io.Writer, g *globalOptions, o *rollbackOptions, ref string) error {
	name, snap, err := parseRef(ref, snapRequired)
	if err != nil {
		return err
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	removed, err := e.mgr.Rollback(name, snap, o.Force)
	if err != nil {
		return err
	}
	if removed == nil {
		removed = []string{}
	}
	if g.JSON {
		return printJSON(out, map[string]any{"volume": name, "snapshot": snap, "removed_snapshots": removed})
	}
	fmt.Fprintf(out, "rolled %s back to %s", name, snap)
	if len(removed) > 0 {
		fmt.Fprintf(out, " (removed snapshots %v)", removed)
	}
	fmt.Fprintln(out)
	return nil
}
