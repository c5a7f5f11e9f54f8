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

// user_data of a ring's submissions. An I/O command carries the queue's
// slot in the ring (0 in a device's own ring; see RingGroup) and its tag;
// the eventfd read carries udEventfd, a bit no slot and tag can set.
const (
	udEventfd  = 1 << 63
	udSlotBits = 16        // tags are below maxQueueDepth (4096) < 1<<16
	maxSlots   = 1<<31 - 1 // queues one ring thread can serve at once
)

// udIO is the user_data of an I/O command of tag in the queue at slot.
func udIO(slot uint32, tag uint16) uint64 { return uint64(slot)<<udSlotBits | uint64(tag) }

// udSplit decodes a completion's user_data.
func udSplit(ud uint64) (slot uint32, tag uint16, eventfd bool) {
	if ud&udEventfd != 0 {
		return 0, 0, true
	}
	return uint32(ud >> udSlotBits), uint16(ud), false
}

// queue is one hardware queue of a device. Its commands are submitted by
// one OS thread, the queue's "daemon" for the kernel, which owns the ring
// they go through: either the queue's own thread (a goroutine locked to
// it, Device.queue), or a ring thread of a RingGroup that serves queues
// of many devices through one ring (rings.go). In the default (async)
// mode that thread only moves descriptors: a fetched request goes to a
// worker goroutine of the queue, the worker serves it from the backend
// and pushes the result onto the ring's done list, and the thread, woken
// through the eventfd read armed in its ring, commits it with
// COMMIT_AND_FETCH_REQ. A slow backend call holds one worker and one tag,
// never the queue nor the ring. In Serial mode the queue thread serves
// each request itself (the benchmark baseline).
type queue struct {
	d       *Device
	id      int
	depth   int
	r       *ring
	slot    uint32 // in r: the high bits of its commands' user_data
	descs   []byte // the kernel's descriptors, read-only shared memory
	bufs    []byte // depth buffers of bufSize, then one page: the eventfd counter
	bufSize int
	efdBuf  uintptr // where the eventfd read lands (in bufs, outside the Go heap)

	// async mode
	reqs    []ioDesc     // per tag: the descriptor copy its worker serves
	work    chan uint16  // tags for the workers; capacity depth: never blocks
	done    *doneList    // the ring's: shared with every queue of a ring thread
	idle    atomic.Int32 // workers that will take the next tag without a new one
	spawned int          // workers started (ring thread only): at most depth
	wg      sync.WaitGroup
	poll    *ringPoller // waits for completions in the netpoller; nil: in io_uring_enter
	live    int         // tags not yet aborted (ring thread only, shared rings)
}

// newQueue maps queue q's descriptors and buffers. A queue of a device's
// own thread then gets its ring (and, async, its done list and poller)
// from ownRing; a queue of a ring thread gets the thread's.
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
		qs.release()
		return nil, fmt.Errorf("queue %d buffers: %w", q, err)
	}
	// No transparent huge pages: a request touches only the pages it
	// moves, and with THP "always" one 4K read would fault in (and zero)
	// 2 MiB, the daemon's RSS growing by megabytes a device.
	unix.Madvise(qs.bufs, unix.MADV_NOHUGEPAGE) // best effort
	qs.efdBuf = uintptr(unsafe.Pointer(&qs.bufs[depth*qs.bufSize]))
	if !d.opts.Serial {
		qs.reqs = make([]ioDesc, depth)
		qs.work = make(chan uint16, depth)
	}
	return qs, nil
}

// ownRing gives the queue a ring of its own (and, async, a done list and
// a poller): the path of a device started without a RingGroup.
func (q *queue) ownRing() error {
	var err error
	// depth commands and the eventfd read are outstanding at most.
	if q.r, err = newRing(uint32(q.depth+1), 0); err != nil {
		return err
	}
	if !q.d.opts.Serial {
		if q.done, err = newDoneList(q.depth); err != nil {
			return err
		}
		// Best effort: without it the queue waits in io_uring_enter,
		// holding its thread's P (see ringPoller).
		q.poll, _ = newRingPoller(q.r)
	}
	return nil
}

// close ends the workers of a queue with its own ring (after the queue
// thread stopped: no tag is handed out any more), waits for them, then
// releases the eventfd, the ring and the memory they used. Results of
// requests still being served are dropped: the kernel fails them, or with
// user recovery requeues them for the next server.
func (q *queue) close() {
	if q.done != nil {
		q.done.close()
		q.stopWorkers()
		q.done.closeFD()
	}
	if q.poll != nil {
		q.poll.close()
	}
	if q.r != nil {
		q.r.close()
	}
	q.release()
}

// stopWorkers ends the queue's workers and waits for them.
func (q *queue) stopWorkers() {
	if q.work != nil {
		close(q.work)
		q.work = nil
	}
	q.wg.Wait()
}

