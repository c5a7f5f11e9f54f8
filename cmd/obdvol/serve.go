package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/device/nbd"
	"github.com/obdvol/obdvol/internal/unixsock"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
)

type serveOptions struct {
	NBD            string
	RecordPrefetch string
	ReadOnly       bool
	AllowRemote    bool
}

func newServeCommand(g *globalOptions) *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve VOL [VOL...] --nbd unix:PATH|tcp:HOST:PORT",
		Short: "Serve volumes over NBD (one export per volume) until SIGINT/SIGTERM",
		Long: `Serve volumes over NBD in the foreground: each volume is an export named after it;
the first is also the default export. qemu, nbdcopy, qemu-img, fio and the kernel's
nbd client connect to nbd+unix:///VOL?socket=PATH or nbd://HOST:PORT/VOL.
While serving, obdvol snapshot VOL@SNAP seals the volume inside this process
without stopping the export. SIGINT or SIGTERM: stop accepting, finish in-flight
requests, flush, exit. NBD has no authentication or encryption here: TCP listens
on loopback only unless --allow-remote.`,
		Example: "  obdvol serve golden --nbd unix:/run/obdvol/golden.sock\n  obdvol serve a b --nbd tcp:127.0.0.1:10809 --read-only",
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
	f.StringVar(&o.RecordPrefetch, "record-prefetch", "", "write the ranges clients read, in order, to this file at exit (for push --prefetch)")
	return cmd
}

// nbdSpec is a parsed --nbd value.
type nbdSpec struct {
	unix string // socket path, or ""
	tcp  string // host:port, or ""
}

// parseNBDSpec checks --nbd before anything is opened: unix:PATH, or
// tcp:HOST:PORT on loopback unless allowRemote.
func parseNBDSpec(spec string, allowRemote bool) (nbdSpec, error) {
	switch {
	case strings.HasPrefix(spec, "unix:"):
		path := strings.TrimPrefix(spec, "unix:")
		if path == "" {
			return nbdSpec{}, usagef("--nbd unix: needs a path")
		}
		return nbdSpec{unix: path}, nil
	case strings.HasPrefix(spec, "tcp:"):
		addr := strings.TrimPrefix(spec, "tcp:")
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nbdSpec{}, usagef("--nbd %s: %v", spec, err)
		}
		if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && host != "localhost" && !allowRemote {
			return nbdSpec{}, usagef("--nbd %s: NBD has no authentication or TLS here; listen on loopback or pass --allow-remote", spec)
		}
		return nbdSpec{tcp: addr}, nil
	}
	return nbdSpec{}, usagef("--nbd wants unix:PATH or tcp:HOST:PORT, got %q", spec)
}

// listen opens the listener and returns it with the URI prefix clients
// use.
func (s nbdSpec) listen() (net.Listener, func(export string) string, error) {
	if s.unix != "" {
		// Only a stale socket is replaced; the new one has mode 0600.
		l, err := unixsock.Listen(s.unix)
		if err != nil {
			return nil, nil, err
		}
		return l, func(x string) string { return "nbd+unix:///" + x + "?socket=" + s.unix }, nil
	}
	l, err := net.Listen("tcp", s.tcp)
	if err != nil {
		return nil, nil, err
	}
	a := l.Addr().String()
	return l, func(x string) string { return "nbd://" + a + "/" + x }, nil
}

// runServe serves until ctx ends. ready, if not nil, receives the URIs
// once clients can connect (tests use it).
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
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	var exports []nbd.Export
	var opened []*volume.Volume
	defer func() {
		for _, v := range opened {
			v.Close()
		}
	}()
	for _, name := range vols {
		v, err := e.openVolume(name)
		if err != nil {
			return err
		}
		opened = append(opened, v)
		if o.RecordPrefetch != "" {
			v.RecordReads(1 << 16)
		}
		exports = append(exports, nbd.Export{Name: name, Backend: v, ReadOnly: o.ReadOnly, Description: "obdvol volume " + name})
	}
	l, uri, err := spec.listen()
	if err != nil {
		return err
	}
	var uris []string
	for _, v := range opened {
		u := uri(v.Name())
		uris = append(uris, u)
		stop, err := serveControl(ctx, e.root, v, func() map[string]any {
			return map[string]any{"kind": "nbd", "uri": u, "pid": os.Getpid()}
		})
		if err != nil {
			l.Close()
			return err
		}
		defer stop()
		if err := setDevice(e, v.Name(), &metadata.Device{Kind: volume.DeviceNBD, Path: u, PID: os.Getpid(), ID: -1}); err != nil {
			l.Close()
			return err
		}
		defer setDevice(e, v.Name(), nil)
	}
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
	srv := nbd.NewServer(exports)
	srv.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	err = srv.Serve(ctx, l)
	if o.RecordPrefetch != "" {
		lists := map[string][]volume.Range{}
		for _, v := range opened {
			lists[v.Name()] = v.Recorded()
		}
		b, _ := json.Marshal(lists)
		if werr := os.WriteFile(o.RecordPrefetch, b, 0o600); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// setDevice records (or clears, with nil) where a volume is served.
func setDevice(e *env, name string, d *metadata.Device) error {
	return e.cat.Update(func(tx *metadata.Tx) error {
		v, err := tx.Volume(name)
		if err != nil {
			return err
		}
		v.Device = d
		return tx.PutVolume(v)
	})
}
