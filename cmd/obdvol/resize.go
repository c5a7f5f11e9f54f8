package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/daemon"
	"github.com/obdvol/obdvol/volume"
)

type resizeOptions struct{ Shrink bool }

func newResizeCommand(g *globalOptions) *cobra.Command {
	o := &resizeOptions{}
	cmd := &cobra.Command{
		Use:   "resize VOL SIZE",
		Short: "Grow a volume, active or not (or shrink an inactive one, with --shrink); grown space reads as zeros",
		Long: `Grow a volume (or shrink it, with --shrink); grown space reads as zeros.

An active volume (served by the daemon) grows online, as lvextend grows a logical
volume: the daemon grows the open volume and then its ublk device, whose new size
the kernel announces (run resize2fs or xfs_growfs on the mounted filesystem next).
This needs a kernel with ublk UPDATE_SIZE (Linux 6.16+); on an older one the grow is
refused before anything changes (deactivate, resize, activate). NBD clients
connected during the grow keep their size until they reconnect. Shrinking an active
volume is refused.`,
		Example: "  obdvol resize golden 20G\n  obdvol resize vm1 40G && resize2fs /dev/obdvol/vm1",
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runResize(cmd.Context(), cmd.OutOrStdout(), g, o, args[0], args[1])
		},
	}
	cmd.Flags().BoolVar(&o.Shrink, "shrink", false, "allow shrinking an inactive volume (drops data past the new end)")
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
	device := ""
	err = e.mgr.Resize(name, size, o.Shrink)
	if errors.Is(err, volume.ErrInUse) {
		// Another process holds the volume open: its owner (the
		// daemon) grows it online, if one answers.
		resp, rerr := askOwner(ctx, e.root, name, &daemon.Request{Op: daemon.OpResize, Volume: name, Size: size})
		if !errors.Is(rerr, daemon.ErrNotRunning) {
			err = rerr
			if rerr == nil && len(resp.Volumes) == 1 {
				device = resp.Volumes[0].Device
			}
		}
	}
	if err != nil {
		return err
	}
	if g.JSON {
		m := map[string]any{"volume": name, "size": size, "online": device != ""}
		if device != "" {
			m["device"] = device
		}
		return printJSON(out, m)
	}
	if device != "" {
		fmt.Fprintf(out, "resized %s to %s online (%s; grow its filesystem next, e.g. resize2fs)\n", name, formatSize(size), device)
		return nil
	}
	fmt.Fprintf(out, "resized %s to %s\n", name, formatSize(size))
	return nil
}
