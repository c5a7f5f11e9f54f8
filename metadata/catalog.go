package metadata

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// SchemaVersion is the catalogue layout this package reads and writes.
// Bump it, and teach Open to migrate, when a bucket or record changes
// incompatibly. Version 2 added the leases bucket: an obdvol that does not
// know leases would let gc delete the blobs of a pull in flight, so it
// must refuse the catalogue (ErrSchema) rather than use it. Open migrates
// a version 1 catalogue by creating the bucket.
const SchemaVersion uint32 = 2

// DefaultTimeout is how long a call waits for another process to release
// the catalogue file's lock before failing with ErrBusy.
const DefaultTimeout = 5 * time.Second

var (
	bucketMeta      = []byte("meta")
	bucketVolumes   = []byte("volumes")
	bucketSnapshots = []byte("snapshots")
	bucketLayers    = []byte("layers")
	bucketIntents   = []byte("intents")
	bucketLeases    = []byte("leases")

	keySchema = []byte("schema")

	allBuckets = [][]byte{bucketMeta, bucketVolumes, bucketSnapshots, bucketLayers, bucketIntents, bucketLeases}
)

// Catalog is the handle on one catalogue file. It holds no open database
// between calls: each View or Update opens the bbolt file, takes its lock
// (shared for View, exclusive for Update), runs one transaction and closes
// the file, so that many short-lived obdvol processes can share it. A
// process that makes many calls in a row may Hold the file open instead.
//
// A Catalog is safe for concurrent use by goroutines. Calls must not nest:
// a View or Update inside another one's fn waits for the lock its caller
// holds and fails with ErrBusy after Timeout (or deadlocks while held).
// Do the work in the outer transaction instead.
//
// Example:
//
//	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
//	...
//	err = cat.Update(func(tx *metadata.Tx) error {
//		v, err := tx.Volume("db")
//		if err != nil {
//			return err // nothing is written
//		}
//		v.Labels = map[string]string{"tier": "gold"}
//		return tx.PutVolume(v)
//	})
type Catalog struct {
	// Timeout bounds the wait for the file lock; zero means
	// DefaultTimeout. Set it before the Catalog is used.
	Timeout time.Duration

	path string

	mu   sync.Mutex
	held *bolt.DB // while Held or in use through a hold
	refs int      // holds plus calls running on held
}

// Open checks or creates the catalogue file at path (mode 0o600; its
// directory must exist): it creates the buckets and records the schema
// version of a new file, migrates an older one, and refuses, with an
// error wrapping ErrSchema, a file written by a newer schema. A file
// already at SchemaVersion with every bucket is only read (a read-only
// transaction under a shared lock): Open writes to the file only when it
// creates or migrates it. It leaves the file closed.
func Open(path string) (*Catalog, error) {
	return open(path, 0)
}

func open(path string, timeout time.Duration) (*Catalog, error) {
	c := &Catalog{path: path, Timeout: timeout}
	if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
		current, err := c.precheck()
		if err != nil {
			return nil, err
		}
		if current {
			// Nothing to create or migrate: Open writes nothing (a
			// read-only command on a full disk must work).
			return c, nil
		}
	}
	db, err := c.openDB(openCreate)
	if err != nil {
		return nil, err
	}
	err = c.guard(func() error {
		return db.Update(initSchema)
	})
	if cerr := db.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if errors.Is(err, ErrCorrupt) {
		return nil, err // names the file already
	}
	if err != nil {
		return nil, fmt.Errorf("catalogue %s: %w", path, err)
	}
	return c, nil
}

