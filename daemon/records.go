package daemon

import (
	"os"

	"github.com/obdvol/obdvol/metadata"
)

// The catalogue records a Host keeps for what it serves: a volume's
// device record (live while the daemon holds the volume) and its
// persistent activation (what the next daemon activates again).

// record writes name's device record (nil clears it) and, when setAct,
// its activation record (nil removes it), in one transaction.
func (h *Host) record(name string, d *metadata.Device, act *metadata.Activation, setAct bool) error {
	return h.cfg.Manager.Catalog().Update(func(tx *metadata.Tx) error {
		v, err := tx.Volume(name)
		if err != nil {
			return err
		}
		v.Device = d
		if setAct {
			v.Activation = act
		}
		return tx.PutVolume(v)
	})
}

func (h *Host) deviceRecord(a *active) *metadata.Device {
	d := &metadata.Device{Kind: a.kind, Path: a.device, PID: os.Getpid(), ID: a.id}
	if a.kind == metadata.ActivationUblk {
		d.Boot = h.boot
	}
	return d
}

// activation is what a persistent activation of a records.
func (a *active) activation(allowRemote bool) *metadata.Activation {
	act := &metadata.Activation{Kind: a.kind, ReadOnly: a.readOnly}
	if a.kind == metadata.ActivationUblk {
		act.Queues, act.Depth = a.queues, a.depth
	} else {
		act.Listen, act.AllowRemote = a.group.spec.String(), allowRemote
	}
	return act
}

// adopt makes a (whose device or export exists) known: records it, gives
// it its stable name and its per-volume control socket. On failure the
// caller stops the device.
func (h *Host) adopt(a *active, act *metadata.Activation, setAct bool) error {
	if err := h.record(a.name, h.deviceRecord(a), act, setAct); err != nil {
		return err
	}
	if setAct {
		a.persistent = act != nil
	}
	if a.kind == metadata.ActivationUblk {
		link, err := h.link(a.name, a.device)
		if err != nil {
			h.cfg.Logf("volume %s: stable name: %v", a.name, err)
		}
		a.link = link
	}
	ctl, err := listenControl(VolumeSocketPath(h.cfg.Root, a.name), a.name, h.handle, h.cfg.ErrorKind, h.cfg.Logf)
	if err != nil {
		// The daemon's socket still reaches the volume.
		h.cfg.Logf("volume %s: %v", a.name, err)
	}
	a.ctl = ctl
	h.mu.Lock()
	h.vols[a.name] = a
	h.mu.Unlock()
	return nil
}
