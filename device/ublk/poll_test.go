package ublk

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// TestRingPollerWakesOnCompletion: the ring's fd is pollable here, and a
// queue goroutine locked to its thread, waiting in the netpoller, wakes
// for a completion that a goroutine started just before the wait causes,
// with one P (the wait must let it run), round after round (a completion
// posted between the check and the park is not lost). Whether the P is
// handed on at once, rather than after sysmon retakes it, is what the VM
// clones bench measures (TestUblkClonesBenchVM).
func TestRingPollerWakesOnCompletion(t *testing.T) {
	r, err := newRing(8, 0)
	if err != nil {
		t.Skipf("io_uring unavailable here: %v", err)
	}
	b := &memBackend{data: make([]byte, 4096), slow: -1}
	q := testQueue(t, b, 4)
	q.r = r
	defer q.close()
	p, err := newRingPoller(r)
	if err != nil {
		t.Fatalf("the ring's fd cannot be polled: %v", err)
	}
	defer p.close()
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))

	for round := 0; round < 20; round++ {
		var pushed atomic.Bool
		done := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if err := q.armEventfd(); err != nil {
				done <- err
				return
			}
			if err := r.enter(0); err != nil {
				done <- err
				return
			}
			// The pusher can only run on the one P once this
			// goroutine's thread gave it up.
			go func() { pushed.Store(true); q.done.push(0, 1, 1) }()
			done <- p.wait()
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the wait never returned")
		}
		h, tl := r.cqReady()
		if tl-h != 1 || r.cqeAt(h).UserData != udEventfd || !pushed.Load() {
			t.Fatalf("round %d: %d completions, pushed %v", round, tl-h, pushed.Load())
		}
		r.cqDone(tl)
		if got := q.done.take(); len(got) != 1 {
			t.Fatalf("took %d completions", len(got))
		}
	}
}
