package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/daemon"
)

type daemonOptions struct {
	CacheSize string
	NotifyFD  int
}

func newDaemonCommand(g *globalOptions) *cobra.Command {
	o := &daemonOptions{}
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the host daemon: serve every active volume of --root (what obdvol.service runs)",
		Long: `Run the host daemon in the foreground: one process per --root that owns every active
volume (ublk devices and NBD exports) with one shared chunk cache. activate, deactivate,
serve, snapshot, flush and the device columns of info and list reach it through
--root/run/daemon.sock (mode 0600; other users are refused). activate and serve start
one detached when none runs. At start it reattaches the ublk devices a crashed daemon
left, and activates again every volume activated with --persistent (the default).
SIGINT/SIGTERM: flush every volume and exit; ublk devices stay in the kernel for the
next daemon to reattach (obdvol deactivate deletes one). See docs/daemon.md.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDaemon(cmd.Context(), cmd.OutOrStdout(), g, o, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.CacheSize, "cache-size", "256M", "decompressed-chunk cache shared by all volumes")
	f.IntVar(&o.NotifyFD, "notify-fd", -1, "")
	f.MarkHidden("notify-fd")
	return cmd
}

// runDaemon serves until ctx ends. ready, if not nil, is called once the
// control socket answers (tests use it).
func runDaemon(ctx context.Context, out io.Writer, g *globalOptions, o *daemonOptions, ready func(*daemon.Host)) error {
	size, err := parseSize(o.CacheSize)
	if err != nil || size < 1<<20 || size > 1<<40 {
		return usagef("--cache-size %q: want a size from 1M to 1T", o.CacheSize)
	}
	notify := func(msg string) {
		if o.NotifyFD >= 0 {
			nf := os.NewFile(uintptr(o.NotifyFD), "notify")
			fmt.Fprintln(nf, msg)
			nf.Close()
			o.NotifyFD = -1
		}
	}
	g.CacheBytes = int(size)
	e, err := openEnv(g)
	if err != nil {
		notify("ERR " + err.Error())
		return err
	}
	closeEnv := true
	defer func() {
		if closeEnv {
			e.close()
		}
	}()
	// Pin no mount point (root is absolute already).
	os.Chdir("/")
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, "obdvol daemon: "+f+"\n", a...) }
	h, err := daemon.Open(daemon.Config{Root: e.root, Manager: e.mgr, Open: e.openVolume, DevDir: g.DevDir,
		Logf: logf, ErrorKind: errorKind})
	if err != nil {
		notify("ERR " + err.Error())
		return err
	}
	daemon.Harden(logf)
	defer func() {
		if n := h.LeftDevices(); n > 0 {
			// Their queues still serve the kernel until we exit: the
			// manager must not close their layers.
			closeEnv = false
			logf("stopped; %d ublk device(s) left for the next daemon to reattach (obdvol deactivate deletes one)", n)
		}
	}()
	return h.Run(ctx, func() {
		notify("OK")
		daemon.NotifySystemd("READY=1")
		logf("pid %d serving %s (control socket %s)", os.Getpid(), e.root, filepath.Join(e.root, "run", "daemon.sock"))
		if ready != nil {
			ready(h)
		}
	})
}
