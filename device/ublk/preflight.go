package ublk

import (
	"errors"
	"fmt"
	"os"
)

// ControlPath is the ublk control device.
const ControlPath = "/dev/ublk-control"

// ErrUnavailable is wrapped when this host cannot create ublk devices.
var ErrUnavailable = errors.New("ublk is not available")

// ErrNotRoot is wrapped when a device operation runs without root.
var ErrNotRoot = errors.New("device operations need root")

// Preflight checks, before anything changes, that this process can create
// ublk devices: root, and a kernel with the ublk driver loaded.
func Preflight() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: run as root (or use obdvol serve --nbd, which needs none)", ErrNotRoot)
	}
	if _, err := os.Stat(ControlPath); err != nil {
		return fmt.Errorf("%w: %s is missing: this kernel has no ublk driver loaded "+
			"(it needs Linux 6.0+ with CONFIG_BLK_DEV_UBLK; try `modprobe ublk_drv`), "+
			"or serve the volume over NBD instead (obdvol serve --nbd)", ErrUnavailable, ControlPath)
	}
	return nil
}
