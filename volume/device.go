package volume

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/obdvol/obdvol/internal/unixsock"
	"github.com/obdvol/obdvol/metadata"
)

// Device records and the liveness of their servers.
//
// A server (serve's NBD server, activate's ublk server) opens its volume,
// so holds the volume's lock, before it records its device, and clears
// the record before it closes the volume. A record whose volume lock is
// free, or held by a process other than the one it names, is therefore
// stale, whatever process its PID names now (PIDs are reused): the lock,
// which the kernel drops when its holder dies, is the only liveness test.
//
// What a stale record leaves behind depends on its kind:
//   - nbd: only the server's socket file. The next operation that takes
//     the volume's lock (Open, Rollback, Delete, Resize, Device) clears
//     the record and removes the socket if it is stale.
//   - ublk: the kernel keeps /dev/ublkbN (user recovery) and queues its
//     I/O until a new server reattaches it (obdvol activate does). The
//     record stays; operations that would change the volume under the
//     device (rollback, delete, resize, a pull's fast-forward) are
//     refused, pointing to activate.

// Device kinds (metadata.Device.Kind).
const (
	DeviceNBD  = "nbd"
	DeviceUblk = "ublk"
)

// Device returns name's device record and whether its server is alive.
// A stale NBD record is cleared (Device then returns nil); a stale ublk
// record is returned with live false: its kernel device waits for
// activate to reattach it. Device takes the volume's lock for a moment
// when nobody holds it.
func (m *Manager) Device(name string) (d *metadata.Device, live bool, err error) {
	if err := metadata.ValidateName("volume", name); err != nil {
		return nil, false, err
	}
	var rec *metadata.Volume
	if err := m.cat.View(func(tx *metadata.Tx) (err error) { rec, err = tx.Volume(name); return }); err != nil {
		return nil, false, err
	}
	if rec.Device == nil {
		return nil, false, nil
	}
	lock, err := m.lockVolume(name)
	if errors.Is(err, ErrInUse) {
		// Held: by the server the record names, or by another process
		// (a command working on the volume after the server died, a
		// server that has not recorded itself yet).
		holder := lockHolder(m.lockPath(name))
		if err := m.cat.View(func(tx *metadata.Tx) (err error) { rec, err = tx.Volume(name); return }); err != nil || rec.Device == nil {
			return nil, false, err
		}
		return rec.Device, holder == rec.Device.PID, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer lock.release()
	if d, err = m.clearStaleNBDRecord(name); err != nil || d == nil {
		return nil, false, err
	}
	return d, false, nil // a dead ublk server's
}

// HeldBy reports whether process pid holds name's lock: a server that
// has cleared its device record holds it until it has closed the volume.
// Like Device, it takes the lock for a moment when nobody holds it.
func (m *Manager) HeldBy(name string, pid int) (bool, error) {
	if err := metadata.ValidateName("volume", name); err != nil {
		return false, err
	}
	lock, err := m.lockVolume(name)
	if errors.Is(err, ErrInUse) {
		return lockHolder(m.lockPath(name)) == pid, nil
	}
	if err != nil {
		return false, err
	}
	lock.release()
	return false, nil
}

// clearStaleNBD is called by an operation that holds v's lock, so v's
// device record names a server that is gone: an NBD record is removed
// from v (the caller puts v) and its socket path returned, for
// removeStaleSocket once the transaction has committed.
func clearStaleNBD(v *metadata.Volume) (socket string) {
	if v.Device == nil || v.Device.Kind != DeviceNBD {
		return ""
	}
	socket = nbdSocket(v.Device.Path)
	v.Device = nil
	return socket
}

// clearStaleNBDRecord clears name's device record if it is an NBD one,
// and removes its socket, for a caller that holds the volume's lock (so
// the server is gone). It returns the record left (nil, or a ublk one).
func (m *Manager) clearStaleNBDRecord(name string) (*metadata.Device, error) {
	var socket string
	var left *metadata.Device
	err := m.cat.Update(func(tx *metadata.Tx) error {
		v, err := tx.Volume(name)
		if err != nil {
			return err
		}
		d := v.Device
		socket = clearStaleNBD(v)
		if left = v.Device; left == d {
			return nil
		}
		return tx.PutVolume(v)
	})
	if err != nil {
		return nil, err
	}
	removeStaleSocket(socket)
	return left, nil
}

// refuseUnderDevice is the error of an operation that must not change
// volume v under its device, for a caller that holds v's lock (after
// clearStaleNBD): only a ublk device whose server died can be left.
func refuseUnderDevice(v *metadata.Volume) error {
	d := v.Device
	if d == nil {
		return nil
	}
	if d.Kind == DeviceUblk {
		return fmt.Errorf("volume %s: the server of its device %s died (pid %d) and the kernel keeps the device: "+
			"run obdvol activate %s to reattach it, then obdvol deactivate %s: %w", v.Name, d.Path, d.PID, v.Name, v.Name, ErrRefused)
	}
	return fmt.Errorf("volume %s is active on %s: deactivate it first: %w", v.Name, d.Path, ErrRefused)
}

// nbdSocket returns the socket path of an NBD URI
// (nbd+unix:///EXPORT?socket=PATH), or "" for a TCP one.
func nbdSocket(uri string) string {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "nbd+unix" {
		return ""
	}
	return u.Query().Get("socket")
}

// removeStaleSocket removes a dead NBD server's socket: only a socket
// nobody answers on (another server may listen on that path now).
func removeStaleSocket(path string) {
	if path != "" {
		unixsock.RemoveStale(path) // best effort: serve replaces a stale socket too
	}
}

// lockHolder returns the PID the holder of a volume lock wrote into it
// (0 when unreadable).
func lockHolder(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}
