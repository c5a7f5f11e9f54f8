package ublk

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/obdvol/obdvol/device"
)

// Options shape a device.
type Options struct {
	Queues   int // default runtime.NumCPU() (the kernel caps it at the CPU count)
	Depth    int // per queue; default 64
	MaxIO    int // bytes per request; default 512 KiB
	ReadOnly bool
	// Serial serves each request on the queue thread itself, one at a
	// time per queue, as before the queues became non-blocking: a slow
	// backend call stalls its whole queue. It exists only as the
	// baseline of the queue benchmark (tests/vm, make bench-vm).
	Serial bool
	// Rings, when not nil, serves the device's queues on the group's
	// shared ring threads (queue q on thread q mod its size) instead of
	// a thread and a ring per queue; see RingGroup. Ignored with Serial.
	Rings *RingGroup
	// Tag, when not zero, marks the device as its server's: Start stores
	// it in the device's ublksrv_flags (a field the kernel keeps for
	// userspace and returns in GET_DEV_INFO), and Recover refuses a
	// tagged device with another tag (ErrNotOurs).
	Tag uint64
	// PrevPID, for Recover: the PID of the server that died, as its
	// caller recorded it. An untagged device must name it as its
	// ublksrv_pid (see checkOwner).
	PrevPID int
}

// Device is a running ublk device serving a backend.
type Device struct {
	ID   int
	Path string // /dev/ublkbN

	b      device.Backend
	opts   Options
	ctrlFd int
	ctrl   *ring
	ctrlMu sync.Mutex
	encode bool
	charFd int
	info   devInfo
	wg     sync.WaitGroup
	polled atomic.Int32 // queues waiting in the netpoller (ringPoller)
	errMu  sync.Mutex
	err    error

	stopOnce sync.Once
	stopErr  error
}

func (d *Device) op(nr uint32) uint32 {
	if d.encode {
		return encoded(nr)
	}
	return nr
}

// ctrlCmd sends one control command and returns the kernel's result.
func (d *Device) control(nr uint32, c ctrlCmd) (int32, error) {
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	if d.ctrl == nil {
		return 0, fmt.Errorf("ublk control command %#x: %w", nr, errStopped)
	}
	b := d.ctrl.sqe()
	if b == nil {
		return 0, errRing
	}
	uringCmd(b, d.ctrlFd, d.op(nr), unsafe.Slice((*byte)(unsafe.Pointer(&c)), 32), uint64(nr))
	var res int32
	if err := d.ctrl.submitWait(func(_ uint64, r int32) { res = r }); err != nil {
		return 0, err
	}
	if res < 0 {
		return res, fmt.Errorf("ublk control command %#x: %w", nr, unix.Errno(-res))
	}
	return res, nil
}

