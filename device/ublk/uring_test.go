package ublk

import (
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// submitWait returns only with the completion, even while signals keep
// interrupting its wait (as Go's preemption signals do). One
// io_uring_enter returns once it has submitted, wait or not: the control
// path used to read an ADD_DEV answer that had not arrived yet.
func TestRingSubmitWaitSurvivesSignals(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, err := newRing(4, 0)
	if err != nil {
		t.Skipf("no io_uring here: %v", err)
	}
	defer r.close()
	var p [2]int
	if err := unix.Pipe(p[:]); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	buf := make([]byte, 8)
	var pin runtime.Pinner
	pin.Pin(&buf[0])
	defer pin.Unpin()
	b := r.sqe()
	putSQE(b, &sqe{Opcode: opReadIO, FD: int32(p[0]), Addr: uint64(uintptr(unsafe.Pointer(&buf[0]))), Len: 1, UserData: 7})

	// Signal this thread every millisecond; write to the pipe after 200 ms.
	tid, pid := unix.Gettid(), os.Getpid()
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			unix.Tgkill(pid, tid, unix.SIGURG)
			time.Sleep(time.Millisecond)
		}
	}()
	go func() {
		time.Sleep(200 * time.Millisecond)
		unix.Write(p[1], []byte{'x'})
	}()
	var got []int32
	err = r.submitWait(func(ud uint64, res int32) {
		if ud == 7 {
			got = append(got, res)
		}
	})
	stop.Store(true)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != 1 || buf[0] != 'x' {
		t.Fatalf("submitWait returned completions %v, buffer %q: want the read of the pipe's one byte", got, buf[:1])
	}
}
