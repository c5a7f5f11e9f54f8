package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/obdvol/obdvol/metadata"
)

// restore brings back, at start, what the catalogue says should be
// active: ublk devices whose server died are reattached (user recovery;
// their writers never see an error), persistent ublk activations whose
// kernel device is gone (a reboot) get a new device, persistent NBD
// exports listen again, grouped by listen spec. A volume that fails is
// logged; the others go on.
func (h *Host) restore() {
	var recs []*metadata.Volume
	if err := h.cfg.Manager.Catalog().View(func(tx *metadata.Tx) (err error) {
		recs, err = tx.Volumes()
		return err
	}); err != nil {
		h.cfg.Logf("restore: reading the catalogue: %v", err)
		return
	}
	type nbdWant struct {
		a   *active
		act *metadata.Activation
	}
	groups := map[string][]nbdWant{}
	for _, rec := range recs {
		act, dev := rec.Activation, rec.Device
		if dev == nil && act == nil {
			continue
		}
		if act != nil && act.Kind == metadata.ActivationNBD && (dev == nil || dev.Kind != metadata.ActivationUblk) {
			groups[act.Listen] = append(groups[act.Listen], nbdWant{
				&active{name: rec.Name, kind: metadata.ActivationNBD, id: -1, readOnly: act.ReadOnly}, act})
			continue
		}
		if err := h.restoreUblk(rec); err != nil {
			h.cfg.Logf("restore: volume %s: %v", rec.Name, err)
		}
	}
	specs := make([]string, 0, len(groups))
	for s := range groups {
		specs = append(specs, s)
	}
	sort.Strings(specs)
	for _, s := range specs {
		want := groups[s]
		spec, err := ParseNBDSpec(s, want[0].act.AllowRemote)
		if err != nil {
			h.cfg.Logf("restore: NBD exports on %s: %v", s, err)
			continue
		}
		// One volume that cannot be exported (in use, damaged) must not
		// keep the others from theirs: try each alone first, then serve
		// those that open together.
		var ok []*active
		var acts []*metadata.Activation
		for _, w := range want {
			v, err := h.cfg.Open(w.a.name)
			if err != nil {
				h.cfg.Logf("restore: volume %s (NBD on %s): %v", w.a.name, s, err)
				continue
			}
			v.Close()
			ok = append(ok, w.a)
			acts = append(acts, w.act)
		}
		if len(ok) == 0 {
			continue
		}
		var unlocks []func()
		for _, a := range ok {
			unlocks = append(unlocks, h.lockName(a.name))
		}
		st, err := h.export(spec, want[0].act.AllowRemote, ok, acts, true)
		for _, u := range unlocks {
			u()
		}
		if err != nil {
			h.cfg.Logf("restore: NBD exports on %s: %v", s, err)
			continue
		}
		for _, x := range st {
			h.cfg.Logf("restore: volume %s exported at %s", x.Name, x.Device)
		}
	}
}

// restoreUblk reattaches or restarts one volume's ublk device.
func (h *Host) restoreUblk(rec *metadata.Volume) error {
	unlock := h.lockName(rec.Name)
	defer unlock()
	act := rec.Activation
	d, live, err := h.cfg.Manager.Device(rec.Name)
	if err != nil {
		return err
	}
	if live {
		return fmt.Errorf("served on %s by pid %d: left alone", d.Path, d.PID)
	}
	recoverID, prevPID := -1, 0
	if d != nil && d.Kind == metadata.ActivationUblk {
		if d.Boot == "" || d.Boot == h.boot {
			recoverID, prevPID = d.ID, d.PID
		}
		if _, err := os.Stat(fmt.Sprintf("/sys/block/ublkb%d", d.ID)); errors.Is(err, os.ErrNotExist) && sysfsUp() {
			recoverID = -1 // gone: the record was all that was left
		}
	}
	if recoverID < 0 && d != nil {
		// The device is gone: its record goes (a persistent activation
		// gets a new device below).
		h.unlink(filepath.Join(h.cfg.DevDir, rec.Name), d.Path)
		if err := h.record(rec.Name, nil, nil, false); err != nil {
			return err
		}
	}
	if recoverID < 0 && (act == nil || act.Kind != metadata.ActivationUblk) {
		return nil // a one-off activation: nothing to bring back
	}
	ro, queues, depth := false, 0, 0
	if act != nil {
		ro, queues, depth = act.ReadOnly, act.Queues, act.Depth
	}
	a, err := h.startUblk(rec.Name, ro, queues, depth, recoverID, prevPID)
	if err != nil {
		return err
	}
	a.persistent, a.restored = act != nil, true
	if err := h.adopt(a, nil, false); err != nil {
		h.abandon(a)
		return err
	}
	how := "started"
	if a.reattached {
		how = "reattached"
	}
	h.cfg.Logf("restore: volume %s %s on %s", rec.Name, how, a.device)
	return nil
}

// sysfsUp reports whether /sys/block can be trusted to list block
// devices (it is mounted).
func sysfsUp() bool {
	var st unix.Statfs_t
	return unix.Statfs("/sys/block", &st) == nil && st.Type == unix.SYSFS_MAGIC
}
