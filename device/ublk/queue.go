package ublk

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udEventfd is the user_data of a queue's eventfd read; I/O commands
// carry their tag (below maxQueueDepth).
const udEventfd = 1 << 32

// queue is one hardware queue. Its goroutine is locked to an OS thread
// (the queue's "daemon" for the kernel) that owns the ring and makes every
// submission. In the default (async) mode that thread only moves
// descriptors: a fetched request goes to a worker goroutine, the worker
// serves it from the backend and pushes the result onto done, and the
// queue thread, woken through the eventfd read armed in its ring, commits
// it with COMMIT_AND_FETCH_REQ. A slow backend call holds one worker and
// one tag, never the queue. In Serial mode the queue thread serves each
// request itself (the benchmark baseline).
type queue struct {
	d       *Device
	id      int
	depth   int
	r       *ring
	descs   []byte // the kernel's descriptors, read-only shared memory
	bufs    []byte // depth buffers of bufSize, then one page: the eventfd counter
	bufSize int
	efdBuf  uintptr // where the eventfd read lands (in bufs, outside the Go heap)

	// async mode
	reqs    []ioDesc    // per tag: the descriptor copy its worker serves
	work    chan uint16 // tags for the workers; capacity depth: never blocks
	done    *doneList
	idle    atomic.Int32 // workers that will take the next tag without a new one
	spawned int          // workers started (queue thread only): at most depth
	wg      sync.WaitGroup
	err     atomic.Pointer[error] // first worker-side failure (eventfd write)
	poll    *ringPoller           // waits for completions in the netpoller; nil: in io_uring_enter
}

func (d *Device) newQueue(q int) (*queue, error) {
	depth := int(d.info.QueueDepth)
	page := os.Getpagesize()
	qs := &queue{d: d, id: q, depth: depth, bufSize: int(d.info.MaxIOBufBytes)}
	var err error
	qs.descs, err = unix.Mmap(d.charFd, descOffset(q, page), descLen(depth, page), unix.PROT_READ, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("queue %d descriptors: %w", q, err)
	}
	if d.userCopy() {
		// Request data moves by pread/pwrite on the char device
		// through buffers of the process-wide pool (usercopy.go): no
		// per-tag buffers, only the eventfd counter's page.
		qs.bufSize = 0
	}
	qs.bufs, err = unix.Mmap(-1, 0, depth*qs.bufSize+page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		qs.close()
		return nil, fmt.Errorf("queue %d buffers: %w", q, err)
	}
	// No transparent huge pages: a request touches only the pages it
	// moves, and with THP "always" one 4K read would fault in (and zero)
	// 2 MiB, the daemon's RSS growing by megabytes a device.
	unix.Madvise(qs.bufs, unix.MADV_NOHUGEPAGE) // best effort
	qs.efdBuf = uintptr(unsafe.Pointer(&qs.bufs[depth*qs.bufSize]))
	// depth commands and the eventfd read are outstanding at most.
	if qs.r, err = newRing(uint32(depth+1), 0); err != nil {
		qs.close()
		return nil, err
	}
	if !d.opts.Serial {
		if qs.done, err = newDoneList(depth); err != nil {
			qs.close()
			return nil, err
		}
		qs.reqs = make([]ioDesc, depth)
		qs.work = make(chan uint16, depth)
		// Best effort: without it the queue waits in io_uring_enter,
		// holding its thread's P (see ringPoller).
		qs.poll, _ = newRingPoller(qs.r.fd)
	}
	return qs, nil
}

// close ends the workers (after the queue thread stopped: no tag is
// handed out any more), waits for them, then releases the eventfd, the
// ring and the memory they used. Results of requests still being served
// are dropped: the kernel fails them, or with user recovery requeues them
// for the next server.
func (q *queue) close() {
	if q.done != nil {
		q.done.close()
		close(q.work)
		q.wg.Wait()
		q.done.closeFD()
	}
	if q.poll != nil {
		q.poll.close()
	}
	if q.r != nil {
		q.r.close()
	}
	if q.bufs != nil {
		unix.Munmap(q.bufs)
	}
	if q.descs != nil {
		unix.Munmap(q.descs)
	}
}

