package ublk

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ring is one io_uring set up by raw system calls. It is used by one
// goroutine at a time (a queue's locked thread, or the control path).
type ring struct {
	fd      int
	sq, cq  []byte
	sqes    []byte
	sqeSize uint32
	entries uint32

	sqHead, sqTail, sqMask, sqArray unsafe.Pointer
	cqHead, cqTail, cqMask, cqes    unsafe.Pointer
	tail                            uint32 // next SQ tail (published at submit)
	toSubmit                        uint32
}

func newRing(entries, flags uint32) (*ring, error) { return newRingCQ(entries, 0, flags) }

// newRingCQ sets up a ring whose completion queue has cqEntries (0: the
// kernel's default, twice the submission queue).
func newRingCQ(entries, cqEntries, flags uint32) (*ring, error) {
	var p uringParams
	p.Flags = flags
	if cqEntries > 0 {
		p.Flags |= setupCQSize
		p.CQEntries = cqEntries
	}
	fd, _, errno := unix.Syscall(sysIOURingSetup, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &ring{fd: int(fd), entries: p.SQEntries, sqeSize: 64}
	if flags&setupSQE128 != 0 {
		r.sqeSize = 128
	}
	var err error
	mm := func(off int64, n int) []byte {
		if err != nil {
			return nil
		}
		var b []byte
		b, err = unix.Mmap(r.fd, off, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		return b
	}
	r.sq = mm(offSQRing, int(p.SQOff.Array+p.SQEntries*4))
	r.cq = mm(offCQRing, int(p.CQOff.Cqes+p.CQEntries*16))
	r.sqes = mm(offSQEs, int(p.SQEntries*r.sqeSize))
	if err != nil {
		r.close()
		return nil, fmt.Errorf("io_uring mmap: %w", err)
	}
	at := func(b []byte, off uint32) unsafe.Pointer { return unsafe.Pointer(&b[off]) }
	r.sqHead, r.sqTail, r.sqMask, r.sqArray = at(r.sq, p.SQOff.Head), at(r.sq, p.SQOff.Tail), at(r.sq, p.SQOff.RingMask), at(r.sq, p.SQOff.Array)
	r.cqHead, r.cqTail, r.cqMask, r.cqes = at(r.cq, p.CQOff.Head), at(r.cq, p.CQOff.Tail), at(r.cq, p.CQOff.RingMask), at(r.cq, p.CQOff.Cqes)
	r.tail = atomic.LoadUint32((*uint32)(r.sqTail))
	return r, nil
}

func (r *ring) close() {
	for _, b := range [][]byte{r.sq, r.cq, r.sqes} {
		if b != nil {
			unix.Munmap(b)
		}
	}
	unix.Close(r.fd)
}

// sqe returns the next free submission entry, zeroed, or nil if full.
func (r *ring) sqe() []byte {
	head := atomic.LoadUint32((*uint32)(r.sqHead))
	if ringFree(head, r.tail, r.entries) == 0 {
		return nil
	}
	mask := *(*uint32)(r.sqMask)
	idx := ringIndex(r.tail, mask)
	b := r.sqes[idx*r.sqeSize : (idx+1)*r.sqeSize]
	clear(b)
	*(*uint32)(unsafe.Add(r.sqArray, 4*idx)) = idx
	r.tail++
	r.toSubmit++
	return b
}

// enter publishes queued SQEs and waits for at least wait completions.
func (r *ring) enter(wait uint32) error {
	atomic.StoreUint32((*uint32)(r.sqTail), r.tail)
	for {
		_, _, errno := unix.Syscall6(sysIOURingEnter, uintptr(r.fd), uintptr(r.toSubmit), uintptr(wait), enterGetEvents, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return fmt.Errorf("io_uring_enter: %w", errno)
		}
		r.toSubmit = 0
		return nil
	}
}

// submitWait publishes queued SQEs and waits until at least one
// completion is there, then reaps (fn is called for each). io_uring_enter
// returns as soon as it submitted, even when a signal cut its wait short
// (Go's runtime preempts goroutines with SIGURG), so one enter is not
// enough: without this loop a control command whose completion had not
// arrived yet read as a success with its answer unwritten (ADD_DEV's
// device id still -1: "/dev/ublkc4294967295", seen in the VM).
func (r *ring) submitWait(fn func(userData uint64, res int32)) error {
	for {
		if err := r.enter(1); err != nil {
			return err
		}
		if r.reap(fn) > 0 {
			return nil
		}
	}
}

// reap calls fn for each completion and releases them.
func (r *ring) reap(fn func(userData uint64, res int32)) int {
	head := atomic.LoadUint32((*uint32)(r.cqHead))
	tail := atomic.LoadUint32((*uint32)(r.cqTail))
	mask := *(*uint32)(r.cqMask)
	n := 0
	for ; head != tail; head++ {
		c := (*cqe)(unsafe.Add(r.cqes, 16*uintptr(head&mask)))
		fn(c.UserData, c.Res)
		n++
	}
	atomic.StoreUint32((*uint32)(r.cqHead), head)
	return n
}

// cqReady returns the CQ head and tail counters: the completions to read
// are cqeAt(head) up to tail; cqDone(tail) releases them. The queue loop
// uses these instead of reap so that no closure is allocated per batch.
func (r *ring) cqReady() (head, tail uint32) {
	return atomic.LoadUint32((*uint32)(r.cqHead)), atomic.LoadUint32((*uint32)(r.cqTail))
}

func (r *ring) cqNotEmpty() bool {
	head, tail := r.cqReady()
	return head != tail
}

func (r *ring) cqeAt(i uint32) *cqe {
	return (*cqe)(unsafe.Add(r.cqes, 16*uintptr(i&*(*uint32)(r.cqMask))))
}

func (r *ring) cqDone(head uint32) { atomic.StoreUint32((*uint32)(r.cqHead), head) }

func putSQE(b []byte, s *sqe) { copy(b, unsafe.Slice((*byte)(unsafe.Pointer(s)), 64)) }

// uringCmd fills b (64 or 128 bytes) as an IORING_OP_URING_CMD on fd with
// cmdOp and payload at offset 48.
func uringCmd(b []byte, fd int, cmdOp uint32, payload []byte, userData uint64) {
	s := sqe{Opcode: opURingCmd, FD: int32(fd), Off: uint64(cmdOp), UserData: userData}
	putSQE(b, &s)
	copy(b[48:], payload)
}

var errRing = errors.New("submission ring full")
