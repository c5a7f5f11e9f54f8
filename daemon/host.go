package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/obdvol/obdvol/device"
	"github.com/obdvol/obdvol/device/ublk"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/metrics"
	"github.com/obdvol/obdvol/volume"
)

// DefaultDevDir holds the stable names, <devdir>/<volume> -> /dev/ublkbN.
const DefaultDevDir = "/dev/obdvol"

// DefaultDepth is a ublk queue's depth when neither the request nor the
// activation record says.
const DefaultDepth = 64

// Config is what a Host needs; cmd/obdvol builds the manager (content
// store, lazy remotes, cache size) and hands it over.
type Config struct {
	Root    string          // absolute state directory
	Manager *volume.Manager // the one manager of every volume served
	// Open opens a volume for I/O; nil means Manager.Open.
	Open   func(name string) (*volume.Volume, error)
	DevDir string // stable names; "" means DefaultDevDir
	Queues int    // ublk queues when not given; 0 means runtime.NumCPU()
	Depth  int    // ublk depth when not given; 0 means DefaultDepth
	Logf   func(format string, args ...any)
	// ErrorKind classifies errors for Response.Kind; nil gives "error".
	ErrorKind func(error) string
	// Backend, if not nil, wraps each volume before a frontend (ublk,
	// NBD) serves it: the hook for per-volume I/O metrics. The wrapper
	// must implement device.Mapper when the volume does (NBD's
	// BLOCK_STATUS uses it) and stay safe for concurrent use.
	Backend func(name string, v *volume.Volume) device.Backend
	// Metrics, if not nil, counts every served volume's I/O (each
	// backend is wrapped by Metrics.Instrument, which keeps
	// device.Mapper) and forgets a volume's series when it is
	// deactivated. The caller wires the rest (cache, seals, fetches) and
	// serves the endpoint.
	Metrics *metrics.Collector
}

// backend is what the frontends serve for v.
func (h *Host) backend(v *volume.Volume) device.Backend {
	var b device.Backend = v
	if h.cfg.Backend != nil {
		b = h.cfg.Backend(v.Name(), v)
	}
	if h.cfg.Metrics != nil {
		b = h.cfg.Metrics.Instrument(v.Name(), b)
	}
	return b
}

// forget drops name's metrics once its device or export is gone.
func (h *Host) forget(name string) {
	if h.cfg.Metrics != nil {
		h.cfg.Metrics.Forget(name)
	}
}

// Host owns the active volumes of one root. Its methods are safe for
// concurrent use; operations on one volume are serialized.
type Host struct {
	cfg  Config
	lock *os.File
	boot string
	id   string // the root's identity (rootID): ublk device tags
	ctl  *controlServer
	// rings serve the queues of every ublk device of this host: about
	// one ring thread per CPU whatever the number of devices (see
	// ublk.RingGroup). Its threads start with the first device and end
	// with the process (Stop leaves the devices served until then).
	rings *ublk.RingGroup

	// groupMu serializes starting and stopping NBD listeners (it is
	// held across their I/O: a listener's drain, a new listen).
	groupMu sync.Mutex

	mu     sync.Mutex // guards what follows; never held across I/O
	left   int        // ublk devices Stop left in the kernel
	mAddr  string     // where the metrics endpoint listens, "" when none
	vols   map[string]*active
	groups map[string]*nbdGroup // by spec.String()
	names  map[string]*nameLock
}

type nameLock struct {
	mu   sync.Mutex
	refs int
}

// active is a volume the host serves.
type active struct {
	name       string
	v          *volume.Volume
	kind       string // metadata.ActivationUblk or ActivationNBD
	dev        *ublk.Device
	group      *nbdGroup
	device     string // /dev/ublkbN or the NBD URI
	id         int
	link       string // the stable name, "" when none
	readOnly   bool
	queues     int
	depth      int
	persistent bool
	reattached bool // reattached to a kernel device its previous server left
	// restored: brought back by the daemon's start (reattached, or a
	// new device for a persistent activation) and not yet claimed by an
	// activate: the first one succeeds (see Activate).
	restored bool
	ctl      *controlServer
}

