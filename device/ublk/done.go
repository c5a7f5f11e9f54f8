package ublk

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// completion is a served request's result on its way back to the ring
// thread: the queue's slot in that ring (always 0 for a device's own
// ring), the tag, and what COMMIT_AND_FETCH_REQ reports (bytes or -errno).
type completion struct {
	slot uint32
	tag  uint16
	res  int32
}

// ringMsg asks a ring thread to take a device's queue into its ring (q
// set: it submits the queue's FETCH_REQs itself, since the kernel takes a
// queue's commands only from the task that fetched, and answers on ready)
// or, q nil, to exit once it serves no queue (RingGroup.Close).
type ringMsg struct {
	q     *queue
	ready chan<- error
}

// doneList carries completions from workers to the thread that owns a
// ring: a device's queue thread, or a RingGroup's ring thread serving
// queues of many devices (all of them push onto the one list of that
// ring). Workers push; the first push into an empty list writes the
// eventfd, whose IORING_OP_READ is armed in the ring, so the thread wakes,
// takes the whole list and commits each request itself. The same eventfd
// carries the ring's mailbox (post, takeMail): requests to attach a queue,
// which must also be served on that thread. The completion slices are
// reserved for the depth of every queue served (at most that many
// requests are in flight), so push and take never allocate.
//
// Invariant, per list (completions; mail): while it is non-empty, an
// eventfd write has been made since its last take (the write happens with
// the empty-to-non-empty push or post), so a thread that re-arms its read
// and then takes never sleeps on a non-empty list. The eventfd counter
// keeps writes made while no read is armed.
type doneList struct {
	efd    int
	mu     sync.Mutex
	items  []completion
	spare  []completion
	mail   []ringMsg
	closed bool // the ring's thread is gone: pushes are dropped, posts refused
	err    atomic.Pointer[error]
}

var eventfdOne = [8]byte{1} // the little-endian uint64 1 written to the eventfd

var errRingGone = errors.New("ublk ring thread stopped")

func newDoneList(depth int) (*doneList, error) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &doneList{efd: efd, items: make([]completion, 0, depth), spare: make([]completion, 0, depth)}, nil
}

// reserve makes room for n completions in flight at once (the ring
// thread calls it when a queue joins, before any of its requests can
// complete), so that push never allocates.
func (l *doneList) reserve(n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cap(l.items) < n {
		items := make([]completion, len(l.items), n)
		copy(items, l.items)
		l.items = items
	}
	if cap(l.spare) < n {
		l.spare = make([]completion, 0, n)
	}
}

// push queues a completion and wakes the ring thread if the list was
// empty. After close, the completion is dropped (its request dies with
// the queue: the kernel fails or, with user recovery, requeues it).
func (l *doneList) push(slot uint32, tag uint16, res int32) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	wake := len(l.items) == 0
	l.items = append(l.items, completion{slot, tag, res})
	l.mu.Unlock()
	if !wake {
		return nil
	}
	// The eventfd stays open until every worker has returned (the owner
	// waits for them before closeFD), so this never writes to a closed or
	// reused fd.
	return l.wake()
}

func (l *doneList) wake() error {
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

// post queues a message for the ring thread and wakes it if the mailbox
// was empty. It fails (errRingGone, the message not queued) once the
// thread is gone; a queued message is always answered.
func (l *doneList) post(m ringMsg) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return errRingGone
	}
	wake := len(l.mail) == 0
	l.mail = append(l.mail, m)
	l.mu.Unlock()
	if wake {
		if err := l.wake(); err != nil {
			// The message is queued: the thread stops on this at its
			// next wakeup, and answers it then.
			l.fail(err)
		}
	}
	return nil
}

// takeMail returns the queued messages and empties the mailbox.
func (l *doneList) takeMail() []ringMsg {
	l.mu.Lock()
	out := l.mail
	l.mail = nil
	l.mu.Unlock()
	return out
}

// fail records a worker-side failure (an eventfd write); the ring thread
// stops on it.
func (l *doneList) fail(err error) { l.err.CompareAndSwap(nil, &err) }

func (l *doneList) failed() error {
	if p := l.err.Load(); p != nil {
		return *p
	}
	return nil
}

// close drops every later push and refuses every later post. The caller
// closes the eventfd with closeFD once no worker can push any more.
func (l *doneList) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
}

func (l *doneList) closeFD() { unix.Close(l.efd) }
