package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/daemon"
	"github.com/obdvol/obdvol/device/ublk"
	"github.com/obdvol/obdvol/metadata"
)

type activateOptions struct {
	Queues     int
	Depth      int
	ReadOnly   bool
	Persistent bool
}

func newActivateCommand(g *globalOptions) *cobra.Command {
	o := &activateOptions{}
	cmd := &cobra.Command{
		Use:   "activate VOL",
		Short: "Expose a volume as a block device /dev/ublkbN (needs root and the ublk driver)",
		Long: `Ask the host daemon (obdvol daemon; started detached, log under --root/run/, when none
runs) to expose the volume as /dev/ublkbN through the kernel's ublk driver, with the
stable name /dev/obdvol/VOL. With --persistent (the default) the daemon activates it
again whenever it starts (after a crash or a reboot); --persistent=false is a one-off.
While active, obdvol snapshot VOL@SNAP seals the volume inside the daemon at a flush
point (crash-consistent; freeze the filesystem with fsfreeze first for an
application-consistent snapshot). obdvol deactivate VOL flushes, stops and deletes
the device. Needs root and Linux 6.0+ with ublk_drv loaded; elsewhere use obdvol serve --nbd.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runActivate(cmd.Context(), cmd.OutOrStdout(), g, o, args[0])
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Queues, "queues", 0, "hardware queues (default: one per CPU)")
	f.IntVar(&o.Depth, "depth", 0, "requests in flight per queue (default 64)")
	f.BoolVar(&o.ReadOnly, "read-only", false, "a read-only device")
	f.BoolVar(&o.Persistent, "persistent", true, "activate again whenever the daemon starts (after a reboot)")
	return cmd
}

func newDeactivateCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "deactivate VOL",
		Short: "Flush, stop and delete a volume's block device or NBD export, and forget its activation",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDeactivate(cmd.Context(), cmd.OutOrStdout(), g, args[0])
		},
	}
}

func runActivate(ctx context.Context, out io.Writer, g *globalOptions, o *activateOptions, vol string) error {
	if _, _, err := parseRef(vol, snapForbidden); err != nil {
		return err
	}
	if o.Queues < 0 || o.Queues > metadata.MaxQueues || o.Depth < 0 || o.Depth > metadata.MaxDepth {
		return usagef("--queues %d --depth %d: want 1..%d queues of depth 1..%d", o.Queues, o.Depth, metadata.MaxQueues, metadata.MaxDepth)
	}
	if err := ublk.Preflight(); err != nil {
		return err // before anything starts
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	if _, err := volumeRecord(e, vol); err != nil {
		e.close()
		return err // a missing volume starts no daemon
	}
	e.close()
	c, _, err := ensureDaemon(ctx, g, e.root)
	if err != nil {
		return err
	}
	resp, err := c.Do(ctx, &daemon.Request{Op: daemon.OpActivate, Volume: vol, ReadOnly: o.ReadOnly,
		Queues: o.Queues, Depth: o.Depth, Persistent: o.Persistent})
	if err != nil {
		return err
	}
	s := resp.Volumes[0]
	if g.JSON {
		return printJSON(out, map[string]any{"volume": vol, "device": s.Device, "link": s.Link, "pid": resp.PID,
			"persistent": s.Persistent, "reattached": s.Reattached, "restored": s.Restored, "log": daemonLog(e.root)})
	}
	how := "active"
	switch {
	case s.Reattached:
		how = "reattached"
	case s.Restored:
		how = "active again (the daemon restored it at its start)"
	}
	fmt.Fprintf(out, "%s %s on %s", vol, how, s.Device)
	if s.Link != "" {
		fmt.Fprintf(out, " (%s)", s.Link)
	}
	fmt.Fprintf(out, ", daemon pid %d", resp.PID)
	if !s.Persistent {
		fmt.Fprint(out, ", not persistent")
	}
	fmt.Fprintln(out)
	return nil
}

func runDeactivate(ctx context.Context, out io.Writer, g *globalOptions, vol string) error {
	if _, _, err := parseRef(vol, snapForbidden); err != nil {
		return err
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	var st []daemon.VolumeStatus
	c := &daemon.Client{Root: e.root}
	if c.Running(ctx) {
		resp, err := c.Do(ctx, &daemon.Request{Op: daemon.OpDeactivate, Volume: vol})
		if err != nil {
			return err
		}
		st = resp.Volumes
	} else if err := daemon.ForgetInactive(e.mgr, vol); err != nil {
		return err
	}
	dev := ""
	if len(st) > 0 {
		dev = st[0].Device
	}
	if g.JSON {
		return printJSON(out, map[string]any{"volume": vol, "device": dev, "active": false, "persistent": false})
	}
	if dev == "" {
		fmt.Fprintf(out, "%s deactivated (it was not active; it will not be activated when the daemon starts)\n", vol)
		return nil
	}
	fmt.Fprintf(out, "%s deactivated (%s removed)\n", vol, dev)
	return nil
}

func daemonLog(root string) string { return root + "/run/daemon.log" }
