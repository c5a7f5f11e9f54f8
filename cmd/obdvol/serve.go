package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/daemon"
)

type serveOptions struct {
	NBD            string
	RecordPrefetch string
	ReadOnly       bool
	AllowRemote    bool
	Foreground     bool
	Persistent     bool
}

func newServeCommand(g *globalOptions) *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve VOL [VOL...] --nbd unix:PATH|tcp:HOST:PORT",
		Short: "Export volumes over NBD (one export per volume), through the host daemon or in the foreground",
		Long: `Export volumes over NBD: each volume is an export named after it; the first is also
the default export. qemu, nbdcopy, qemu-img, fio and the kernel's nbd client connect to
nbd+unix:///VOL?socket=PATH or nbd://HOST:PORT/VOL.
By default the host daemon (obdvol daemon, started detached when none runs) serves
them and serve returns; obdvol deactivate VOL stops an export. With --persistent the
daemon exports them again whenever it starts. With --foreground this process serves
them until SIGINT or SIGTERM (stop accepting, finish in-flight requests, flush, exit).
While served, obdvol snapshot VOL@SNAP seals the volume inside its server without
stopping the export. NBD has no authentication or encryption here: TCP listens on
loopback only unless --allow-remote.`,
		Example: "  obdvol serve golden --nbd unix:/run/obdvol/golden.sock\n  obdvol serve a b --nbd tcp:127.0.0.1:10809 --read-only --foreground",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("serve needs at least one volume")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd.Context(), cmd.OutOrStdout(), g, o, args, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.NBD, "nbd", "", "listen on unix:PATH or tcp:HOST:PORT")
	f.BoolVar(&o.ReadOnly, "read-only", false, "refuse writes")
	f.BoolVar(&o.AllowRemote, "allow-remote", false, "allow TCP on non-loopback addresses (no auth, no TLS)")
	f.BoolVar(&o.Foreground, "foreground", false, "serve in this process until SIGINT/SIGTERM instead of through the daemon")
	f.BoolVar(&o.Persistent, "persistent", false, "the daemon exports them again whenever it starts")
	f.StringVar(&o.RecordPrefetch, "record-prefetch", "", "with --foreground: write the ranges clients read, in order, to this file at exit (for push --prefetch)")
	return cmd
}

// parseNBDSpec checks --nbd before anything is opened.
func parseNBDSpec(spec string, allowRemote bool) (daemon.NBDSpec, error) {
	s, err := daemon.ParseNBDSpec(spec, allowRemote)
	if errors.Is(err, daemon.ErrBadRequest) {
		return s, usageError{err}
	}
	return s, err
}

// runServe exports vols. In the foreground it serves until ctx ends;
// ready, if not nil, receives the URIs once clients can connect (tests
// use it). Otherwise it asks the daemon and returns.
func runServe(ctx context.Context, out io.Writer, g *globalOptions, o *serveOptions, vols []string, ready chan<- []string) error {
	if o.NBD == "" {
		return usagef("serve needs --nbd unix:PATH or --nbd tcp:HOST:PORT")
	}
	spec, err := parseNBDSpec(o.NBD, o.AllowRemote)
	if err != nil {
		return err
	}
	for _, name := range vols {
		if _, _, err := parseRef(name, snapForbidden); err != nil {
			return err
		}
	}
	switch {
	case o.Foreground && o.Persistent:
		return usagef("--persistent is for the daemon: drop --foreground")
	case !o.Foreground && o.RecordPrefetch != "":
		return usagef("--record-prefetch needs --foreground")
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	if !o.Foreground {
		return serveThroughDaemon(ctx, out, g, e, o, spec, vols)
	}
	printed := func(uris []string) {
		if g.JSON {
			printJSON(out, map[string]any{"serving": uris, "pid": os.Getpid()})
		} else {
			for _, u := range uris {
				fmt.Fprintf(out, "serving %s\n", u)
			}
		}
		if ready != nil {
			ready <- uris
		}
	}
	f := &daemon.Foreground{Root: e.root, Manager: e.mgr, Open: e.openVolume, Spec: spec, ReadOnly: o.ReadOnly,
		RecordReads: o.RecordPrefetch != "", ErrorKind: errorKind, Ready: printed}
	recorded, err := f.Serve(ctx, vols)
	if o.RecordPrefetch != "" && recorded != nil {
		b, _ := json.Marshal(recorded)
		if werr := os.WriteFile(o.RecordPrefetch, b, 0o600); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

func serveThroughDaemon(ctx context.Context, out io.Writer, g *globalOptions, e *env, o *serveOptions, spec daemon.NBDSpec, vols []string) error {
	for _, v := range vols {
		if _, err := volumeRecord(e, v); err != nil {
			return err // a missing volume starts no daemon
		}
	}
	if spec.Unix != "" {
		// The daemon's working directory is not ours.
		abs, err := filepath.Abs(spec.Unix)
		if err != nil {
			return err
		}
		spec.Unix = abs
	}
	c, _, err := ensureDaemon(ctx, g, e.root)
	if err != nil {
		return err
	}
	resp, err := c.Do(ctx, &daemon.Request{Op: daemon.OpServeNBD, Volumes: vols, Listen: spec.String(),
		ReadOnly: o.ReadOnly, AllowRemote: o.AllowRemote, Persistent: o.Persistent})
	if err != nil {
		return err
	}
	var uris []string
	for _, s := range resp.Volumes {
		uris = append(uris, s.Device)
	}
	if g.JSON {
		return printJSON(out, map[string]any{"serving": uris, "pid": resp.PID, "persistent": o.Persistent, "log": daemonLog(e.root)})
	}
	for _, u := range uris {
		fmt.Fprintf(out, "serving %s (daemon pid %d)\n", u, resp.PID)
	}
	return nil
}