func (a *active) status() VolumeStatus {
	s := VolumeStatus{Name: a.name, Kind: a.kind, Device: a.device, Link: a.link, ID: a.id, PID: os.Getpid(),
		ReadOnly: a.readOnly, Queues: a.queues, Depth: a.depth, Persistent: a.persistent, Reattached: a.reattached}
	if a.group != nil {
		s.Listen = a.group.spec.String()
	}
	return s
}

// statusOf is a.status() under the host's lock (a group restart may be
// changing a's device).
func (h *Host) statusOf(a *active) VolumeStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	return a.status()
}

// Open takes the root's daemon lock (failing with ErrRunning when another
// daemon holds it) and returns a host that serves nothing yet: Start
// restores the recorded activations and opens the control socket.
func Open(cfg Config) (*Host, error) {
	if cfg.DevDir == "" {
		cfg.DevDir = DefaultDevDir
	}
	if cfg.Queues <= 0 {
		cfg.Queues = runtime.NumCPU()
	}
	if cfg.Queues > metadata.MaxQueues {
		cfg.Queues = metadata.MaxQueues
	}
	if cfg.Depth <= 0 {
		cfg.Depth = DefaultDepth
	}
	if cfg.Logf == nil {
		cfg.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, "obdvol daemon: "+f+"\n", a...) }
	}
	if cfg.ErrorKind == nil {
		cfg.ErrorKind = func(error) string { return "error" }
	}
	if cfg.Open == nil {
		cfg.Open = cfg.Manager.Open
	}
	lock, err := lockRoot(cfg.Root)
	if err != nil {
		return nil, err
	}
	id, err := rootID(cfg.Root)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("root identity: %w", err)
	}
	return &Host{cfg: cfg, lock: lock, boot: BootID(), id: id, rings: ublk.NewRings(cfg.Queues), vols: map[string]*active{},
		groups: map[string]*nbdGroup{}, names: map[string]*nameLock{}}, nil
}

// lockRoot takes --root/run/daemon.lock and writes our PID into it.
func lockRoot(root string) (*os.File, error) {
	run := filepath.Join(root, "run")
	if err := os.MkdirAll(run, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(run, "daemon.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			who := ""
			if b, err := os.ReadFile(path); err == nil {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					who = fmt.Sprintf(" (pid %d)", pid)
				}
			}
			return nil, fmt.Errorf("%w for %s%s: one daemon serves a root", ErrRunning, root, who)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

// BootID returns the kernel's boot id ("" when unreadable).
func BootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Start re-activates what the catalogue records (see the package
// invariants) and then opens the control socket. Failures of single
// volumes are logged; the error is the control socket's.
func (h *Host) Start() error {
	h.restore()
	ctl, err := listenControl(SocketPath(h.cfg.Root), "", h.handle, h.cfg.ErrorKind, h.cfg.Logf)
	if err != nil {
		h.Stop()
		return err
	}
	h.mu.Lock()
	h.ctl = ctl
	h.mu.Unlock()
	return nil
}

// Run starts the host and serves until ctx ends, then stops it.
func (h *Host) Run(ctx context.Context, ready func()) error {
	if err := h.Start(); err != nil {
		return err
	}
	if ready != nil {
		ready()
	}
	<-ctx.Done()
	return h.Stop()
}

// Stop closes the control socket, flushes every volume, closes the NBD
// listeners (clearing their device records) and leaves the ublk devices
// in the kernel with their records, for the next daemon to reattach (an
// upgrade restart must not break mounted filesystems; deactivate deletes
// a device). It releases the daemon lock. It returns the first error.
func (h *Host) Stop() error {
	h.mu.Lock()
	ctl := h.ctl
	h.ctl = nil
	h.mu.Unlock()
	if ctl != nil {
		ctl.stop()
	}
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	h.groupMu.Lock()
	h.mu.Lock()
	groups := h.groups
	h.groups = map[string]*nbdGroup{}
	h.mu.Unlock()
	for _, g := range groups {
		keep(g.stop())
	}
	h.groupMu.Unlock()
	h.mu.Lock()
	vols := h.vols
	h.vols = map[string]*active{}
	h.mu.Unlock()
	for _, a := range vols {
		if a.ctl != nil {
			a.ctl.stop()
		}
		keep(a.v.Flush())
		if a.kind == metadata.ActivationNBD {
			keep(h.record(a.name, nil, nil, false))
			keep(a.v.Close())
		}
		// A ublk volume stays open (and locked) until the process
		// exits: its queues may still serve the kernel's requests.
		if a.kind == metadata.ActivationUblk {
			h.mu.Lock()
			h.left++
			h.mu.Unlock()
		}
	}
	if h.lock != nil {
		h.lock.Close()
		h.lock = nil
	}
	return first
}

// LeftDevices is the number of ublk devices Stop left in the kernel for
// the next daemon. Their volumes are still open and in use by their
// queues: the process must exit without closing the manager.
func (h *Host) LeftDevices() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.left
}

// lockName serializes operations on one volume.
func (h *Host) lockName(name string) func() {
	h.mu.Lock()
	l := h.names[name]
	if l == nil {
		l = &nameLock{}
		h.names[name] = l
	}
	l.refs++
	h.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		h.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(h.names, name)
		}
		h.mu.Unlock()
	}
}