func (q *queue) buf(tag int) []byte { return q.bufs[tag*q.bufSize : (tag+1)*q.bufSize] }

func (q *queue) desc(tag int) *ioDesc { return (*ioDesc)(unsafe.Pointer(&q.descs[tag*descSize])) }

// sqe returns a free submission entry, submitting what is queued if the
// ring is full (it is sized so that this does not happen).
func (q *queue) sqe() ([]byte, error) {
	if b := q.r.sqe(); b != nil {
		return b, nil
	}
	if err := q.r.enter(0); err != nil {
		return nil, err
	}
	if b := q.r.sqe(); b != nil {
		return b, nil
	}
	return nil, fmt.Errorf("queue %d: %w", q.id, errRing)
}

// submit queues an I/O command (FETCH or COMMIT_AND_FETCH) for tag.
func (q *queue) submit(op uint32, tag int, result int32) error {
	b, err := q.sqe()
	if err != nil {
		return err
	}
	c := ioCmd{QID: uint16(q.id), Tag: uint16(tag), Result: result}
	if q.bufSize > 0 {
		c.Addr = uint64(uintptr(unsafe.Pointer(&q.buf(tag)[0])))
	}
	uringCmd(b, q.d.charFd, q.d.op(op), unsafe.Slice((*byte)(unsafe.Pointer(&c)), 16), uint64(tag))
	return nil
}

// armEventfd queues the read of the completion eventfd.
func (q *queue) armEventfd() error {
	b, err := q.sqe()
	if err != nil {
		return err
	}
	s := sqe{Opcode: opReadIO, FD: int32(q.done.efd), Addr: uint64(q.efdBuf), Len: 8, UserData: udEventfd}
	putSQE(b, &s)
	return nil
}

// queue serves queue q on its own locked OS thread until every tag is
// aborted (the device stopped). The thread is never unlocked: it exits
// with the goroutine.
func (d *Device) queue(q int, ready chan<- error) {
	defer d.wg.Done()
	runtime.LockOSThread()
	// Best effort: a block server's thread must not wait on its own
	// device in memory reclaim (needs CAP_SYS_RESOURCE; root has it).
	SetIOFlusher()
	qs, err := d.newQueue(q)
	if err != nil {
		ready <- err
		return
	}
	defer qs.close()
	for t := 0; t < qs.depth; t++ {
		if err := qs.submit(ioFetchReq, t, 0); err != nil {
			ready <- err
			return
		}
	}
	if qs.done != nil {
		if err := qs.armEventfd(); err != nil {
			ready <- err
			return
		}
	}
	if err := qs.r.enter(0); err != nil {
		ready <- err
		return
	}
	if qs.poll != nil {
		d.polled.Add(1)
	}
	ready <- nil
	if err := qs.serve(); err != nil {
		d.setErr(fmt.Errorf("ublk queue %d: %w", q, err))
	}
}

// serve is the queue thread's loop.
func (q *queue) serve() error {
	live := q.depth
	for live > 0 {
		if err := q.waitCQ(); err != nil {
			return err
		}
		wake := false
		head, tail := q.r.cqReady()
		for ; head != tail; head++ {
			c := q.r.cqeAt(head)
			if c.UserData == udEventfd {
				if c.Res < 0 && c.Res != -int32(unix.EINTR) && c.Res != -int32(unix.EAGAIN) {
					q.r.cqDone(head + 1)
					return fmt.Errorf("eventfd read: %w", unix.Errno(-c.Res))
				}
				wake = true
				continue
			}
			tag := int(c.UserData)
			if c.Res < 0 { // ioResAbort: the device stopped; or an error
				live--
				continue
			}
			if q.done == nil {
				if err := q.submit(ioCommitAndFetchReq, tag, q.handle(tag, q.desc(tag))); err != nil {
					return err
				}
				continue
			}
			q.dispatch(tag)
		}
		q.r.cqDone(head)
		if q.done == nil {
			continue
		}
		if p := q.err.Load(); p != nil {
			return *p
		}
		if wake {
			if err := q.armEventfd(); err != nil {
				return err
			}
		}
		for _, c := range q.done.take() {
			if err := q.submit(ioCommitAndFetchReq, int(c.tag), c.res); err != nil {
				return err
			}
		}
	}
	return nil
}

