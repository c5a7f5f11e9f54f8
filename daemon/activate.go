package daemon

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/obdvol/obdvol/device/ublk"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
)

// Activate exposes a volume as a ublk device. A volume whose ublk device
// this daemon brought back at its start (reattached after a crash, or a
// new device for a persistent activation after a reboot) is reported as
// such, once: an activate after a crash or a reboot finds its device
// back, as it did when activate itself reattached it; a second activate
// is refused as for any active volume.
func (h *Host) Activate(r *Request) (*VolumeStatus, error) {
	unlock := h.lockName(r.Volume)
	defer unlock()
	if a := h.get(r.Volume); a != nil {
		h.mu.Lock()
		claim := a.restored && a.kind == metadata.ActivationUblk
		a.restored = false
		h.mu.Unlock()
		if !claim {
			return nil, fmt.Errorf("volume %s is already active on %s (pid %d): %w", r.Volume, a.device, os.Getpid(), volume.ErrRefused)
		}
		if r.Persistent != a.persistent {
			act := (*metadata.Activation)(nil)
			if r.Persistent {
				act = a.activation(false)
			}
			if err := h.record(a.name, h.deviceRecord(a), act, true); err != nil {
				return nil, err
			}
			h.mu.Lock()
			a.persistent = r.Persistent
			h.mu.Unlock()
		}
		h.mu.Lock()
		s := a.status()
		h.mu.Unlock()
		s.Restored = true
		return &s, nil
	}
	d, live, err := h.cfg.Manager.Device(r.Volume)
	if err != nil {
		return nil, err
	}
	if live {
		return nil, fmt.Errorf("volume %s is already active on %s (pid %d): %w", r.Volume, d.Path, d.PID, volume.ErrRefused)
	}
	recoverID, prevPID := -1, 0
	if d != nil && d.Kind == metadata.ActivationUblk && (d.Boot == "" || d.Boot == h.boot) {
		recoverID, prevPID = d.ID, d.PID // its server died; the kernel kept the device
	}
	a, err := h.startUblk(r.Volume, r.ReadOnly, r.Queues, r.Depth, recoverID, prevPID)
	if err != nil {
		return nil, err
	}
	var act *metadata.Activation
	if r.Persistent {
		act = a.activation(false)
		act.Queues, act.Depth = r.Queues, r.Depth // 0: the defaults of the daemon that restores it
	}
	if err := h.adopt(a, act, true); err != nil {
		h.abandon(a)
		return nil, err
	}
	s := h.statusOf(a)
	return &s, nil
}

// startUblk opens name and starts (or, recoverID >= 0, reattaches) its
// device. prevPID is the PID the device record names (the dead server).
// A reattach checks first that the kernel device with that id is this
// volume's (its tag, or for an untagged device its server PID): an id
// freed and taken by another device in this boot (another root's daemon,
// another volume) is left alone and a new device started, since this
// volume's old device is then gone.
func (h *Host) startUblk(name string, readOnly bool, queues, depth, recoverID, prevPID int) (*active, error) {
	if queues <= 0 {
		queues = h.cfg.Queues
	}
	if depth <= 0 {
		depth = h.cfg.Depth
	}
	opts := ublk.Options{Queues: queues, Depth: depth, ReadOnly: readOnly, Tag: ublkTag(h.id, name), Rings: h.rings}
	var v *volume.Volume
	var err error
	if recoverID >= 0 {
		v, _, err = h.cfg.Manager.OpenAfterCrash(name)
	} else {
		v, err = h.cfg.Open(name)
	}
	if err != nil {
		return nil, err
	}
	var dev *ublk.Device
	reattached := false
	if recoverID >= 0 {
		ropts := opts
		ropts.PrevPID = prevPID
		dev, err = ublk.Recover(h.backend(v), recoverID, ropts)
		if errors.Is(err, ublk.ErrNotOurs) {
			h.cfg.Logf("volume %s: not reattaching /dev/ublkb%d: %v; starting a new device", name, recoverID, err)
		}
		if errors.Is(err, syscall.ENODEV) || errors.Is(err, ublk.ErrNotOurs) {
			// The kernel device went too (deleted after its server
			// died), or its id now names another device: the record
			// was all that was left.
			dev, err = ublk.Start(h.backend(v), opts)
		} else if err == nil {
			reattached = true
		}
	} else {
		dev, err = ublk.Start(h.backend(v), opts)
	}
	if err != nil {
		v.Close()
		return nil, err
	}
	return &active{name: name, v: v, kind: metadata.ActivationUblk, dev: dev, device: dev.Path, id: dev.ID,
		readOnly: readOnly, queues: queues, depth: depth, reattached: reattached}, nil
}

// abandon undoes a start whose adopt failed: the device goes, the
// volume closes.
func (h *Host) abandon(a *active) {
	if a.dev != nil {
		if err := a.dev.Stop(); err != nil {
			h.cfg.Logf("volume %s: stop %s: %v", a.name, a.device, err)
		}
	}
	a.v.Close()
	h.forget(a.name)
}
