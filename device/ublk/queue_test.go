package ublk

import (
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The completion list wakes the queue thread once per empty-to-non-empty
// transition, hands back every completion once, and drops pushes after
// close.
func TestDoneListEventfd(t *testing.T) {
	l, err := newDoneList(4)
	if err != nil {
		t.Fatal(err)
	}
	defer l.closeFD()
	if n := eventfdCount(t, l.efd); n != 0 {
		t.Fatalf("fresh eventfd counter %d", n)
	}
	if err := l.push(0, 3, 4096); err != nil {
		t.Fatal(err)
	}
	if err := l.push(0, 1, -5); err != nil {
		t.Fatal(err)
	}
	if n := eventfdCount(t, l.efd); n != 1 {
		t.Fatalf("two pushes into an empty list wrote the eventfd %d times, want 1", n)
	}
	got := l.take()
	if len(got) != 2 || got[0] != (completion{tag: 3, res: 4096}) || got[1] != (completion{tag: 1, res: -5}) {
		t.Fatalf("take = %v", got)
	}
	if len(l.take()) != 0 {
		t.Fatal("second take not empty")
	}
	if err := l.push(0, 2, 0); err != nil {
		t.Fatal(err)
	}
	if n := eventfdCount(t, l.efd); n != 1 {
		t.Fatalf("push after a take: eventfd %d, want 1", n)
	}
	l.take()
	l.close()
	if err := l.push(0, 0, 1); err != nil {
		t.Fatal(err)
	}
	if got := l.take(); len(got) != 0 {
		t.Fatalf("a push after close was kept: %v", got)
	}
	if n := eventfdCount(t, l.efd); n != 0 {
		t.Fatalf("a push after close wrote the eventfd")
	}
}

// eventfdCount reads (and resets) the eventfd's counter without blocking.
func eventfdCount(t *testing.T, efd int) uint64 {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(efd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 0); err != nil || n == 0 {
		return 0
	}
	var b [8]byte
	if _, err := unix.Read(efd, b[:]); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

func TestDoneListNoAlloc(t *testing.T) {
	l, err := newDoneList(64)
	if err != nil {
		t.Fatal(err)
	}
	defer l.closeFD()
	var counter [8]byte
	allocs := testing.AllocsPerRun(100, func() {
		for i := 0; i < 64; i++ {
			l.push(7, uint16(i), 4096)
		}
		l.take()
		unix.Read(l.efd, counter[:])
	})
	if allocs != 0 {
		t.Fatalf("push/take allocate %.1f times per round", allocs)
	}
}

// memBackend is an in-memory disk; a read of block slow waits on release.
type memBackend struct {
	data     []byte
	slow     int64 // byte offset of the slow block, -1 for none
	started  chan struct{}
	release  chan struct{}
	slowDone atomic.Bool
	inflight atomic.Int32
	maxIn    atomic.Int32
	reads    atomic.Int64
}

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	m.reads.Add(1)
	n := m.inflight.Add(1)
	defer m.inflight.Add(-1)
	for {
		x := m.maxIn.Load()
		if n <= x || m.maxIn.CompareAndSwap(x, n) {
			break
		}
	}
	if off == m.slow {
		close(m.started)
		<-m.release
		defer m.slowDone.Store(true)
	}
	return copy(p, m.data[off:]), nil
}
func (m *memBackend) WriteAt(p []byte, off int64) (int, error) { return copy(m.data[off:], p), nil }
func (m *memBackend) Flush() error                             { return nil }
func (m *memBackend) Discard(off, n int64) error               { return nil }
func (m *memBackend) WriteZeroes(off, n int64) error           { return nil }
func (m *memBackend) Size() uint64                             { return uint64(len(m.data)) }

// testQueue builds a queue's async half (descriptors, buffers, workers,
// completion list) without a kernel: the test plays the kernel by writing
// descriptors and the queue thread by calling dispatch and take.
func testQueue(t *testing.T, b *memBackend, depth int) *queue {
	t.Helper()
	q := &queue{d: &Device{b: b}, depth: depth, bufSize: 4096}
	var err error
	if q.descs, err = unix.Mmap(-1, 0, descLen(depth, os.Getpagesize()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		t.Fatal(err)
	}
	if q.bufs, err = unix.Mmap(-1, 0, depth*4096+4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		t.Fatal(err)
	}
	q.efdBuf = uintptr(unsafe.Pointer(&q.bufs[depth*4096]))
	if q.done, err = newDoneList(depth); err != nil {
		t.Fatal(err)
	}
	q.reqs = make([]ioDesc, depth)
	q.work = make(chan uint16, depth)
	return q
}

// kernelRead writes a READ descriptor for tag, as the kernel does before
// completing its fetch.
func (q *queue) kernelRead(tag int, block int64) {
	d := (*ioDesc)(unsafe.Pointer(&q.descs[tag*descSize]))
	*d = ioDesc{OpFlags: opRead, NrSectors: 8, StartSector: uint64(block * 8)}
}

// A request whose backend read blocks holds one worker: every other
// request of the queue completes meanwhile, the workers never outnumber
// the depth, and close waits for the blocked worker and drops its result.
func TestQueueSlowRequestStallsOnlyItself(t *testing.T) {
	const depth = 16
	b := &memBackend{data: make([]byte, 64*4096), slow: 5 * 4096, started: make(chan struct{}), release: make(chan struct{})}
	for i := range b.data {
		b.data[i] = byte(i / 4096)
	}
	q := testQueue(t, b, depth)
	q.kernelRead(0, 5)
	q.dispatch(0)
	<-b.started
	seen := map[uint16]bool{}
	for round := 0; round < 20; round++ {
		for tag := 1; tag < depth; tag++ {
			q.kernelRead(tag, int64(10+tag))
			q.dispatch(tag)
		}
		for n := 0; n < depth-1; {
			c := q.waitTake(t)
			for _, x := range c {
				if x.tag == 0 || x.res != 4096 {
					t.Fatalf("completion %+v", x)
				}
				if q.buf(int(x.tag))[0] != byte(10+x.tag) {
					t.Fatalf("tag %d read block %d", x.tag, q.buf(int(x.tag))[0])
				}
				seen[x.tag] = true
			}
			n += len(c)
		}
		if b.slowDone.Load() {
			t.Fatal("the slow read returned before it was released")
		}
	}
	if len(seen) != depth-1 {
		t.Fatalf("%d tags completed", len(seen))
	}
	if m := b.maxIn.Load(); m > depth {
		t.Fatalf("%d backend calls at once, depth %d", m, depth)
	}
	if q.spawned > depth || q.spawned < 2 {
		t.Fatalf("%d workers started for depth %d", q.spawned, depth)
	}
	t.Logf("%d workers served %d requests", q.spawned, 1+20*(depth-1))
	// The slow read completes once released.
	close(b.release)
	c := q.waitTake(t)
	if len(c) != 1 || c[0] != (completion{tag: 0, res: 4096}) || q.buf(0)[0] != 5 {
		t.Fatalf("slow completion %v", c)
	}
	// Abort while a request is being served: close waits for it and
	// drops its result.
	b.started, b.release = make(chan struct{}), make(chan struct{})
	b.slowDone.Store(false)
	q.kernelRead(0, 5)
	q.dispatch(0)
	<-b.started
	closed := make(chan struct{})
	go func() { q.close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("close returned while a worker was still serving")
	case <-time.After(50 * time.Millisecond):
	}
	close(b.release)
	<-closed
	if !b.slowDone.Load() {
		t.Fatal("the worker did not finish")
	}
	if c := q.done.take(); len(c) != 0 {
		t.Fatalf("a result after close was kept: %v", c)
	}
}

// waitTake waits for the eventfd (as the queue thread's armed read does)
// and takes the completions.
func (q *queue) waitTake(t *testing.T) []completion {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(q.done.efd), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 10000); err != nil || n != 1 {
		t.Fatalf("eventfd not signalled: %v", err)
	}
	eventfdCount(t, q.done.efd)
	return q.done.take()
}

// The eventfd read armed in a real io_uring (the queue thread's ring)
// completes when a worker pushes, with the queue's user_data.
func TestEventfdReadInRing(t *testing.T) {
	r, err := newRing(8, 0)
	if err != nil {
		t.Skipf("io_uring unavailable here: %v", err)
	}
	b := &memBackend{data: make([]byte, 4096), slow: -1}
	q := testQueue(t, b, 4)
	q.r = r
	defer q.close()
	for round := 0; round < 3; round++ {
		if err := q.armEventfd(); err != nil {
			t.Fatal(err)
		}
		if err := r.enter(0); err != nil {
			t.Fatal(err)
		}
		if h, tl := r.cqReady(); h != tl {
			t.Fatal("the eventfd read completed before any push")
		}
		var wg sync.WaitGroup
		for i := 0; i < 3; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); q.done.push(0, uint16(i), int32(i)) }()
		}
		wg.Wait()
		if err := r.enter(1); err != nil {
			t.Fatal(err)
		}
		h, tl := r.cqReady()
		if tl-h != 1 {
			t.Fatalf("%d completions, want 1", tl-h)
		}
		c := r.cqeAt(h)
		if c.UserData != udEventfd || c.Res != 8 {
			t.Fatalf("cqe %+v", *c)
		}
		if v := binary.LittleEndian.Uint64(q.bufs[q.depth*q.bufSize:]); v != 1 {
			t.Fatalf("eventfd counter read %d, want 1 (one wake for three pushes)", v)
		}
		r.cqDone(tl)
		if got := q.done.take(); len(got) != 3 {
			t.Fatalf("took %d completions", len(got))
		}
	}
}

