package ublk

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// completion is a served request's result on its way back to the queue
// thread: the tag and what COMMIT_AND_FETCH_REQ reports (bytes or -errno).
type completion struct {
	tag uint16
	res int32
}

// doneList carries completions from a queue's workers to its queue
// thread. Workers push; the first push into an empty list writes the
// eventfd, whose IORING_OP_READ is armed in the queue's ring, so the
// queue thread wakes in io_uring_enter, takes the whole list and commits
// each request itself (the kernel accepts commands only from the thread
// that fetched). Both slices have the queue depth as capacity and at most
// depth requests are in flight, so push and take never allocate.
//
// Invariant: while the list is non-empty, an eventfd write has been made
// since the last take (the write happens with the empty-to-non-empty
// push), so a queue thread that re-arms its read never sleeps on a
// non-empty list.
type doneList struct {
	efd    int
	mu     sync.Mutex
	items  []completion
	spare  []completion
	closed bool // the queue thread is gone: pushes are dropped
}

var eventfdOne = [8]byte{1} // the little-endian uint64 1 written to the eventfd

func newDoneList(depth int) (*doneList, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &doneList{efd: efd, items: make([]completion, 0, depth), spare: make([]completion, 0, depth)}, nil
}

// push queues a completion and wakes the queue thread if the list was
// empty. After close, the completion is dropped (its request dies with
// the queue: the kernel fails or, with user recovery, requeues it).
func (l *doneList) push(tag uint16, res int32) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	wake := len(l.items) == 0
	l.items = append(l.items, completion{tag, res})
	l.mu.Unlock()
	if !wake {
		return nil
	}
	// The eventfd stays open until every worker has returned (queue.close
	// waits for them), so this never writes to a closed or reused fd.
	for {
		_, err := unix.Write(l.efd, eventfdOne[:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("eventfd write: %w", err)
		}
		return nil
	}
}

// take returns every queued completion and empties the list. The slice is
// valid until the next take (the two buffers swap).
func (l *doneList) take() []completion {
	l.mu.Lock()
	out := l.items
	l.items = l.spare[:0]
	l.spare = out
	l.mu.Unlock()
	return out
}

// close drops every later push. The caller closes the eventfd with
// closeFD once no worker can push any more.
func (l *doneList) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
}

func (l *doneList) closeFD() { unix.Close(l.efd) }
