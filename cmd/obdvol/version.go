package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/snapshot"
)

func newVersionCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of obdvol and of its layer format",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			v := "devel"
			if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
				v = bi.Main.Version
			}
			if g.JSON {
				return printJSON(cmd.OutOrStdout(), map[string]any{"obdvol": v, "layer_format": snapshot.Version, "go": runtime.Version()})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "obdvol %s (layer format %d, %s)\n", v, snapshot.Version, runtime.Version())
			return nil
		},
	}
}
