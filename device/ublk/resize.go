package ublk

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

var errStopped = errors.New("the ublk device was stopped")

// ErrResizeUnsupported is wrapped (with errors.ErrUnsupported) when the
// kernel cannot change a live ublk device's size.
var ErrResizeUnsupported = fmt.Errorf("this kernel's ublk driver cannot resize a live device "+
	"(UBLK_CMD_UPDATE_SIZE came with Linux 6.16): %w", errors.ErrUnsupported)

// CanResize reports whether the kernel kept FlagUpdateSize for this
// device: it accepts Resize.
func (d *Device) CanResize() bool { return d.info.Flags&FlagUpdateSize != 0 }

// Flags returns the feature flags the kernel granted the device (Flag*).
func (d *Device) Flags() uint64 { return d.info.Flags }

// Resize changes the size of the running device to newSize bytes (a
// multiple of 4096: the device's logical block). The backend must already
// have that size: grow the volume first, then the device; shrink the
// device first. The kernel updates the disk's capacity and tells
// userspace (a change uevent), so resize2fs or xfs_growfs can follow on a
// mounted filesystem. Kernels before 6.16 have no UPDATE_SIZE: Resize
// sends nothing and returns an error wrapping errors.ErrUnsupported.
func (d *Device) Resize(newSize uint64) error {
	if newSize == 0 || newSize%4096 != 0 {
		return fmt.Errorf("ublk device %d: size %d is not a positive multiple of 4096", d.ID, newSize)
	}
	if !d.CanResize() {
		return fmt.Errorf("ublk device %d on kernel %s: %w", d.ID, kernelRelease(), ErrResizeUnsupported)
	}
	if _, err := d.control(cmdUpdateSize, updateSizeCmd(uint32(d.ID), newSize)); err != nil {
		return fmt.Errorf("resize ublk device %d to %d bytes: %w", d.ID, newSize, err)
	}
	return nil
}

// updateSizeCmd is UPDATE_SIZE's payload: the new size in sectors.
func updateSizeCmd(id uint32, size uint64) ctrlCmd {
	return ctrlCmd{DevID: id, QueueID: 0xFFFF, Data: size >> 9}
}

// KernelRelease is the running kernel's release (uname -r), "?" when
// unknown.
func KernelRelease() string { return kernelRelease() }

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// KernelFeatures asks the loaded ublk driver which Flag* it supports
// (GET_FEATURES, Linux 6.5+; older kernels answer with an error).
func KernelFeatures() (uint64, error) {
	if err := Preflight(); err != nil {
		return 0, err
	}
	d := &Device{charFd: -1, encode: true}
	var err error
	if d.ctrlFd, err = unix.Open(ControlPath, unix.O_RDWR, 0); err != nil {
		return 0, fmt.Errorf("%s: %w", ControlPath, err)
	}
	if d.ctrl, err = newRing(32, setupSQE128); err != nil {
		unix.Close(d.ctrlFd)
		return 0, err
	}
	defer d.closeCtrl()
	var features uint64
	var pin runtime.Pinner
	pin.Pin(&features)
	defer pin.Unpin()
	_, err = d.control(cmdGetFeatures, ctrlCmd{DevID: 0xFFFFFFFF, QueueID: 0xFFFF, Len: 8, Addr: uint64(uintptr(unsafe.Pointer(&features)))})
	if err != nil {
		return 0, fmt.Errorf("ublk GET_FEATURES: %w", err)
	}
	return features, nil
}