// initSchema creates what a new catalogue lacks, checks an old one's
// schema version before touching anything else, and migrates an older
// version: every migration so far only adds buckets.
func initSchema(btx *bolt.Tx) error {
	if meta := btx.Bucket(bucketMeta); meta != nil {
		if _, err := checkVersion(btx); err != nil {
			return err
		}
	}
	for _, name := range allBuckets {
		if _, err := btx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	meta := btx.Bucket(bucketMeta)
	if val := meta.Get(keySchema); val != nil {
		if v, err := decodeSchema(val); err != nil || v >= SchemaVersion {
			return err
		}
	}
	return meta.Put(keySchema, encodeSchema(SchemaVersion))
}

// checkVersion reads the schema version and refuses one newer than
// SchemaVersion.
func checkVersion(btx *bolt.Tx) (uint32, error) {
	meta := btx.Bucket(bucketMeta)
	if meta == nil {
		return 0, fmt.Errorf("no %q bucket: %w", bucketMeta, ErrCorrupt)
	}
	v, err := decodeSchema(meta.Get(keySchema))
	if err != nil {
		return 0, err
	}
	if v > SchemaVersion {
		return 0, fmt.Errorf("schema version %d is newer than version %d, the newest this obdvol reads: upgrade obdvol: %w",
			v, SchemaVersion, ErrSchema)
	}
	return v, nil
}

// checkSchema fails unless the catalogue has every bucket and a schema
// version this package reads.
func checkSchema(btx *bolt.Tx) error {
	v, err := checkVersion(btx)
	if err != nil {
		return err
	}
	if v < SchemaVersion {
		return fmt.Errorf("schema version %d is older than version %d: open the catalogue with metadata.Open to migrate it: %w",
			v, SchemaVersion, ErrSchema)
	}
	for _, name := range allBuckets {
		if btx.Bucket(name) == nil {
			return fmt.Errorf("no %q bucket: %w", name, ErrCorrupt)
		}
	}
	return nil
}

// Path returns the catalogue file's path.
func (c *Catalog) Path() string { return c.path }

// View runs fn in a read-only transaction. fn's error is returned as is.
// The records fn gets are copies; changing them changes nothing stored.
func (c *Catalog) View(fn func(*Tx) error) error {
	return c.run(false, fn)
}

// Update runs fn in a read-write transaction, committed when fn returns
// nil. When fn returns an error (or panics) nothing is written and the
// error is returned as is.
func (c *Catalog) Update(fn func(*Tx) error) error {
	return c.run(true, fn)
}

func (c *Catalog) run(writable bool, fn func(*Tx) error) (err error) {
	mode := openRead
	if writable {
		mode = openWrite
	}
	db, release, err := c.acquire(mode)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := release(); err == nil && cerr != nil {
			err = fmt.Errorf("catalogue %s: close: %w", c.path, cerr)
		}
	}()
	var fnErr error
	body := func(btx *bolt.Tx) error {
		if err := checkSchema(btx); err != nil {
			return err
		}
		fnErr = fn(&Tx{tx: btx})
		return fnErr
	}
	err = c.guard(func() error {
		if writable {
			return db.Update(body)
		}
		return db.View(body)
	})
	if err != nil && fnErr == nil && !errors.Is(err, ErrCorrupt) {
		err = fmt.Errorf("catalogue %s: %w", c.path, err)
	}
	return err
}

// Hold opens the catalogue file and keeps it open, with its lock held
// exclusively, until release is called; View and Update use it meanwhile
// instead of opening the file each time. Holds nest: the file closes when
// the last release is called. Other processes get ErrBusy while it is
// held, so hold it only across a burst of calls, never while idle.
func (c *Catalog) Hold() (release func() error, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held == nil {
		db, err := c.openDB(openWrite)
		if err != nil {
			return nil, err
		}
		c.held = db
	}
	c.refs++
	var once sync.Once
	return func() error {
		var err error
		once.Do(func() { err = c.unref() })
		return err
	}, nil
}

// acquire returns an open database and the function that gives it back:
// the held one if any, else a fresh one that release closes.
func (c *Catalog) acquire(mode openMode) (*bolt.DB, func() error, error) {
	c.mu.Lock()
	if db := c.held; db != nil {
		c.refs++
		c.mu.Unlock()
		return db, c.unref, nil
	}
	c.mu.Unlock()
	db, err := c.openDB(mode)
	if err != nil {
		return nil, nil, err
	}
	return db, db.Close, nil
}

func (c *Catalog) unref() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refs--
	if c.refs > 0 {
		return nil
	}
	db := c.held
	c.held = nil
	return db.Close()
}

// How openDB opens the file.
type openMode int

const (
	openRead   openMode = iota // shared lock, read-only transactions
	openWrite                  // exclusive lock; the file must exist
	openCreate                 // exclusive lock; create a missing file (Open only)
)

// openDB opens the bbolt file, waiting at most Timeout for its lock.
func (c *Catalog) openDB(mode openMode) (*bolt.DB, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if mode == openWrite {
		// A read-write bolt.Open creates a missing file, which after Open
		// would be an empty catalogue with no buckets: refuse instead.
		if _, err := os.Stat(c.path); err != nil {
			return nil, fmt.Errorf("catalogue %s: %w", c.path, err)
		}
	}
	var db *bolt.DB
	err := c.guard(func() (err error) {
		db, err = bolt.Open(c.path, 0o600, &bolt.Options{Timeout: timeout, ReadOnly: mode == openRead})
		return err
	})
	switch {
	case errors.Is(err, ErrCorrupt):
		return nil, err
	case err == nil:
		return db, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("catalogue %s: waited %s: %w", c.path, timeout, ErrBusy)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrChecksum):
		return nil, c.corrupt(err)
	case strings.Contains(err.Error(), "file size too small"):
		// bbolt's refusal of a file truncated below its two meta pages
		// (a plain error, no sentinel).
		return nil, c.corrupt(err)
	}
	return nil, fmt.Errorf("catalogue %s: %w", c.path, err)
}