// Start adds a ublk device for b, starts its queues and the device, and
// returns once /dev/ublkbN exists. Callers must Stop it.
func Start(b device.Backend, opts Options) (*Device, error) {
	if err := Preflight(); err != nil {
		return nil, err
	}
	if opts.Queues <= 0 {
		opts.Queues = runtime.NumCPU()
	}
	if opts.Depth <= 0 {
		opts.Depth = 64
	}
	if opts.MaxIO <= 0 {
		opts.MaxIO = 512 << 10
	}
	d := &Device{b: b, opts: opts, charFd: -1}
	var err error
	if d.ctrlFd, err = unix.Open(ControlPath, unix.O_RDWR, 0); err != nil {
		return nil, fmt.Errorf("%s: %w", ControlPath, err)
	}
	if d.ctrl, err = newRing(32, setupSQE128); err != nil {
		unix.Close(d.ctrlFd)
		return nil, err
	}
	d.info = devInfo{NrHwQueues: uint16(opts.Queues), QueueDepth: uint16(opts.Depth), MaxIOBufBytes: uint32(opts.MaxIO),
		DevID: 0xFFFFFFFF, Flags: FlagUserRecovery | FlagUserRecoveryReissue | FlagCmdIoctlEncode | FlagUpdateSize | FlagUserCopy,
		SrvFlags: opts.Tag}
	var pin runtime.Pinner
	pin.Pin(&d.info)
	add := ctrlCmd{DevID: 0xFFFFFFFF, QueueID: 0xFFFF, Len: uint16(unsafe.Sizeof(d.info)), Addr: uint64(uintptr(unsafe.Pointer(&d.info)))}
	d.encode = true
	if _, err = d.control(cmdAddDev, add); err != nil {
		d.encode = false // 6.1-era kernels know only the legacy numbers
		if _, err = d.control(cmdAddDev, add); err != nil {
			pin.Unpin()
			d.closeCtrl()
			return nil, fmt.Errorf("add ublk device: %w", err)
		}
	}
	pin.Unpin()
	d.encode = d.info.Flags&FlagCmdIoctlEncode != 0
	d.ID = int(d.info.DevID)
	d.Path = fmt.Sprintf("/dev/ublkb%d", d.ID)
	if err := d.setParams(); err != nil {
		d.del()
		return nil, err
	}
	if err := d.openChar(); err != nil {
		d.del()
		return nil, err
	}
	ready := make(chan error, int(d.info.NrHwQueues))
	for q := 0; q < int(d.info.NrHwQueues); q++ {
		d.wg.Add(1)
		go d.queue(q, ready)
	}
	for q := 0; q < int(d.info.NrHwQueues); q++ {
		if err := <-ready; err != nil {
			d.Stop()
			return nil, err
		}
	}
	if _, err := d.control(cmdStartDev, ctrlCmd{DevID: d.info.DevID, QueueID: 0xFFFF, Data: uint64(os.Getpid())}); err != nil {
		d.Stop()
		return nil, fmt.Errorf("start ublk device: %w", err)
	}
	d.waitNode()
	return d, nil
}

