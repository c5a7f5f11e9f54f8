package ublk

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RingGroup is a set of ring threads shared by every device started with
// it (Options.Rings): ring thread i serves queue q of every device with
// q mod n == i, through one io_uring. The kernel records the task that
// fetched per queue, not per device (ublk_drv: ubq->ubq_daemon), so one
// thread may fetch and commit for queues of many devices.
//
// Why: with a thread and a ring per queue, N devices of one queue each
// with one request in flight apiece made every request pay its own chain
// of thread wakeups (task work to its queue thread, hand-off to a worker,
// eventfd back, commit) and a host of 64 devices ran 130-odd threads; 4K
// random reads spread over 64 devices ran at 0.10x the IOPS of the same
// reads on one device (tests/vm TestUblkClonesBenchVM). A shared ring
// reaps the requests of all its devices in one wakeup and commits their
// results in one submission, like one device's queue does, and the
// process has about one ring thread per CPU whatever the number of
// devices: the same bench through the daemon's group ran at 1.51x
// [0.28-1.99] (3 rounds, TCG, host heavily loaded) and 0.89x [0.35-1.12]
// (5 rounds, quieter), 15 daemon threads with 64 devices (docs/design.md,
// Sharing).
//
// A ring thread keeps the queue design: it only moves descriptors; each
// queue has its own workers (at most its depth), which push results onto
// the ring's one done list (slot, tag, result) and wake the thread through
// the eventfd read armed in its ring. A device's queue joins a running
// ring thread through the same eventfd (doneList.post): the thread
// submits the queue's FETCH_REQs itself. A queue leaves when all its tags
// are aborted (the device stopped), without disturbing the other queues
// of the ring. A process killed with -9 leaves all its devices for user
// recovery; the next process's group re-fetches them (Recover).
type RingGroup struct {
	mu      sync.Mutex
	threads []*ringThread // nil until first used; replaced if one died
	closed  bool
}

// ringEntries and ringCQEntries size a ring thread's io_uring. Its
// submissions are flushed whenever the submission queue fills. Its
// completions in flight are bounded by the commands outstanding (the
// depth of every queue served, plus one); past ringCQEntries the kernel
// keeps the overflow (IORING_FEAT_NODROP) until the next io_uring_enter.
const (
	ringEntries   = 256
	ringCQEntries = 8192
)

// NewRings returns a group of n ring threads (n <= 0: runtime.NumCPU()),
// started when a device first uses them. Close it once every device
// started with it is stopped.
func NewRings(n int) *RingGroup {
	if n <= 0 {
		n = runtime.NumCPU()
	}
	return &RingGroup{threads: make([]*ringThread, n)}
}

// Size is the number of ring threads.
func (g *RingGroup) Size() int { return len(g.threads) }

var errGroupClosed = errors.New("ublk ring group closed")

// thread returns ring thread i, starting it if it is not running.
func (g *RingGroup) thread(i int) (*ringThread, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, errGroupClosed
	}
	if t := g.threads[i]; t != nil {
		select {
		case <-t.exit:
		default:
			return t, nil
		}
	}
	t := &ringThread{exit: make(chan struct{})}
	started := make(chan error, 1)
	go t.run(started)
	if err := <-started; err != nil {
		return nil, err
	}
	g.threads[i] = t
	return t, nil
}

// Close asks every ring thread to exit once it serves no queue and waits
// for them: stop the group's devices first.
func (g *RingGroup) Close() error {
	g.mu.Lock()
	g.closed = true
	threads := g.threads
	g.mu.Unlock()
	for _, t := range threads {
		if t == nil {
			continue
		}
		t.done.post(ringMsg{}) // fails only if the thread is gone already
		<-t.exit
	}
	var errs []error
	for _, t := range threads {
		if t != nil && t.err != nil {
			errs = append(errs, t.err)
		}
	}
	return errors.Join(errs...)
}

// ringThread is one locked OS thread owning one io_uring, serving the
// queues in slots. Everything but done and exit belongs to the thread.
type ringThread struct {
	r      *ring
	done   *doneList
	poll   *ringPoller
	efdBuf []byte // the eventfd read's target: a page outside the Go heap
	slots  []*queue
	free   []uint32 // slots to reuse
	served int      // queues in slots
	depths int      // the sum of their depths: completions in flight at most
	quit   bool
	queues sync.WaitGroup // queues attached and not yet released
	exit   chan struct{}  // closed when the thread is gone
	err    error          // why it stopped (read after exit)
}

func (t *ringThread) run(started chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
	defer close(t.exit)
	SetIOFlusher() // best effort, as a device's own queue thread
	if err := t.setup(); err != nil {
		t.teardown()
		t.err = err
		started <- err
		return
	}
	started <- nil
	t.err = t.serve()
	t.stopAll(t.err)
	t.teardown()
}

func (t *ringThread) setup() error {
	var err error
	if t.efdBuf, err = unix.Mmap(-1, 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		return fmt.Errorf("ublk ring: %w", err)
	}
	if t.r, err = newRingCQ(ringEntries, ringCQEntries, 0); err != nil {
		return err
	}
	if t.done, err = newDoneList(0); err != nil {
		return err
	}
	t.poll, _ = newRingPoller(t.r) // best effort, see ringPoller
	if err := t.armEventfd(); err != nil {
		return err
	}
	return t.r.enter(0)
}

func (t *ringThread) armEventfd() error {
	return armEventfd(t.r, t.done.efd, uintptr(unsafe.Pointer(&t.efdBuf[0])))
}

