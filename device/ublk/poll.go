package ublk

import (
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ringPoller waits for a ring's completions (a queue's own ring, or a
// ring thread's) in Go's netpoller instead of in io_uring_enter.
//
// Why: a queue goroutine is locked to its OS thread (the kernel takes a
// queue's commands only from the thread that fetched them). Blocked in
// io_uring_enter, that thread keeps its P (Go's right to run goroutines)
// until sysmon retakes it, up to 10 ms later; the worker goroutines the
// queue just handed requests to sit on that P meanwhile. With more queue
// threads than GOMAXPROCS (64 devices of one queue each on 2 CPUs) almost
// every P was held that way: 4K random reads over 64 devices ran at 0.06x
// the IOPS of one device (tests/vm TestUblkClonesBenchVM). Parked in the
// netpoller, a locked goroutine's thread sleeps and hands its P on at
// once, like any goroutine waiting on a socket; the ring's fd is pollable
// (readable while its completion queue is not empty), and the kernel's
// task work that posts ublk completions interrupts the sleeping thread.
type ringPoller struct {
	f     *os.File
	rc    syscall.RawConn
	ready func(uintptr) bool // made once: a wait allocates nothing
}

// newRingPoller registers a duplicate of r's fd with the netpoller; wait
// returns once r's completion queue is not empty. It fails where the fd
// cannot be polled; the ring's thread then waits in io_uring_enter.
func newRingPoller(r *ring) (*ringPoller, error) {
	fd, err := unix.FcntlInt(uintptr(r.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	// O_NONBLOCK is what makes os.NewFile register the fd with the
	// netpoller; io_uring_enter does not look at it.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "io_uring")
	// A file the netpoller refused has no deadlines: that is the test.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &ringPoller{f: f, rc: rc, ready: func(uintptr) bool { return r.cqNotEmpty() }}, nil
}

// wait returns once the ring's completion queue is not empty, parking the
// goroutine (and handing its thread's P on) while it has nothing to reap.
// The queue is checked after the poller's state is reset, so a completion
// posted at any point is never missed.
func (p *ringPoller) wait() error { return p.rc.Read(p.ready) }

func (p *ringPoller) close() error { return p.f.Close() }
