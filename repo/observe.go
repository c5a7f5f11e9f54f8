package repo

import "sync/atomic"

// FetchObserver is told about every range request the lazy path sends to
// a registry (RegistryRanges): the registry's host (host[:port], never a
// URL, a repository or a credential), the bytes of blob data it
// delivered, and its error (nil on success). It is called on the fetching
// goroutine after the answer is read, with no lock held; it must be quick
// and safe for concurrent use. Package metrics implements it.
type FetchObserver interface {
	RangeRequest(registry string, bytes int64, err error)
}

type fetchObserverBox struct{ o FetchObserver }

var fetchObserver atomic.Pointer[fetchObserverBox]

// SetFetchObserver makes o the process's fetch observer (nil: none, the
// default) and returns the one it replaces. A process that serves many
// volumes (the daemon) sets it once at start.
func SetFetchObserver(o FetchObserver) (previous FetchObserver) {
	var box *fetchObserverBox
	if o != nil {
		box = &fetchObserverBox{o}
	}
	if old := fetchObserver.Swap(box); old != nil {
		return old.o
	}
	return nil
}

// observeRange reports one range request to the fetch observer, if any.
func observeRange(registry string, n int64, err error) {
	if box := fetchObserver.Load(); box != nil {
		box.o.RangeRequest(registry, n, err)
	}
}
