package ublk

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// user_data names (slot, tag) of an I/O command and nothing else, and the
// eventfd read's marker is never a command's.
func TestUserDataEncoding(t *testing.T) {
	for _, slot := range []uint32{0, 1, 2, 65535, 65536, maxSlots} {
		for _, tag := range []uint16{0, 1, 63, maxQueueDepth - 1, 65535} {
			ud := udIO(slot, tag)
			s, g, efd := udSplit(ud)
			if efd || s != slot || g != tag {
				t.Fatalf("udIO(%d, %d) = %#x decodes as slot %d tag %d eventfd %v", slot, tag, ud, s, g, efd)
			}
			if ud&udEventfd != 0 {
				t.Fatalf("udIO(%d, %d) = %#x has the eventfd bit", slot, tag, ud)
			}
		}
	}
	if _, _, efd := udSplit(udEventfd); !efd {
		t.Fatal("the eventfd marker does not decode as the eventfd")
	}
	// A device's own ring is slot 0: its commands carry the bare tag.
	if udIO(0, 17) != 17 {
		t.Fatalf("udIO(0, 17) = %d", udIO(0, 17))
	}
}

// The mailbox wakes the ring thread once per empty-to-non-empty
// transition, independently of the completion list (each list keeps its
// own invariant, so a thread taking one and then the other never misses
// a wake), hands back messages in order, and refuses posts once closed.
func TestMailbox(t *testing.T) {
	l, err := newDoneList(0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.closeFD()
	a, b := &queue{id: 1}, &queue{id: 2}
	if err := l.post(ringMsg{q: a}); err != nil {
		t.Fatal(err)
	}
	if err := l.post(ringMsg{q: b}); err != nil {
		t.Fatal(err)
	}
	if n := eventfdCount(t, l.efd); n != 1 {
		t.Fatalf("two posts into an empty mailbox wrote the eventfd %d times, want 1", n)
	}
	// The mailbox is not empty: a completion into the empty completion
	// list must still wake.
	l.reserve(4)
	if err := l.push(5, 3, 4096); err != nil {
		t.Fatal(err)
	}
	if n := eventfdCount(t, l.efd); n != 1 {
		t.Fatalf("a push while mail was queued wrote the eventfd %d times, want 1", n)
	}
	if c := l.take(); len(c) != 1 || c[0] != (completion{slot: 5, tag: 3, res: 4096}) {
		t.Fatalf("take = %v", c)
	}
	m := l.takeMail()
	if len(m) != 2 || m[0].q != a || m[1].q != b {
		t.Fatalf("takeMail = %v", m)
	}
	if len(l.takeMail()) != 0 {
		t.Fatal("second takeMail not empty")
	}
	if err := l.post(ringMsg{}); err != nil {
		t.Fatal(err)
	}
	if n := eventfdCount(t, l.efd); n != 1 {
		t.Fatalf("post after a takeMail: eventfd %d, want 1", n)
	}
	l.takeMail()
	l.close()
	if err := l.post(ringMsg{q: a}); err != errRingGone {
		t.Fatalf("post after close: %v, want errRingGone", err)
	}
	if len(l.takeMail()) != 0 || eventfdCount(t, l.efd) != 0 {
		t.Fatal("a post after close was kept or woke the thread")
	}
}

// reserve grows the lists for every queue a ring thread serves, keeping
// what is queued; pushes within it never allocate.
func TestDoneListReserve(t *testing.T) {
	l, err := newDoneList(2)
	if err != nil {
		t.Fatal(err)
	}
	defer l.closeFD()
	l.push(0, 1, 10)
	l.reserve(128)
	if c := l.take(); len(c) != 1 || c[0] != (completion{tag: 1, res: 10}) {
		t.Fatalf("reserve lost a queued completion: %v", c)
	}
	var counter [8]byte
	allocs := testing.AllocsPerRun(50, func() {
		for i := 0; i < 128; i++ {
			l.push(uint32(i%3), uint16(i), 4096)
		}
		l.take()
		unix.Read(l.efd, counter[:])
	})
	if allocs != 0 {
		t.Fatalf("push/take within the reservation allocate %.1f times per round", allocs)
	}
}

// A ring thread takes queues through its mailbox while it runs, submits
// their FETCH_REQs itself, and lets a queue go (its slot reused, its
// device's WaitGroup released, its memory unmapped) once all its tags
// completed with errors, without stopping; Close ends it once it serves
// nothing. The kernel's part is played by a pipe, which refuses every
// URING_CMD (-EOPNOTSUPP): as a stopped device aborts every fetch.
func TestRingThreadAttachDetach(t *testing.T) {
	if r, err := newRing(4, 0); err != nil {
		t.Skipf("io_uring unavailable here: %v", err)
	} else {
		r.close()
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	g := NewRings(2)
	if g.Size() != 2 {
		t.Fatalf("size %d", g.Size())
	}
	attach := func(qid int) *queue {
		t.Helper()
		d := &Device{b: &memBackend{data: make([]byte, 4096), slow: -1}, charFd: int(pr.Fd()), opts: Options{Rings: g}}
		q := testQueue(t, d.b.(*memBackend), 8)
		q.d, q.id = d, qid
		q.done.closeFD()
		q.done = nil // the ring thread's is used
		th, err := g.thread(qid % g.Size())
		if err != nil {
			t.Fatal(err)
		}
		ready := make(chan error, 1)
		d.wg.Add(1)
		if err := th.done.post(ringMsg{q: q, ready: ready}); err != nil {
			t.Fatal(err)
		}
		if err := <-ready; err != nil {
			t.Fatal(err)
		}
		released := make(chan struct{})
		go func() { d.wg.Wait(); close(released) }()
		select {
		case <-released:
		case <-time.After(10 * time.Second):
			t.Fatal("the queue was not released after all its tags failed")
		}
		if q.descs != nil || q.bufs != nil {
			t.Fatal("the queue's memory was not released")
		}
		if n := d.PolledQueues(); n != 0 {
			t.Fatalf("%d polled queues after the queue left", n)
		}
		return q
	}
	q1 := attach(0)
	q2 := attach(0)
	if q1.slot != 0 || q2.slot != 0 {
		t.Fatalf("slots %d, %d: the freed slot was not reused", q1.slot, q2.slot)
	}
	attach(1) // the second thread starts on its first queue
	th0, _ := g.thread(0)
	closed := make(chan error, 1)
	go func() { closed <- g.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with no queue served")
	}
	select {
	case <-th0.exit:
	default:
		t.Fatal("ring thread still running after Close")
	}
	if _, err := g.thread(0); err != errGroupClosed {
		t.Fatalf("thread after Close: %v", err)
	}
}

// One ring thread serves queues of two devices at once: each request goes
// to its own device's backend and its result back to its own queue; a
// read held in one device's backend holds back neither the other requests
// of its queue nor the other device; one device stopping leaves the other
// served. The kernel is played by /dev/null, whose URING_CMD completes
// at once with 0 (Linux 6.x: a fetch that returns a request, and a commit
// that fetches the next; the descriptors are the test's), and then, to
// stop a device, by a pipe dup'ed over its fd (every command aborted).
func TestRingThreadServesTwoDevices(t *testing.T) {
	g := NewRings(1)
	th, err := g.thread(0)
	if err != nil {
		t.Skipf("io_uring unavailable here: %v", err)
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	if !nullTakesURingCmd(t, int(null.Fd())) {
		g.Close()
		t.Skip("this kernel's /dev/null has no URING_CMD")
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	const depth = 8
	type dev struct {
		d  *Device
		b  *memBackend
		q  *queue
		fd int
	}
	start := func(slow int64) *dev {
		b := &memBackend{data: make([]byte, 64*4096), slow: slow, started: make(chan struct{}), release: make(chan struct{})}
		for i := range b.data {
			b.data[i] = byte(i / 4096)
		}
		fd, err := unix.Dup(int(null.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		d := &Device{b: b, charFd: fd, opts: Options{Rings: g}}
		q := testQueue(t, b, depth)
		q.d = d
		q.done.closeFD()
		q.done = nil
		q.kernelRead(0, 5) // the slow block, where there is one
		for tag := 1; tag < depth; tag++ {
			q.kernelRead(tag, int64(10+tag))
		}
		ready := make(chan error, 1)
		d.wg.Add(1)
		if err := th.done.post(ringMsg{q: q, ready: ready}); err != nil {
			t.Fatal(err)
		}
		if err := <-ready; err != nil {
			t.Fatal(err)
		}
		return &dev{d, b, q, fd}
	}
	// stop aborts every command of the device from now on, and waits
	// for its queue to leave the ring.
	stop := func(x *dev) {
		t.Helper()
		if err := unix.Dup3(int(pr.Fd()), x.fd, unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		left := make(chan struct{})
		go func() { x.d.wg.Wait(); close(left) }()
		select {
		case <-left:
		case <-time.After(10 * time.Second):
			t.Fatal("the queue did not leave the ring")
		}
		unix.Close(x.fd)
	}
	waitReads := func(x *dev, n int64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for x.b.reads.Load() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d backend reads, want %d", x.b.reads.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	a := start(-1)
	b := start(5 * 4096)
	if a.q.slot == b.q.slot || a.q.r != b.q.r {
		t.Fatalf("slots %d, %d; one ring: %v", a.q.slot, b.q.slot, a.q.r == b.q.r)
	}
	<-b.b.started // b's tag 0 is held in its backend
	waitReads(a, 2000)
	waitReads(b, 2000)
	if b.b.slowDone.Load() {
		t.Fatal("the held read returned")
	}
	for _, x := range []*dev{a, b} {
		if m := x.b.maxIn.Load(); m > depth {
			t.Fatalf("%d backend calls at once, depth %d", m, depth)
		}
		if x.q.spawned > depth {
			t.Fatalf("%d workers for depth %d", x.q.spawned, depth)
		}
	}
	stop(a)
	if a.q.descs != nil {
		t.Fatal("the stopped device's queue kept its memory")
	}
	n := b.b.reads.Load()
	waitReads(b, n+1000) // still served, its held read still out
	if b.b.slowDone.Load() {
		t.Fatal("the held read returned")
	}
	close(b.b.release)
	stop(b) // its held read's commit is the last one aborted
	if !b.b.slowDone.Load() {
		t.Fatal("the held read never finished")
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
}

// nullTakesURingCmd reports whether a URING_CMD on fd completes with 0.
func nullTakesURingCmd(t *testing.T, fd int) bool {
	r, err := newRing(2, 0)
	if err != nil {
		t.Skipf("io_uring unavailable here: %v", err)
	}
	defer r.close()
	uringCmd(r.sqe(), fd, encoded(ioFetchReq), make([]byte, 16), 1)
	res := int32(-1)
	if err := r.submitWait(func(_ uint64, r int32) { res = r }); err != nil {
		t.Fatal(err)
	}
	return res == 0
}
