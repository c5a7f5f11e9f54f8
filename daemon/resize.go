package daemon

import (
	"errors"
	"fmt"

	"github.com/obdvol/obdvol/device/ublk"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
)

// ErrNoOnlineResize is wrapped (with volume.ErrRefused and
// errors.ErrUnsupported) when a ublk device cannot change size on this
// kernel: nothing was changed.
var ErrNoOnlineResize = errors.New("no ublk UPDATE_SIZE")

// resizer is what an online grow needs of a ublk device (*ublk.Device).
type resizer interface {
	CanResize() bool
	Resize(newSize uint64) error
}

// Resize grows an active volume to size bytes in place (the daemon's
// half of obdvol resize on an active volume; LVM's lvextend). Checks come
// first and change nothing: the volume must be active here, size not
// smaller (shrinking a disk under its user is refused), and a ublk
// device's kernel must have UPDATE_SIZE (Linux 6.16+). Then the volume
// grows (volume.Volume.Grow: zero extent journaled, size committed) and,
// for ublk, the device (the kernel announces the new capacity; resize2fs
// or xfs_growfs follows). NBD clients connected now keep the size they
// were told at their handshake; new connections see the new size.
func (h *Host) Resize(name string, size uint64) (*VolumeStatus, error) {
	unlock := h.lockName(name)
	defer unlock()
	a := h.get(name)
	if a == nil {
		return nil, fmt.Errorf("volume %s is not active in this daemon: %w", name, volume.ErrRefused)
	}
	var dev resizer
	if a.kind == metadata.ActivationUblk {
		dev = a.dev
	}
	if err := h.grow(a.v, dev, name, size); err != nil {
		return nil, err
	}
	s := h.statusOf(a)
	s.Size = a.v.Size()
	h.cfg.Logf("volume %s grown to %d bytes on %s", name, s.Size, s.Device)
	return &s, nil
}

// grow is Resize once a is found; dev is its ublk device (nil for NBD).
func (h *Host) grow(v *volume.Volume, dev resizer, name string, size uint64) error {
	cur := v.Size()
	switch {
	case size == cur:
		return nil
	case size < cur:
		return fmt.Errorf("volume %s is active: shrinking it from %d to %d bytes under its user loses data (deactivate, resize --shrink, activate): %w",
			name, cur, size, volume.ErrRefused)
	}
	if dev != nil {
		if size%4096 != 0 {
			return fmt.Errorf("%w: volume %s: a ublk device's size must be a multiple of 4096, got %d", volume.ErrRange, name, size)
		}
		if !dev.CanResize() {
			return fmt.Errorf("volume %s: kernel %s has no ublk UPDATE_SIZE (Linux 6.16+): deactivate, resize, activate: %w: %w: %w",
				name, kernelRelease(), ErrNoOnlineResize, errors.ErrUnsupported, volume.ErrRefused)
		}
	}
	if err := v.Grow(size); err != nil {
		return err
	}
	if dev != nil {
		if err := dev.Resize(size); err != nil {
			// The volume is bigger than its device: harmless (the
			// device's requests stay below its size), and visible
			// once the device is started again.
			return fmt.Errorf("volume %s grew to %d bytes but its ublk device kept its size (deactivate and activate it to see the new size): %w", name, size, err)
		}
	}
	return nil
}

// kernelRelease is uname -r.
func kernelRelease() string { return ublk.KernelRelease() }
