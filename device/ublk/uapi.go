// Package ublk serves a device.Backend as /dev/ublkbN through the Linux
// ublk driver, speaking its UAPI over io_uring with raw system calls
// (no cgo, no io_uring module).
//
// This file holds the kernel interface: structs laid out byte for byte as
// in include/uapi/linux/ublk_cmd.h and io_uring.h, and the constants.
// uapi_test.go checks every size and offset.
//
// Glossary:
//   - control device: /dev/ublk-control, where devices are added, started,
//     stopped and deleted with URING_CMDs.
//   - char device: /dev/ublkcN, where the server fetches requests and
//     commits results through io_uring: one ring per queue, or a ring
//     thread's ring shared by queues of many devices (RingGroup).
//   - queue daemon: the task that fetched a queue's tags; the kernel takes
//     that queue's commands only from it (per queue, not per device).
//   - ring thread: a locked OS thread of a RingGroup owning one io_uring,
//     the queue daemon of queue q of every device started with the group.
//   - slot: a queue's index in its ring thread; user_data is slot<<16|tag.
//   - block device: /dev/ublkbN, what users mkfs and mount.
//   - tag: a request slot of a queue (0..depth-1), with its descriptor
//     and its I/O buffer.
package ublk

//lint:file-ignore U1000 the UAPI is declared whole, checked by uapi_test.go; the queue server uses the rest

// Control command numbers (legacy) and their ioctl encodings.
const (
	cmdGetQueueAffinity = 0x01
	cmdGetDevInfo       = 0x02
	cmdAddDev           = 0x04
	cmdDelDev           = 0x05
	cmdStartDev         = 0x06
	cmdStopDev          = 0x07
	cmdSetParams        = 0x08
	cmdGetParams        = 0x09
	cmdStartUserRecov   = 0x10
	cmdEndUserRecov     = 0x11
	cmdGetDevInfo2      = 0x12
	cmdGetFeatures      = 0x13
	cmdDelDevAsync      = 0x14
	// cmdUpdateSize (Linux 6.16, UBLK_U_CMD_UPDATE_SIZE = _IOWR('u', 0x15,
	// struct ublksrv_ctrl_cmd)): data[0] is the new size in 512-byte
	// sectors. It exists only ioctl-encoded and only where the device was
	// added with FlagUpdateSize and the kernel kept that flag.
	cmdUpdateSize = 0x15

	ioFetchReq          = 0x20
	ioCommitAndFetchReq = 0x21
	ioNeedGetData       = 0x22
)

const (
	iocWrite = 1
	iocRead  = 2
)

// ioc encodes an ioctl-style opcode: dir<<30 | size<<16 | 'u'<<8 | nr.
func ioc(dir, nr, size uint32) uint32 { return dir<<30 | size<<16 | 'u'<<8 | nr }

// encoded returns the ioctl encoding of a control command (32-byte
// payload) or an I/O command (16-byte payload).
func encoded(nr uint32) uint32 {
	switch nr {
	case ioFetchReq, ioCommitAndFetchReq, ioNeedGetData:
		return ioc(iocRead|iocWrite, nr, 16)
	case cmdGetQueueAffinity, cmdGetDevInfo, cmdGetParams, cmdGetDevInfo2, cmdGetFeatures, cmdDelDevAsync:
		return ioc(iocRead, nr, 32)
	}
	return ioc(iocRead|iocWrite, nr, 32)
}

// Feature flags (ublksrv_ctrl_dev_info.flags).
const (
	FlagSupportZeroCopy      = 1 << 0
	FlagURingCmdCompInTask   = 1 << 1
	FlagNeedGetData          = 1 << 2
	FlagUserRecovery         = 1 << 3
	FlagUserRecoveryReissue  = 1 << 4
	FlagUnprivilegedDev      = 1 << 5
	FlagCmdIoctlEncode       = 1 << 6
	FlagUserCopy             = 1 << 7
	FlagZoned                = 1 << 8
	FlagUserRecoveryFailIO   = 1 << 9  // Linux 6.13
	FlagUpdateSize           = 1 << 10 // Linux 6.16: UPDATE_SIZE (online resize)
	stateDead, stateLive     = 0, 1
	stateQuiesced, stateFail = 2, 3
)

// I/O operations and flags in ublksrv_io_desc.op_flags.
const (
	opRead        = 0
	opWrite       = 1
	opFlush       = 2
	opDiscard     = 3
	opWriteSame   = 4
	opWriteZeroes = 5
	ioFlagFUA     = 1 << 13
	ioFlagNoUnmap = 1 << 15

	ioResOK    = 0
	ioResAbort = -19 // -ENODEV

	attrReadOnly      = 1
	attrRotational    = 2
	attrVolatileCache = 4
	attrFUA           = 8

	paramTypeBasic   = 1
	paramTypeDiscard = 2

	ioBufOffset   = 0x80000000
	maxQueueDepth = 4096
	maxQueues     = 4096
	descSize      = 24
)

