package ublk

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// prSetIOFlusher is PR_SET_IO_FLUSHER (Linux 5.6).
const prSetIOFlusher = 57

// SetIOFlusher marks the calling OS thread as an I/O flusher
// (prctl(PR_SET_IO_FLUSHER, 1)): its memory allocations never wait on I/O
// in reclaim (PF_MEMALLOC_NOIO) and it is not throttled for dirty pages,
// so a userspace block server cannot deadlock waiting for writeback to
// its own device. It needs CAP_SYS_RESOURCE.
//
// The flag belongs to one thread and is inherited by threads it creates.
// Each ublk queue thread and ring thread sets it on itself (best effort). A daemon calls
// SetIOFlusher first thing in main, on the main thread (runtime.LockOSThread
// in an init function keeps main there), so that the threads the Go runtime
// clones from it later inherit it; threads that existed before are not
// covered.
func SetIOFlusher() error {
	if err := unix.Prctl(prSetIOFlusher, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_IO_FLUSHER): %w", err)
	}
	return nil
}
