package metadata

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// bbolt trusts the file it maps: a truncated file faults (SIGBUS) when a
// page past its end is touched, and a damaged page makes bbolt panic
// (failed assertions, "invalid page type", "invalid freelist page"). The
// catalogue turns both into errors wrapping ErrCorrupt at the boundary
// where it calls bbolt (opening the file, running a transaction), so
// that a damaged catalogue gives one clear error instead of a crash with
// stack traces. bbolt's own checks (the meta pages' checksums at open,
// its page assertions) are what detects the damage; its full consistency
// check (Tx.Check) is not run: it walks pages in a goroutine of its own,
// where a page number pointing past the file's end is a fatal fault that
// nothing can recover.

// guard runs fn with memory faults turned into panics and turns a panic
// raised inside bbolt into an error wrapping ErrCorrupt. A panic raised
// elsewhere (a bug in fn) is raised again: it says nothing about the file.
//
// A panic can leave the bbolt handle fn was using open (bolt.Open does
// not close its file when it panics): its lock is then held until this
// process exits. The catalogue is unusable anyway until it is repaired.
func (c *Catalog) guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		if !panickedInBolt() && !mappedFault(r) {
			panic(r)
		}
		err = c.corrupt(fmt.Errorf("bbolt: %v", r))
	}()
	err = fn()
	if errors.Is(err, bolterrors.ErrIncompatibleValue) {
		// A key where the schema has a bucket (or the reverse): only a
		// damaged page produces that in a catalogue this code wrote.
		return c.corrupt(err)
	}
	return err
}

// corrupt wraps what was found wrong with the file.
func (c *Catalog) corrupt(what error) error {
	return fmt.Errorf("catalogue %s is corrupt (%v): restore it from a backup: %w", c.path, what, ErrCorrupt)
}

// mappedFault reports whether r is a memory fault at a non-nil address
// (SIGBUS, SIGSEGV), which inside a transaction can only come from the
// catalogue's mapping: a record read in place past a file truncated
// meanwhile, in code outside bbolt (a decoder).
func mappedFault(r any) bool {
	re, ok := r.(runtime.Error)
	return ok && strings.HasPrefix(re.Error(), "unexpected fault address")
}

// panickedInBolt reports, from a deferred function recovering a panic,
// whether the function that panicked (or faulted) is bbolt's.
func panickedInBolt() bool {
	pcs := make([]uintptr, 64)
	n := runtime.Callers(2, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	sawPanic := false
	for {
		f, more := frames.Next()
		switch {
		case f.Function == "runtime.gopanic":
			sawPanic = true
		case sawPanic && !strings.HasPrefix(f.Function, "runtime."):
			return strings.HasPrefix(f.Function, "go.etcd.io/bbolt")
		}
		if !more {
			return false
		}
	}
}

// precheck opens an existing file read-only, which maps it without
// reading its freelist, and checks its size (see checkSize) before Open
// opens it read-write: bbolt reads the freelist inside bolt.Open then,
// and a fault there would leave the file open and locked (see guard).
// In the same read-only transaction it checks the schema: current
// reports a file Open need not touch (SchemaVersion, every bucket); a
// newer schema or an unreadable version fails.
func (c *Catalog) precheck() (current bool, err error) {
	db, err := c.openDB(openRead)
	if err != nil {
		return false, err
	}
	err = c.guard(func() error {
		return db.View(func(btx *bolt.Tx) error {
			if err := c.checkSize(btx); err != nil {
				return err
			}
			if btx.Bucket(bucketMeta) == nil {
				return nil // a new file: Open creates the buckets
			}
			v, err := checkVersion(btx)
			if err != nil {
				return err
			}
			current = v == SchemaVersion
			for _, name := range allBuckets {
				if btx.Bucket(name) == nil {
					current = false
				}
			}
			return nil
		})
	})
	if err != nil && !errors.Is(err, ErrCorrupt) {
		err = fmt.Errorf("catalogue %s: %w", c.path, err) // corrupt names the file already
	}
	if cerr := db.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("catalogue %s: close: %w", c.path, cerr)
	}
	return current && err == nil, err
}

// checkSize refuses a file shorter than the pages its meta page claims
// (a truncated catalogue): touching those pages would fault.
func (c *Catalog) checkSize(tx *bolt.Tx) error {
	fi, err := os.Stat(c.path)
	if err != nil {
		return err
	}
	if tx.Size() > fi.Size() {
		return c.corrupt(fmt.Errorf("truncated: %d bytes, its pages need %d", fi.Size(), tx.Size()))
	}
	return nil
}