// ctrlCmd is struct ublksrv_ctrl_cmd (32 bytes, at SQE offset 48).
type ctrlCmd struct {
	DevID      uint32
	QueueID    uint16
	Len        uint16
	Addr       uint64
	Data       uint64
	DevPathLen uint16
	Pad        uint16
	Reserved   uint32
}

// devInfo is struct ublksrv_ctrl_dev_info (64 bytes).
type devInfo struct {
	NrHwQueues    uint16
	QueueDepth    uint16
	State         uint16
	Pad0          uint16
	MaxIOBufBytes uint32
	DevID         uint32
	SrvPID        int32
	Pad1          uint32
	Flags         uint64
	SrvFlags      uint64
	OwnerUID      uint32
	OwnerGID      uint32
	Reserved1     uint64
	Reserved2     uint64
}

// ioDesc is struct ublksrv_io_desc (24 bytes, read-only shared memory).
type ioDesc struct {
	OpFlags     uint32
	NrSectors   uint32
	StartSector uint64
	Addr        uint64
}

func (d *ioDesc) op() uint8     { return uint8(d.OpFlags & 0xff) }
func (d *ioDesc) flags() uint32 { return d.OpFlags >> 8 << 8 }

// ioCmd is struct ublksrv_io_cmd (16 bytes, at SQE offset 48).
type ioCmd struct {
	QID    uint16
	Tag    uint16
	Result int32
	Addr   uint64
}

// paramBasic is struct ublk_param_basic (32 bytes).
type paramBasic struct {
	Attrs            uint32
	LogicalBSShift   uint8
	PhysicalBSShift  uint8
	IOOptShift       uint8
	IOMinShift       uint8
	MaxSectors       uint32
	ChunkSectors     uint32
	DevSectors       uint64
	VirtBoundaryMask uint64
}

// paramDiscard is struct ublk_param_discard (20 bytes).
type paramDiscard struct {
	DiscardAlignment      uint32
	DiscardGranularity    uint32
	MaxDiscardSectors     uint32
	MaxWriteZeroesSectors uint32
	MaxDiscardSegments    uint16
	Reserved0             uint16
}

// params is struct ublk_params as far as obdvol sets it: len, types,
// basic and discard (the kernel clamps len to its own size and ignores
// types it was not given).
type params struct {
	Len     uint32
	Types   uint32
	Basic   paramBasic
	Discard paramDiscard
}

// io_uring structures.

// sqe is struct io_uring_sqe (64 bytes; 128 with SQE128, the second half
// carrying the URING_CMD payload beyond 16 bytes).
type sqe struct {
	Opcode      uint8
	Flags       uint8
	IOPrio      uint16
	FD          int32
	Off         uint64 // cmd_op in the low 32 bits for URING_CMD
	Addr        uint64
	Len         uint32
	OpFlags     uint32
	UserData    uint64
	BufIndex    uint16
	Personality uint16
	FileIndex   uint32
	Cmd         [16]byte // addr3/cmd: the first 16 bytes of the command payload
}

// cqe is struct io_uring_cqe (16 bytes).
type cqe struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

type sqRingOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type cqRingOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, Cqes, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

// uringParams is struct io_uring_params (120 bytes).
type uringParams struct {
	SQEntries    uint32
	CQEntries    uint32
	Flags        uint32
	SQThreadCPU  uint32
	SQThreadIdle uint32
	Features     uint32
	WQFD         uint32
	Resv         [3]uint32
	SQOff        sqRingOffsets
	CQOff        cqRingOffsets
}

const (
	sysIOURingSetup = 425
	sysIOURingEnter = 426
	opURingCmd      = 46
	opReadIO        = 22 // IORING_OP_READ
	setupSQE128     = 1 << 10
	setupCQSize     = 1 << 3
	enterGetEvents  = 1
	offSQRing       = 0
	offCQRing       = 0x8000000
	offSQEs         = 0x10000000
)

// descOffset is the mmap offset of queue q's descriptor array on the char
// device: the stride is the maximum depth's array, page-rounded.
func descOffset(q int, pageSize int) int64 {
	stride := roundUp(maxQueueDepth*descSize, pageSize)
	return int64(q) * int64(stride)
}

// descLen is the mmap length of one queue's descriptors.
func descLen(depth, pageSize int) int { return roundUp(depth*descSize, pageSize) }

func roundUp(n, to int) int { return (n + to - 1) / to * to }

// ring arithmetic: entries are a power of two; indexes wrap with the mask.
func ringIndex(counter, mask uint32) uint32 { return counter & mask }

// ringFree is how many SQEs can be queued given head and tail counters
// (which wrap around 2^32 independently of the ring size).
func ringFree(head, tail, entries uint32) uint32 { return entries - (tail - head) }