// waitCQ submits what is queued and waits until the completion queue is
// not empty: in the netpoller when the queue has one, so that this
// thread's P runs the workers meanwhile, else in io_uring_enter.
func (q *queue) waitCQ() error {
	if q.poll == nil {
		return q.r.enter(1)
	}
	if err := q.r.enter(0); err != nil {
		return err
	}
	return q.poll.wait(func() bool {
		head, tail := q.r.cqReady()
		return head != tail
	})
}

// dispatch hands tag's request to a worker, starting one if none is idle.
// Workers count themselves idle before they push a result, so a new one
// is started only when every worker holds a request: never more than
// depth.
func (q *queue) dispatch(tag int) {
	q.reqs[tag] = *q.desc(tag)
	if q.idle.Load() > 0 {
		q.idle.Add(-1) // only this thread decrements: the credit is there
	} else {
		q.spawned++
		q.wg.Add(1)
		go q.worker()
	}
	q.work <- uint16(tag)
}

func (q *queue) worker() {
	defer q.wg.Done()
	for tag := range q.work {
		res := q.handle(int(tag), &q.reqs[tag])
		q.idle.Add(1)
		if err := q.done.push(tag, res); err != nil {
			q.err.CompareAndSwap(nil, &err)
		}
	}
}

// handle serves tag's request: with the queue's own buffer for the tag,
// or, in user-copy mode, with one from the pool.
func (q *queue) handle(tag int, desc *ioDesc) int32 {
	if q.bufSize > 0 {
		return q.d.handle(desc, q.buf(tag), nil)
	}
	return q.d.handleCopy(q.id, tag, desc)
}

// handle serves one request and returns its result (bytes or -errno).
// buf holds the request's data (writes) or receives it (reads); in
// user-copy mode xfer moves it from (before a write) or to (after a
// read) the kernel's request, else it is nil.
func (d *Device) handle(desc *ioDesc, buf []byte, xfer func(b []byte, toKernel bool) error) int32 {
	off := int64(desc.StartSector) << 9
	n := int64(desc.NrSectors) << 9
	var err error
	switch desc.op() {
	case opRead:
		if n > int64(len(buf)) {
			return -int32(unix.EINVAL)
		}
		_, err = d.b.ReadAt(buf[:n], off)
		if err == nil && xfer != nil {
			err = xfer(buf[:n], true)
		}
	case opWrite:
		if n > int64(len(buf)) {
			return -int32(unix.EINVAL)
		}
		if xfer != nil {
			if err := xfer(buf[:n], false); err != nil {
				return -int32(unix.EIO)
			}
		}
		_, err = d.b.WriteAt(buf[:n], off)
		if err == nil && desc.flags()&ioFlagFUA != 0 {
			err = d.b.Flush()
		}
	case opFlush:
		return errOr(d.b.Flush(), 0)
	case opDiscard:
		return errOr(d.b.Discard(off, n), 0)
	case opWriteZeroes:
		return errOr(d.b.WriteZeroes(off, n), 0)
	default:
		return -int32(unix.EOPNOTSUPP)
	}
	return errOr(err, int32(n))
}

func errOr(err error, ok int32) int32 {
	if err != nil {
		return -int32(unix.EIO)
	}
	return ok
}