// waitNode waits (up to 10 s) for /dev/ublkbN to appear: the kernel adds
// the disk before devtmpfs/udev creates the node.
func (d *Device) waitNode() {
	for i := 0; i < 500; i++ {
		if _, err := os.Stat(d.Path); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *Device) setParams() error {
	size := d.b.Size()
	p := params{Types: paramTypeBasic | paramTypeDiscard,
		Basic: paramBasic{Attrs: attrVolatileCache | attrFUA, LogicalBSShift: 12, PhysicalBSShift: 12,
			IOOptShift: 12, IOMinShift: 12, MaxSectors: d.info.MaxIOBufBytes >> 9, DevSectors: size >> 9},
		Discard: paramDiscard{DiscardGranularity: 4096, MaxDiscardSectors: 1 << 30 >> 9,
			MaxWriteZeroesSectors: 1 << 30 >> 9, MaxDiscardSegments: 1}}
	if d.opts.ReadOnly {
		p.Basic.Attrs |= attrReadOnly
	}
	p.Len = uint32(unsafe.Sizeof(p))
	var pin runtime.Pinner
	pin.Pin(&p)
	defer pin.Unpin()
	var err error
	for i := 0; i < 50; i++ {
		// Seen under TCG right after the module loads: the new device is
		// not yet findable (ENODEV) for a moment.
		_, err = d.control(cmdSetParams, ctrlCmd{DevID: d.info.DevID, QueueID: 0xFFFF, Len: uint16(p.Len), Addr: uint64(uintptr(unsafe.Pointer(&p)))})
		if !errors.Is(err, unix.ENODEV) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("set ublk parameters: %w", err)
	}
	return nil
}

func (d *Device) openChar() error {
	path := fmt.Sprintf("/dev/ublkc%d", d.ID)
	var err error
	for i := 0; i < 100; i++ {
		if d.charFd, err = unix.Open(path, unix.O_RDWR, 0); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s: %w", path, err)
}

func (d *Device) setErr(err error) {
	d.errMu.Lock()
	if d.err == nil {
		d.err = err
	}
	d.errMu.Unlock()
}

// Stop stops the device (in-flight I/O completes), waits for the queues,
// flushes the backend and deletes the device. The kernel deletes it only
// once nothing holds /dev/ublkbN open: close it first. Stop may be called
// again; it returns the first call's result.
func (d *Device) Stop() error {
	d.stopOnce.Do(func() { d.stopErr = d.stop() })
	return d.stopErr
}

func (d *Device) stop() error {
	d.control(cmdStopDev, ctrlCmd{DevID: d.info.DevID, QueueID: 0xFFFF})
	d.wg.Wait()
	if d.charFd >= 0 {
		unix.Close(d.charFd)
		d.charFd = -1
	}
	err := d.b.Flush()
	if derr := d.del(); err == nil {
		err = derr
	}
	d.errMu.Lock()
	defer d.errMu.Unlock()
	if err == nil {
		err = d.err
	}
	return err
}

func (d *Device) del() error {
	_, err := d.control(cmdDelDev, ctrlCmd{DevID: d.info.DevID, QueueID: 0xFFFF})
	d.closeCtrl()
	return err
}

func (d *Device) closeCtrl() {
	d.ctrlMu.Lock()
	defer d.ctrlMu.Unlock()
	if d.ctrl != nil {
		d.ctrl.close()
		d.ctrl = nil
		unix.Close(d.ctrlFd)
	}
}

// Recover reattaches a server to device id after its previous server
// died (the device was added with user recovery, so the kernel kept
// /dev/ublkbN and queued its I/O): START_USER_RECOVERY, queues with all
// fetches, END_USER_RECOVERY. Requests that were in flight are reissued,
// so b must tolerate a repeated write.
func Recover(b device.Backend, id int, opts Options) (*Device, error) {
	if err := Preflight(); err != nil {
		return nil, err
	}
	d := &Device{b: b, opts: opts, charFd: -1, ID: id, Path: fmt.Sprintf("/dev/ublkb%d", id)}
	var err error
	if d.ctrlFd, err = unix.Open(ControlPath, unix.O_RDWR, 0); err != nil {
		return nil, fmt.Errorf("%s: %w", ControlPath, err)
	}
	if d.ctrl, err = newRing(32, setupSQE128); err != nil {
		unix.Close(d.ctrlFd)
		return nil, err
	}
	var pin runtime.Pinner
	pin.Pin(&d.info)
	get := ctrlCmd{DevID: uint32(id), QueueID: 0xFFFF, Len: uint16(unsafe.Sizeof(d.info)), Addr: uint64(uintptr(unsafe.Pointer(&d.info)))}
	d.encode = true
	if _, err = d.control(cmdGetDevInfo, get); err != nil {
		d.encode = false
		_, err = d.control(cmdGetDevInfo, get)
	}
	pin.Unpin()
	if err != nil {
		d.closeCtrl()
		return nil, fmt.Errorf("ublk device %d: %w", id, err)
	}
	d.encode = d.info.Flags&FlagCmdIoctlEncode != 0
	// Before anything changes: the id may have been freed and taken by
	// another server's device (another root's daemon) in this boot.
	if err := checkOwner(&d.info, opts); err != nil {
		d.closeCtrl()
		return nil, err
	}
	if d.info.Flags&FlagUserRecovery == 0 {
		d.closeCtrl()
		return nil, fmt.Errorf("ublk device %d was not created with user recovery", id)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err = d.control(cmdStartUserRecov, ctrlCmd{DevID: uint32(id), QueueID: 0xFFFF})
		if err == nil || !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		d.closeCtrl()
		return nil, fmt.Errorf("start user recovery of ublk device %d: %w", id, err)
	}
	if err := d.openChar(); err != nil {
		d.closeCtrl()
		return nil, err
	}
	ready := make(chan error, int(d.info.NrHwQueues))
	for q := 0; q < int(d.info.NrHwQueues); q++ {
		d.wg.Add(1)
		go d.queue(q, ready)
	}
	for q := 0; q < int(d.info.NrHwQueues); q++ {
		if err := <-ready; err != nil {
			d.Stop()
			return nil, err
		}
	}
	if _, err := d.control(cmdEndUserRecov, ctrlCmd{DevID: uint32(id), QueueID: 0xFFFF, Data: uint64(os.Getpid())}); err != nil {
		d.Stop()
		return nil, fmt.Errorf("end user recovery of ublk device %d: %w", id, err)
	}
	return d, nil
}

// PolledQueues is how many of the device's queues wait for completions in
// Go's netpoller (the rest, and all in Options.Serial, wait in
// io_uring_enter holding their thread's P; see ringPoller).
func (d *Device) PolledQueues() int { return int(d.polled.Load()) }
