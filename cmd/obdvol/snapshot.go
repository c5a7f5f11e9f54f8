package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/daemon"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
)

func newSnapshotCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "snapshot VOL@SNAP",
		Short: "Seal the writable layer into an immutable compressed layer and record a snapshot",
		Long: `Seal the volume's writable layer into a new immutable, compressed, content-addressed
layer, record snapshot SNAP, and give the volume a fresh empty writable layer. A volume
with no writes since its last snapshot records the snapshot without a new layer.`,
		Example: "  obdvol snapshot golden@v1",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshot(cmd.Context(), cmd.OutOrStdout(), g, args[0])
		},
	}
}

func runSnapshot(ctx context.Context, out io.Writer, g *globalOptions, ref string) error {
	name, snap, err := parseRef(ref, snapRequired)
	if err != nil {
		return err
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	// A volume served by another process (ublk, NBD) is sealed by that
	// process at a flush point; the device stays.
	var res *volume.SealResult
	err = withOwner(e, name, func(v *volume.Volume) (err error) {
		res, err = v.Snapshot(ctx, snap)
		return err
	}, func() error {
		resp, err := askOwner(ctx, e.root, name, &daemon.Request{Op: daemon.OpSnapshot, Snapshot: snap})
		if err == nil {
			res = resp.Snapshot
		}
		return err
	})
	if err != nil {
		return err
	}
	if g.JSON {
		return printJSON(out, map[string]any{"snapshot": res.Snapshot, "layer": res.Layer, "seconds": res.Duration.Seconds()})
	}
	if res.Layer == nil {
		fmt.Fprintf(out, "snapshot %s recorded (no writes since the last one: no new layer)\n", ref)
		return nil
	}
	l := res.Layer
	fmt.Fprintf(out, "snapshot %s: layer %s, %s data stored in %s (%d extents) in %.2fs\n",
		ref, l.Digest, formatSize(l.DataBytes), formatSize(l.StoredBytes), l.Extents, res.Duration.Seconds())
	return nil
}

func volumeRecord(e *env, name string) (*metadata.Volume, error) {
	var v *metadata.Volume
	err := e.cat.View(func(tx *metadata.Tx) (err error) { v, err = tx.Volume(name); return })
	return v, err
}
