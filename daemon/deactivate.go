package daemon

import (
	"fmt"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
)

// Deactivate stops a volume's ublk device (deleting it) or its NBD export,
// flushes and closes the volume, clears its device record, removes its
// activation record and its stable name. A volume this daemon does not
// serve but that has a persistent activation only loses the activation.
func (h *Host) Deactivate(name string) ([]VolumeStatus, error) {
	unlock := h.lockName(name)
	defer unlock()
	a := h.get(name)
	if a == nil {
		return nil, ForgetInactive(h.cfg.Manager, name)
	}
	s := h.statusOf(a)
	if a.ctl != nil {
		a.ctl.stop()
		a.ctl = nil
	}
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	switch a.kind {
	case metadata.ActivationUblk:
		keep(a.dev.Stop()) // in-flight I/O completes, flush, delete
	case metadata.ActivationNBD:
		keep(h.leaveGroup(a))
	}
	keep(a.v.Flush())
	if err := h.record(name, nil, nil, true); err != nil {
		// The device is gone but the record says otherwise: keep the
		// volume open (and its record live) rather than lie.
		return nil, fmt.Errorf("volume %s: clearing its device record: %w", name, err)
	}
	h.unlink(a.link, a.device)
	h.mu.Lock()
	delete(h.vols, name)
	h.mu.Unlock()
	keep(a.v.Close())
	h.forget(name)
	return []VolumeStatus{s}, first
}

// ForgetInactive deactivates a volume no daemon serves: it removes its
// persistent activation record. A volume served by another process, or
// whose ublk device's server died, is refused (ErrRefused), as is one
// with nothing to forget.
func ForgetInactive(m *volume.Manager, name string) error {
	d, live, err := m.Device(name)
	if err != nil {
		return err
	}
	switch {
	case live:
		return fmt.Errorf("volume %s is served on %s by pid %d (obdvol serve --foreground?): stop that server: %w", name, d.Path, d.PID, volume.ErrRefused)
	case d != nil && d.Kind == metadata.ActivationUblk:
		return fmt.Errorf("the server of volume %s (pid %d) died and the kernel keeps %s: run obdvol activate %s (or start obdvol daemon) to reattach it, then deactivate: %w",
			name, d.PID, d.Path, name, volume.ErrRefused)
	}
	forgot := false
	err = m.Catalog().Update(func(tx *metadata.Tx) error {
		v, err := tx.Volume(name)
		if err != nil || v.Activation == nil {
			return err
		}
		forgot, v.Activation = true, nil
		return tx.PutVolume(v)
	})
	if err != nil {
		return err
	}
	if !forgot {
		return fmt.Errorf("volume %s is not active: %w", name, volume.ErrRefused)
	}
	return nil
}
