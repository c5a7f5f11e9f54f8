package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/obdvol/obdvol/device/nbd"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
)

// nbdGroup is one NBD listener and the volumes it exports.
type nbdGroup struct {
	spec   NBDSpec
	remote bool // --allow-remote
	vols   []*active
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// stop closes the listener, lets requests in flight finish, flushes the
// writable exports and returns the server's error. Later calls return
// the same error.
func (g *nbdGroup) stop() error {
	g.once.Do(func() {
		g.cancel()
		g.err = <-g.done
	})
	return g.err
}

// startGroup listens on spec and serves members there; their device
// paths become their export URIs. The caller holds groupMu.
func (h *Host) startGroup(spec NBDSpec, remote bool, members []*active) (*nbdGroup, error) {
	l, uri, err := spec.Listen()
	if err != nil {
		return nil, err
	}
	if spec.TCP != "" {
		// Port 0 picked a port: record that one, so that a restart
		// listens where the clients were told to connect.
		spec.TCP = l.Addr().String()
	}
	exports := make([]nbd.Export, len(members))
	for i, a := range members {
		exports[i] = nbd.Export{Name: a.name, Backend: h.backend(a.v), ReadOnly: a.readOnly, Description: "obdvol volume " + a.name}
	}
	srv := nbd.NewServer(exports)
	srv.Logf = h.cfg.Logf
	ctx, cancel := context.WithCancel(context.Background())
	g := &nbdGroup{spec: spec, remote: remote, vols: members, cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := srv.Serve(ctx, l)
		// Serve closes l from another goroutine and may return before
		// that Close has removed the socket's name; closing again
		// waits for it (the removal runs once). Otherwise a listener
		// started at once on the same path (leaveGroup) could have its
		// fresh socket removed by the old Close.
		l.Close()
		g.done <- err
	}()
	h.mu.Lock()
	for _, a := range members {
		a.group, a.device = g, uri(a.name)
	}
	h.groups[spec.String()] = g
	h.mu.Unlock()
	return g, nil
}

// ServeNBD exports the request's volumes on one new NBD listener.
func (h *Host) ServeNBD(r *Request) ([]VolumeStatus, error) {
	spec, err := ParseNBDSpec(r.Listen, r.AllowRemote)
	if err != nil {
		return nil, err
	}
	if spec.Unix != "" && !filepath.IsAbs(spec.Unix) {
		return nil, fmt.Errorf("%w: the daemon wants an absolute socket path, got %q", ErrBadRequest, spec.Unix)
	}
	names := append([]string(nil), r.Volumes...)
	sorted := append([]string(nil), names...)
	sort.Strings(sorted) // lock in one order: no deadlock between requests
	for _, n := range sorted {
		unlock := h.lockName(n)
		defer unlock()
	}
	vols := make([]*active, 0, len(names))
	for _, n := range names {
		vols = append(vols, &active{name: n, kind: metadata.ActivationNBD, id: -1, readOnly: r.ReadOnly})
	}
	return h.export(spec, r.AllowRemote, vols, nil, r.Persistent)
}

// export opens the volumes of vols (names and options filled in), serves
// them on spec and adopts them. persistent records an activation for
// each (acts, when not nil, keeps each one's recorded activation instead:
// a restore). The caller holds the volumes' name locks.
func (h *Host) export(spec NBDSpec, remote bool, vols []*active, acts []*metadata.Activation, persistent bool) ([]VolumeStatus, error) {
	h.groupMu.Lock()
	defer h.groupMu.Unlock()
	h.mu.Lock()
	g := h.groups[spec.String()]
	var busy *active
	for _, a := range vols {
		if b := h.vols[a.name]; b != nil && busy == nil {
			busy = b
		}
	}
	h.mu.Unlock()
	if g != nil {
		return nil, fmt.Errorf("this daemon already listens on %s (exporting %s): deactivate those or choose another address: %w",
			spec, groupNames(g), volume.ErrRefused)
	}
	if busy != nil {
		return nil, fmt.Errorf("volume %s is already active on %s (pid %d): %w", busy.name, busy.device, os.Getpid(), volume.ErrRefused)
	}
	var opened []*active
	fail := func(err error) ([]VolumeStatus, error) {
		for _, a := range opened {
			a.v.Close()
			h.forget(a.name)
		}
		return nil, err
	}
	for _, a := range vols {
		d, live, err := h.cfg.Manager.Device(a.name)
		if err != nil {
			return fail(err)
		}
		if live {
			return fail(fmt.Errorf("volume %s is already active on %s (pid %d): %w", a.name, d.Path, d.PID, volume.ErrRefused))
		}
		if d != nil && d.Kind == metadata.ActivationUblk {
			return fail(fmt.Errorf("volume %s: the server of its ublk device %s died and the kernel keeps the device: run obdvol activate %s to reattach it, then deactivate it: %w",
				a.name, d.Path, a.name, volume.ErrRefused))
		}
		if a.v, err = h.cfg.Open(a.name); err != nil {
			return fail(err)
		}
		opened = append(opened, a)
	}
	g, err := h.startGroup(spec, remote, vols)
	if err != nil {
		return fail(err)
	}
	out := make([]VolumeStatus, 0, len(vols))
	for i, a := range vols {
		act, setAct := (*metadata.Activation)(nil), true
		switch {
		case acts != nil && acts[i] != nil:
			act = acts[i]
		case persistent:
			act = a.activation(remote)
		}
		if err := h.adopt(a, act, setAct); err != nil {
			// Undo the whole group: its listener and every volume.
			h.mu.Lock()
			delete(h.groups, g.spec.String()) // the bound address (a TCP port 0 got one)
			for _, b := range vols {
				delete(h.vols, b.name)
			}
			h.mu.Unlock()
			g.stop()
			for _, b := range vols[:i] {
				if b.ctl != nil {
					b.ctl.stop()
				}
				h.record(b.name, nil, nil, false)
			}
			return fail(err)
		}
		out = append(out, a.status())
	}
	return out, nil
}

func groupNames(g *nbdGroup) []string {
	var n []string
	for _, a := range g.vols {
		n = append(n, a.name)
	}
	return n
}

// leaveGroup takes a out of its NBD group: the group's listener stops
// (its clients are disconnected after their requests in flight) and, if
// other volumes remain, listens again with them (their clients
// reconnect). The caller holds a's name lock.
func (h *Host) leaveGroup(a *active) error {
	h.groupMu.Lock()
	defer h.groupMu.Unlock()
	g := a.group
	err := g.stop()
	var rest []*active
	for _, b := range g.vols {
		if b != a {
			rest = append(rest, b)
		}
	}
	h.mu.Lock()
	delete(h.groups, g.spec.String())
	h.mu.Unlock()
	if len(rest) == 0 {
		return err
	}
	ng, lerr := h.startGroup(g.spec, g.remote, rest)
	if lerr != nil {
		h.cfg.Logf("NBD listener %s: listening again for %v: %v", g.spec, groupNames(g), lerr)
		return err
	}
	for _, b := range ng.vols {
		// A TCP listener on port 0 may have a new port.
		if rerr := h.record(b.name, h.deviceRecord(b), nil, false); rerr != nil {
			h.cfg.Logf("volume %s: %v", b.name, rerr)
		}
	}
	return err
}