// release unmaps the queue's descriptors and buffers.
func (q *queue) release() {
	if q.bufs != nil {
		unix.Munmap(q.bufs)
		q.bufs = nil
	}
	if q.descs != nil {
		unix.Munmap(q.descs)
		q.descs = nil
	}
}

func (q *queue) buf(tag int) []byte { return q.bufs[tag*q.bufSize : (tag+1)*q.bufSize] }

func (q *queue) desc(tag int) *ioDesc { return (*ioDesc)(unsafe.Pointer(&q.descs[tag*descSize])) }

// sqe returns a free submission entry of r, submitting what is queued if
// the ring is full.
func sqeOf(r *ring) ([]byte, error) {
	if b := r.sqe(); b != nil {
		return b, nil
	}
	if err := r.enter(0); err != nil {
		return nil, err
	}
	if b := r.sqe(); b != nil {
		return b, nil
	}
	return nil, errRing
}

// submit queues an I/O command (FETCH or COMMIT_AND_FETCH) for tag.
func (q *queue) submit(op uint32, tag int, result int32) error {
	b, err := sqeOf(q.r)
	if err != nil {
		return fmt.Errorf("queue %d: %w", q.id, err)
	}
	c := ioCmd{QID: uint16(q.id), Tag: uint16(tag), Result: result}
	if q.bufSize > 0 {
		c.Addr = uint64(uintptr(unsafe.Pointer(&q.buf(tag)[0])))
	}
	uringCmd(b, q.d.charFd, q.d.op(op), unsafe.Slice((*byte)(unsafe.Pointer(&c)), 16), udIO(q.slot, uint16(tag)))
	return nil
}

// armEventfd queues the read of the completion eventfd efd into buf (8
// bytes outside the Go heap).
func armEventfd(r *ring, efd int, buf uintptr) error {
	b, err := sqeOf(r)
	if err != nil {
		return err
	}
	s := sqe{Opcode: opReadIO, FD: int32(efd), Addr: uint64(buf), Len: 8, UserData: udEventfd}
	putSQE(b, &s)
	return nil
}

func (q *queue) armEventfd() error { return armEventfd(q.r, q.done.efd, q.efdBuf) }

// queue serves queue q: through the device's RingGroup when it has one
// (and is not Serial), else on its own locked OS thread until every tag
// is aborted (the device stopped). That thread is never unlocked: it
// exits with the goroutine.
func (d *Device) queue(q int, ready chan<- error) {
	if d.opts.Rings != nil && !d.opts.Serial {
		d.attachQueue(q, ready)
		return
	}
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
	if err := qs.ownRing(); err != nil {
		ready <- err
		return
	}
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

// serve is the loop of a queue's own thread.
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
			_, tag, efd := udSplit(c.UserData)
			if efd {
				if err := eventfdResult(c.Res); err != nil {
					q.r.cqDone(head + 1)
					return err
				}
				wake = true
				continue
			}
			if c.Res < 0 { // ioResAbort: the device stopped; or an error
				live--
				continue
			}
			if q.done == nil {
				if err := q.submit(ioCommitAndFetchReq, int(tag), q.handle(int(tag), q.desc(int(tag)))); err != nil {
					return err
				}
				continue
			}
			q.dispatch(int(tag))
		}
		q.r.cqDone(head)
		if q.done == nil {
			continue
		}
		if err := q.done.failed(); err != nil {
			return err
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

// eventfdResult is the error of an eventfd read's completion, if any.
func eventfdResult(res int32) error {
	if res < 0 && res != -int32(unix.EINTR) && res != -int32(unix.EAGAIN) {
		return fmt.Errorf("eventfd read: %w", unix.Errno(-res))
	}
	return nil
}

func (q *queue) waitCQ() error { return waitCQ(q.r, q.poll) }

// waitCQ submits what is queued in r and waits until its completion queue
// is not empty: in the netpoller when there is a poller, so that this
// thread's P runs the workers meanwhile, else in io_uring_enter.
func waitCQ(r *ring, p *ringPoller) error {
	if p == nil {
		return r.enter(1)
	}
	if err := r.enter(0); err != nil {
		return err
	}
	return p.wait()
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
		go q.worker(q.work)
	}
	q.work <- uint16(tag)
}

// worker serves tags from work (passed in: the queue's field is cleared
// when the queue ends, maybe before a new worker first looks).
func (q *queue) worker(work <-chan uint16) {
	defer q.wg.Done()
	for tag := range work {
		res := q.handle(int(tag), &q.reqs[tag])
		q.idle.Add(1)
		if err := q.done.push(q.slot, tag, res); err != nil {
			q.done.fail(err)
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