// teardown closes the done list (later pushes dropped, posts refused),
// answers the messages still queued, waits until every queue's workers
// are gone, then releases the eventfd, the poller and the ring. Closing
// the ring cancels what it still has outstanding: commands of queues
// that never left (stopAll), which the kernel then treats as a dead
// server's (user recovery).
func (t *ringThread) teardown() {
	if t.done != nil {
		t.done.close()
		for _, m := range t.done.takeMail() {
			if m.q != nil {
				t.refuse(m, errRingGone)
			}
		}
	}
	t.queues.Wait()
	if t.done != nil {
		t.done.closeFD()
	}
	if t.poll != nil {
		t.poll.close()
	}
	if t.r != nil {
		t.r.close()
	}
	if t.efdBuf != nil {
		unix.Munmap(t.efdBuf)
	}
}

// serve is the ring thread's loop: it ends on a ring-wide failure, or
// when asked to quit and no queue is left.
func (t *ringThread) serve() error {
	for !t.quit || t.served > 0 {
		if err := waitCQ(t.r, t.poll); err != nil {
			return err
		}
		wake := false
		head, tail := t.r.cqReady()
		for ; head != tail; head++ {
			c := t.r.cqeAt(head)
			slot, tag, efd := udSplit(c.UserData)
			if efd {
				if err := eventfdResult(c.Res); err != nil {
					t.r.cqDone(head + 1)
					return err
				}
				wake = true
				continue
			}
			q := t.queueAt(slot)
			if q == nil {
				continue // cannot happen: a queue leaves with no command out
			}
			if c.Res < 0 { // ioResAbort: the device stopped; or an error
				if q.live--; q.live == 0 {
					t.detach(q)
				}
				continue
			}
			q.dispatch(int(tag))
		}
		t.r.cqDone(head)
		if err := t.done.failed(); err != nil {
			return err
		}
		if wake {
			if err := t.armEventfd(); err != nil {
				return err
			}
		}
		for _, c := range t.done.take() {
			// A queue leaves only once all its tags are aborted, and
			// a tag with a worker has no command to abort: every
			// completion's queue is still in its slot.
			q := t.queueAt(c.slot)
			if q == nil {
				continue // cannot happen, see above
			}
			if err := q.submit(ioCommitAndFetchReq, int(c.tag), c.res); err != nil {
				return err
			}
		}
		if !wake {
			continue
		}
		for _, m := range t.done.takeMail() {
			if m.q == nil {
				t.quit = true
				continue
			}
			if err := t.attach(m); err != nil {
				return err
			}
		}
	}
	return nil
}

// queueAt is the queue in slot, or nil.
func (t *ringThread) queueAt(slot uint32) *queue {
	if int64(slot) >= int64(len(t.slots)) {
		return nil
	}
	return t.slots[slot]
}

// attach takes queue m.q into a slot and submits its FETCH_REQs. Only a
// failure of the ring itself is returned (the thread stops); the queue's
// commands the kernel refuses complete with errors and detach it.
func (t *ringThread) attach(m ringMsg) error {
	q := m.q
	var slot uint32
	if n := len(t.free); n > 0 {
		slot, t.free = t.free[n-1], t.free[:n-1]
	} else if len(t.slots) < maxSlots {
		slot = uint32(len(t.slots))
		t.slots = append(t.slots, nil)
	} else {
		t.refuse(m, fmt.Errorf("ublk ring: %d queues already", maxSlots))
		return nil
	}
	t.depths += q.depth
	t.done.reserve(t.depths)
	q.slot, q.r, q.done, q.live = slot, t.r, t.done, q.depth
	t.slots[slot] = q
	t.served++
	t.queues.Add(1)
	for tag := 0; tag < q.depth; tag++ {
		if err := q.submit(ioFetchReq, tag, 0); err != nil {
			m.ready <- err
			return err
		}
	}
	if err := t.r.enter(0); err != nil {
		m.ready <- err
		return err
	}
	if t.poll != nil {
		q.d.polled.Add(1)
	}
	m.ready <- nil
	return nil
}

// refuse answers an attach request that never took a slot.
func (t *ringThread) refuse(m ringMsg, err error) {
	m.q.release()
	m.q.d.wg.Done()
	m.ready <- err
}

// detach frees q's slot once all its tags are aborted: no worker holds
// one of its requests, so its workers are idle; they end, then the
// queue's memory is released and its device told (Device.wg), off this
// thread.
func (t *ringThread) detach(q *queue) {
	t.slots[q.slot] = nil
	t.free = append(t.free, q.slot)
	t.served--
	t.depths -= q.depth
	if t.poll != nil {
		q.d.polled.Add(-1)
	}
	work := q.work
	q.work = nil
	close(work)
	go func() {
		q.wg.Wait()
		q.release()
		q.d.wg.Done()
		t.queues.Done()
	}()
}

// stopAll detaches every queue still served after a ring-wide failure,
// recording err on its device.
func (t *ringThread) stopAll(err error) {
	for _, q := range t.slots {
		if q == nil {
			continue
		}
		if err != nil {
			q.d.setErr(fmt.Errorf("ublk queue %d: %w", q.id, err))
		}
		t.detach(q)
	}
}

// attachQueue maps queue q of d and hands it to its ring thread, which
// answers on ready. Device.wg counts the queue until it is released.
func (d *Device) attachQueue(q int, ready chan<- error) {
	g := d.opts.Rings
	t, err := g.thread(q % g.Size())
	if err != nil {
		d.wg.Done()
		ready <- err
		return
	}
	qs, err := d.newQueue(q)
	if err != nil {
		d.wg.Done()
		ready <- err
		return
	}
	if err := t.done.post(ringMsg{q: qs, ready: ready}); err != nil {
		qs.release()
		d.wg.Done()
		ready <- fmt.Errorf("ublk queue %d: %w", q, err)
	}
}