func (h *Host) get(name string) *active {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.vols[name]
}

// Status returns the active volumes, by name, or name's alone.
func (h *Host) Status(name string) ([]VolumeStatus, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if name != "" {
		a := h.vols[name]
		if a == nil {
			return nil, fmt.Errorf("volume %s is not active in this daemon: %w", name, volume.ErrRefused)
		}
		return []VolumeStatus{a.status()}, nil
	}
	out := []VolumeStatus{}
	for _, a := range h.vols {
		out = append(out, a.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// handle dispatches one control request.
func (h *Host) handle(ctx context.Context, r *Request) (*Response, error) {
	switch r.Op {
	case OpActivate:
		s, err := h.Activate(r)
		if err != nil {
			return nil, err
		}
		return &Response{Volumes: []VolumeStatus{*s}}, nil
	case OpDeactivate:
		s, err := h.Deactivate(r.Volume)
		if err != nil {
			return nil, err
		}
		return &Response{Volumes: s}, nil
	case OpServeNBD:
		s, err := h.ServeNBD(r)
		if err != nil {
			return nil, err
		}
		return &Response{Volumes: s}, nil
	case OpStatus:
		s, err := h.Status(r.Volume)
		if err != nil {
			return nil, err
		}
		resp := &Response{Volumes: s}
		if r.Volume == "" {
			hs := h.HostStatus()
			resp.Host = &hs
		}
		return resp, nil
	case OpResize:
		s, err := h.Resize(r.Volume, r.Size)
		if err != nil {
			return nil, err
		}
		return &Response{Volumes: []VolumeStatus{*s}}, nil
	case OpSnapshot, OpFlush:
		unlock := h.lockName(r.Volume)
		defer unlock()
		a := h.get(r.Volume)
		if a == nil {
			return nil, fmt.Errorf("volume %s is not active in this daemon: %w", r.Volume, volume.ErrRefused)
		}
		if r.Op == OpFlush {
			return &Response{Volumes: []VolumeStatus{h.statusOf(a)}}, a.v.Flush()
		}
		res, err := a.v.Snapshot(ctx, r.Snapshot)
		if err != nil {
			return nil, err
		}
		return &Response{Snapshot: res}, nil
	}
	return nil, fmt.Errorf("%w: unknown operation %q", ErrBadRequest, r.Op)
}
