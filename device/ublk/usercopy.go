package ublk

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// User copy (UBLK_F_USER_COPY, Linux 6.5+): instead of giving the kernel
// a buffer per tag, which it fills before a write is fetched and drains
// at a read's commit, the server reads a write's data from and writes a
// read's data into the char device, at an offset naming the queue and
// the tag. obdvol asks for it on every new device, and uses it where the
// kernel granted it (a device re-attached after a crash keeps the mode it
// was created with). Why: per-tag buffers stay resident once a large
// request used them (512 KiB a tag: 64 MiB a device at 2 queues x 64),
// which made a host of many devices pay for their sum; with user copy the
// buffers come from one pool for the whole process, so memory follows
// the requests in flight, not the devices (tests/vm TestDaemonClones,
// TestUblkClonesBenchVM). It costs one pread or pwrite a request, the
// same copy the kernel made otherwise.

// userCopyOffset is where the data of (queue, tag) is read and written
// on /dev/ublkcN (include/uapi/linux/ublk_cmd.h: UBLKSRV_IO_BUF_OFFSET,
// UBLK_TAG_OFF 25, UBLK_QID_OFF 41).
func userCopyOffset(q, tag int) int64 {
	const bufOffset, tagOff, qidOff = 0x80000000, 25, 41
	return bufOffset + int64(q)<<qidOff + int64(tag)<<tagOff
}

// userCopy reports whether the kernel granted user copy to this device.
func (d *Device) userCopy() bool { return d.info.Flags&FlagUserCopy != 0 }

// Pool buffers come in three sizes, so that a 4 KiB request does not hold
// a 512 KiB buffer.
var copyPools = [...]struct {
	size int
	pool sync.Pool
}{{size: 4 << 10}, {size: 64 << 10}, {size: 1 << 20}}

func getCopyBuf(n int) (*[]byte, int) {
	for i := range copyPools {
		if n <= copyPools[i].size {
			if b, ok := copyPools[i].pool.Get().(*[]byte); ok {
				return b, i
			}
			b := make([]byte, copyPools[i].size)
			return &b, i
		}
	}
	b := make([]byte, n)
	return &b, -1
}

func putCopyBuf(b *[]byte, class int) {
	if class >= 0 {
		copyPools[class].pool.Put(b)
	}
}

// handleCopy serves one request of queue q, tag, in user-copy mode.
func (d *Device) handleCopy(q, tag int, desc *ioDesc) int32 {
	n := int(desc.NrSectors) << 9
	if op := desc.op(); op != opRead && op != opWrite {
		return d.handle(desc, nil, nil)
	}
	if n > int(d.info.MaxIOBufBytes) {
		return -int32(unix.EINVAL)
	}
	bp, class := getCopyBuf(n)
	defer putCopyBuf(bp, class)
	off := userCopyOffset(q, tag)
	return d.handle(desc, (*bp)[:n], func(b []byte, toKernel bool) error {
		return copyFull(d.charFd, b, off, toKernel)
	})
}

// copyFull moves all of b to (toKernel) or from the request's data at off.
func copyFull(fd int, b []byte, off int64, toKernel bool) error {
	for done := 0; done < len(b); {
		var n int
		var err error
		if toKernel {
			n, err = unix.Pwrite(fd, b[done:], off+int64(done))
		} else {
			n, err = unix.Pread(fd, b[done:], off+int64(done))
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("ublk user copy: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("ublk user copy: %d of %d bytes moved", done, len(b))
		}
		done += n
	}
	return nil
}
