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
	// Active: the device's server holds the volume's lock (a record
	// whose server died is shown with active false).
	Active     bool                 `json:"active"`
	Activation *metadata.Activation `json:"activation,omitempty"` // persistent activation
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
			le := listEntry{Name: v.Name, Size: v.Size, Layers: len(v.Layers), Snapshots: []string{}, Origin: v.Origin,
				Device: v.Device, Activation: v.Activation}
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
	for i := range entries {
		entries[i].Active = deviceLive(e, entries[i].Name, entries[i].Device)
	}
	if g.JSON {
		return printJSON(out, map[string]any{"volumes": entries})
	}
	t := newTable(out)
	fmt.Fprintln(t, "NAME\tSIZE\tLAYERS\tSNAPSHOTS\tORIGIN\tDEVICE")
	for _, le := range entries {
		dev := deviceColumn(le.Device, le.Active)
		origin := le.Origin
		if origin == "" {
			origin = "-"
		}
		fmt.Fprintf(t, "%s\t%s\t%d\t%d\t%s\t%s\n", le.Name, formatSize(le.Size), le.Layers, len(le.Snapshots), origin, dev)
	}
	return t.Flush()
}

// deviceLive reports whether d's server is alive: it holds the volume's
// lock (never judged by the PID, which may name another process now).
func deviceLive(e *env, name string, d *metadata.Device) bool {
	if d == nil {
		return false
	}
	held, err := e.mgr.HeldBy(name, d.PID)
	return err == nil && held
}

// deviceColumn is what list and info print for a device record.
func deviceColumn(d *metadata.Device, live bool) string {
	switch {
	case d == nil:
		return "-"
	case live:
		return d.Path
	case d.Kind == "ublk":
		return d.Path + " (server died: obdvol daemon reattaches it)"
	}
	return "-" // a dead NBD server's: nothing is left of it
}