func TestUpdateSizeCommand(t *testing.T) {
	if got := encoded(cmdUpdateSize); got != 0xC0207515 {
		t.Fatalf("UPDATE_SIZE encodes as %#x, want 0xC0207515 (_IOWR('u', 0x15, 32 bytes))", got)
	}
	c := updateSizeCmd(7, 20<<30)
	if c.DevID != 7 || c.QueueID != 0xFFFF || c.Data != 20<<30>>9 || c.Len != 0 || c.Addr != 0 {
		t.Fatalf("UPDATE_SIZE payload %+v", c)
	}
	// A device the kernel did not grant FlagUpdateSize refuses, sending
	// nothing (there is no control ring here).
	d := &Device{ID: 3}
	err := d.Resize(1 << 30)
	if !errors.Is(err, errors.ErrUnsupported) || !errors.Is(err, ErrResizeUnsupported) {
		t.Fatalf("Resize without the flag = %v", err)
	}
	d.info.Flags = FlagUpdateSize
	if err := d.Resize(1<<30 + 512); err == nil || errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Resize to an unaligned size = %v", err)
	}
	if err := d.Resize(1 << 30); !errors.Is(err, errStopped) {
		t.Fatalf("Resize of a stopped device = %v", err)
	}
}

func TestSetIOFlusher(t *testing.T) {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the flagged thread exits with the goroutine
		if err := SetIOFlusher(); err != nil {
			errc <- err
			return
		}
		v, err := unix.PrctlRetInt(prSetIOFlusher+1, 0, 0, 0, 0) // PR_GET_IO_FLUSHER
		if err == nil && v != 1 {
			err = errors.New("PR_GET_IO_FLUSHER is not 1 after PR_SET_IO_FLUSHER")
		}
		errc <- err
	}()
	err := <-errc
	if !hasCapSysResource(t) {
		if !errors.Is(err, unix.EPERM) {
			t.Fatalf("without CAP_SYS_RESOURCE: %v, want EPERM", err)
		}
		t.Logf("no CAP_SYS_RESOURCE here: SetIOFlusher refused with %v", err)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
}

// hasCapSysResource reads this process's effective capabilities.
func hasCapSysResource(t *testing.T) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
	return false
}
