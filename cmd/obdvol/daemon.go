package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/daemon"
	"github.com/obdvol/obdvol/metrics"
	"github.com/obdvol/obdvol/repo"
)

type daemonOptions struct {
	CacheSize    string
	NotifyFD     int
	Metrics      string // host:port of the Prometheus endpoint, "" for none
	MetricsAllow bool   // --metrics-allow-remote
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
	f.StringVar(&o.Metrics, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9863; port 0 picks one, see daemon status); default off")
	f.BoolVar(&o.MetricsAllow, "metrics-allow-remote", false, "let --metrics listen on an address other than loopback (metrics name every volume)")
	cmd.AddCommand(newDaemonStatusCommand(g))
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
	daemon.LimitMemory(g.CacheBytes)
	var mc *metrics.Collector
	if o.Metrics != "" {
		mc = metrics.New()
		g.OnSeal = mc.ObserveSeal
		repo.SetFetchObserver(mc)
		defer repo.SetFetchObserver(nil)
	} else if o.MetricsAllow {
		return usagef("--metrics-allow-remote needs --metrics ADDR")
	}
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
		Logf: logf, ErrorKind: errorKind, Metrics: mc})
	if err != nil {
		notify("ERR " + err.Error())
		return err
	}
	if mc != nil {
		// Listened for while holding the root's lock (a second daemon
		// fails with ErrRunning, not with the port in use) and before
		// any volume is served.
		mc.WatchCache(e.mgr.Cache())
		srv, err := metrics.Serve(ctx, o.Metrics, mc, metrics.ServeOptions{AllowRemote: o.MetricsAllow})
		if err != nil {
			h.Stop()
			if errors.Is(err, metrics.ErrBadAddress) || errors.Is(err, metrics.ErrNotLoopback) {
				err = usageError{fmt.Errorf("--metrics: %w", err)}
			}
			notify("ERR " + err.Error())
			return err
		}
		defer srv.Close()
		h.SetMetricsAddr(srv.Addr())
		logf("metrics at http://%s/metrics", srv.Addr())
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

func newDaemonStatusCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the running daemon: pid, memory, shared chunk cache counters, metrics address, active volumes",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDaemonStatus(cmd.Context(), cmd.OutOrStdout(), g)
		},
	}
}

func runDaemonStatus(ctx context.Context, out io.Writer, g *globalOptions) error {
	root, err := filepath.Abs(g.Root)
	if err != nil {
		return err
	}
	resp, err := (&daemon.Client{Root: root}).Do(ctx, &daemon.Request{Op: daemon.OpStatus})
	if err != nil {
		return err
	}
	if resp.Host == nil {
		return fmt.Errorf("the process on %s answered no daemon status (pid %d)", daemon.SocketPath(root), resp.PID)
	}
	hs := resp.Host
	if g.JSON {
		return printJSON(out, map[string]any{"daemon": hs, "volumes": resp.Volumes})
	}
	fmt.Fprintf(out, "pid:      %d\n", hs.PID)
	fmt.Fprintf(out, "rss:      %s\n", formatSize(hs.RSSBytes))
	fmt.Fprintf(out, "cache:    %d hits, %d misses, %d chunks decompressed (%s), %d evictions, %s held\n",
		hs.Cache.Hits, hs.Cache.Misses, hs.Cache.ChunksDecompressed, formatSize(hs.Cache.BytesDecompressed),
		hs.Cache.Evictions, formatSize(hs.Cache.Bytes))
	if hs.MetricsAddr != "" {
		fmt.Fprintf(out, "metrics:  http://%s/metrics\n", hs.MetricsAddr)
	}
	fmt.Fprintf(out, "active:   %d\n", hs.Active)
	for _, v := range resp.Volumes {
		fmt.Fprintf(out, "  %s\t%s\t%s\n", v.Name, v.Kind, v.Device)
	}
	return nil
}
