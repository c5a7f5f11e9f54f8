package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/metadata"
)

func newListCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List volumes",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runList(cmd.Context(), cmd.OutOrStdout(), g)
		},
	}
}

type listEntry struct {
	Name      string           `json:"name"`
	Size      uint64           `json:"size"`
	Layers    int              `json:"layers"`
	Snapshots []string         `json:"snapshots"`
	Origin    string           `json:"origin,omitempty"`
	Device    *metadata.Device `json:"device,omitempty"`
}

func runList(ctx context.Context, out io.Writer, g *globalOptions) error {
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	entries := []listEntry{}
	err = e.cat.View(func(tx *metadata.Tx) error {
		vols, err := tx.Volumes()
		if err != nil {
			return err
		}
		for _, v := range vols {
			snaps, err := tx.Snapshots(v.Name)
			if err != nil {
				return err
			}
			le := listEntry{Name: v.Name, Size: v.Size, Layers: len(v.Layers), Snapshots: []string{}, Origin: v.Origin, Device: v.Device}
			for _, s := range snaps {
				le.Snapshots = append(le.Snapshots, s.Name)
			}
			entries = append(entries, le)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if g.JSON {
		return printJSON(out, map[string]any{"volumes": entries})
	}
	t := newTable(out)
	fmt.Fprintln(t, "NAME\tSIZE\tLAYERS\tSNAPSHOTS\tORIGIN\tDEVICE")
	for _, le := range entries {
		dev := "-"
		if le.Device != nil {
			dev = le.Device.Path
		}
		origin := le.Origin
		if origin == "" {
			origin = "-"
		}
		fmt.Fprintf(t, "%s\t%s\t%d\t%d\t%s\t%s\n", le.Name, formatSize(le.Size), le.Layers, len(le.Snapshots), origin, dev)
	}
	return t.Flush()
}
