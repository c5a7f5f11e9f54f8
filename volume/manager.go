package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/snapshot"
)

// Errors callers test with errors.Is.
var (
	ErrRange   = errors.New("out of range")
	ErrInUse   = errors.New("in use")
	ErrRefused = errors.New("refused")
	ErrClosed  = errors.New("volume is closed")
	// ErrReadOnly is returned by the writes, Snapshot and Flatten of a
	// volume opened with OpenReadOnly.
	ErrReadOnly = errors.New("volume is open read-only")
)

// BlobWriter is a blob being written into the content store.
type BlobWriter interface {
	io.Writer
	// Commit makes the blob durable under its digest (checked against
	// expected when not empty) and returns the digest and size.
	Commit(expected string) (digest string, size int64, err error)
	Abort()
}

// Blobs is the content store as volumes use it: open a layer by digest
// (from a local file, a partial file or a registry, as the store decides),
// write new layers, list and remove blobs. Package repo implements it.
type Blobs interface {
	OpenLayer(digest string) (snapshot.BlobSource, io.Closer, error)
	NewBlob() (BlobWriter, error)
	Remove(digest string) error
	List() ([]string, error)
}

// Options tune a Manager.
type Options struct {
	CacheBytes  int // decompressed-chunk cache shared by all volumes; default 256 MiB
	Concurrency int // compression workers when sealing; default GOMAXPROCS

	// OnSeal, when set, is called after every Snapshot that got past its
	// checks (name, read-only, closed) with the volume's name, the time
	// it took (finishing an interrupted seal, freeze, seal, commit) and
	// its error. It runs on the caller's goroutine with the volume's seal
	// lock held: it must be quick and must not call back into the volume.
	// Package metrics records it.
	OnSeal func(vol string, d time.Duration, err error)
}

// Manager owns the volumes under one root: it opens them, and performs the
// catalogue operations that span volumes (create, clone, rollback, delete,
// gc). Every catalogue change is one transaction; operations with side
// effects on files record an intent first (see Recover).
type Manager struct {
	root  string
	cat   *metadata.Catalog
	blobs Blobs
	opts  Options
	cache *snapshot.Cache

	// mu guards layers and opening. A layer stays open while an open
	// chain (chainRef) uses it, or while it is pinned by Layer; the
	// release that leaves it neither closes it and drops its chunks from
	// the cache, so a long-running server keeps only the layers its open
	// volumes use.
	mu      sync.Mutex
	layers  map[string]*openLayer // opened layers
	opening map[string]*layerCall // layers being opened (one open per digest)

	// chains are the open chains, one per distinct chain (block size,
	// size, layer digests): clones of one snapshot share one merged index
	// and the same layers. chainMu is held while a chain is looked up or
	// built (building may read layers over the network, so it is not
	// m.mu), and by the last release that removes one.
	chainMu      sync.Mutex
	chains       map[snapshot.ChainKey]*chainRef
	chainOpening map[snapshot.ChainKey]*layerCall // chains being built (one build per key)

	cleanup sync.WaitGroup // background removals of discarded directories
}

type openLayer struct {
	l      *snapshot.Layer
	closer io.Closer
	refs   int  // open chains using it (chainRef)
	pinned bool // opened by Layer: kept until Close (or gc removes its blob)
}

// layerCall is an open of one layer in progress; callers wanting the same
// digest wait for it (done), others are not held up.
type layerCall struct {
	done chan struct{}
	err  error // set before done is closed
}

// NewManager returns a manager for the volumes under root.
func NewManager(root string, cat *metadata.Catalog, blobs Blobs, opts Options) *Manager {
	if opts.CacheBytes == 0 {
		opts.CacheBytes = 256 << 20
	}
	return &Manager{root: root, cat: cat, blobs: blobs, opts: opts,
		cache: snapshot.NewCache(opts.CacheBytes), layers: map[string]*openLayer{},
		opening: map[string]*layerCall{}, chains: map[snapshot.ChainKey]*chainRef{},
		chainOpening: map[snapshot.ChainKey]*layerCall{}}
}

// Catalog returns the manager's catalogue.
func (m *Manager) Catalog() *metadata.Catalog { return m.cat }

// Cache returns the shared chunk cache.
func (m *Manager) Cache() *snapshot.Cache { return m.cache }

func (m *Manager) volDir(name string) string { return filepath.Join(m.root, "volumes", name) }

func (m *Manager) writableDir(name string, gen uint64) string {
	return filepath.Join(m.volDir(name), fmt.Sprintf("w-%d", gen))
}

// Layer opens (once per manager) the sealed layer with this digest and
// keeps it open until the manager is closed (or gc removes its blob):
// for one-shot commands (push, fill, export). Volumes take counted
// references instead (see chainRef), so that a long-running server
// closes the layers its volumes stopped using.
func (m *Manager) Layer(digest string) (*snapshot.Layer, error) {
	return m.acquireLayer(digest, true)
}

// acquireLayer opens the layer with this digest, or finds it open, and
// pins it (pin) or takes a reference to it (give it back with
// releaseLayers). The open (which may be range requests to a registry
// for a lazy layer) runs outside the manager's mutex: one open per
// digest at a time, the callers of other digests are not held up.
func (m *Manager) acquireLayer(digest string, pin bool) (*snapshot.Layer, error) {
	for {
		m.mu.Lock()
		if ol, ok := m.layers[digest]; ok {
			if pin {
				ol.pinned = true
			} else {
				ol.refs++
			}
			m.mu.Unlock()
			return ol.l, nil
		}
		if c, ok := m.opening[digest]; ok {
			m.mu.Unlock()
			<-c.done
			if c.err != nil {
				return nil, c.err
			}
			continue // take it from layers (or open it again if it went)
		}
		c := &layerCall{done: make(chan struct{})}
		m.opening[digest] = c
		m.mu.Unlock()

		l, closer, err := m.openLayer(digest)
		m.mu.Lock()
		delete(m.opening, digest)
		if err == nil {
			ol := &openLayer{l: l, closer: closer, pinned: pin}
			if !pin {
				ol.refs = 1
			}
			m.layers[digest] = ol
		}
		m.mu.Unlock()
		c.err = err
		close(c.done)
		return l, err
	}
}

// releaseLayers gives back one reference to each layers[i], opened as
// digests[i]; a layer left with none and not pinned is closed and its
// chunks dropped from the cache (outside the mutex: closing may touch
// files). A layer the manager no longer holds as that digest (Close
// closed it) is skipped.
func (m *Manager) releaseLayers(digests []string, layers []*snapshot.Layer) {
	var closing []*openLayer
	m.mu.Lock()
	for i, d := range digests {
		ol, ok := m.layers[d]
		if !ok || ol.l != layers[i] {
			continue
		}
		if ol.refs--; ol.refs <= 0 && !ol.pinned {
			delete(m.layers, d)
			closing = append(closing, ol)
		}
	}
	m.mu.Unlock()
	for _, ol := range closing {
		m.closeLayer(ol)
	}
}

func (m *Manager) closeLayer(ol *openLayer) {
	m.cache.Drop(ol.l)
	ol.closer.Close()
}

func (m *Manager) openLayer(digest string) (*snapshot.Layer, io.Closer, error) {
	src, closer, err := m.blobs.OpenLayer(digest)
	if err != nil {
		return nil, nil, fmt.Errorf("layer %s: %w", digest, err)
	}
	l, err := snapshot.Open(src)
	if err != nil {
		closer.Close()
		return nil, nil, fmt.Errorf("layer %s: %w", digest, err)
	}
	return l, closer, nil
}

// Chain opens the chain of layers (base first) at the given size. Its
// layers are pinned (see Layer): for one-shot commands.
func (m *Manager) Chain(digests []string, size uint64, bs uint32) (*snapshot.Chain, error) {
	layers := make([]*snapshot.Layer, len(digests))
	for i, d := range digests {
		l, err := m.Layer(d)
		if err != nil {
			return nil, err
		}
		layers[i] = l
	}
	return snapshot.NewChain(layers, size, bs, m.cache)
}

// chainRef is an open chain with a count of its users. There is one
// per distinct chain in a Manager (see Manager.chains): every volume
// whose chain is this one holds one reference while it is current, and
// each read of it made outside a volume's I/O lock holds one for its
// duration. The last release removes it from the Manager, unmaps its
// merged index and gives its layers back to the manager, which closes
// those no other chain uses. Layers are immutable, so a read of a chain
// that a seal or flatten has meanwhile replaced returns what the volume
// held when the read was resolved.
type chainRef struct {
	m       *Manager
	c       *snapshot.Chain
	key     snapshot.ChainKey
	digests []string
	refs    atomic.Int64
	dropped bool // removed from m.chains (under m.chainMu)
}

// openChain returns the chain of layers (base first) at the given size
// with one more reference, the caller's: the one already open when
// another volume uses the same chain, or a new one holding a reference to
// each layer. Its merged index comes from root/index when a valid file
// is there, and is written there when not (see snapshot.OpenChain); a
// read-only open (readOnly) writes nothing.
func (m *Manager) openChain(digests []string, size uint64, bs uint32, readOnly bool) (*chainRef, error) {
	key := snapshot.NewChainKey(bs, size, digests)
	for {
		m.chainMu.Lock()
		if r, ok := m.chains[key]; ok {
			// Possibly 0 -> 1: a last release racing with this waits for
			// chainMu and then sees the chain in use again (see release).
			r.refs.Add(1)
			m.chainMu.Unlock()
			return r, nil
		}
		if c, ok := m.chainOpening[key]; ok {
			m.chainMu.Unlock()
			<-c.done
			if c.err != nil {
				return nil, c.err
			}
			continue // take it from chains (or build it again if it went)
		}
		// Build it outside chainMu (opening layers may wait on a
		// registry, building the index reads them): a release of another
		// chain, on a read's path, never waits for it.
		c := &layerCall{done: make(chan struct{})}
		m.chainOpening[key] = c
		m.chainMu.Unlock()
		r, err := m.buildChain(key, digests, size, bs, readOnly)
		m.chainMu.Lock()
		delete(m.chainOpening, key)
		if err == nil {
			m.chains[key] = r
		}
		m.chainMu.Unlock()
		c.err = err
		close(c.done)
		return r, err
	}
}

// buildChain opens a chain named key with one reference, holding a
// reference to each of its layers.
func (m *Manager) buildChain(key snapshot.ChainKey, digests []string, size uint64, bs uint32, readOnly bool) (*chainRef, error) {
	r := &chainRef{m: m, key: key, digests: slices.Clone(digests)}
	layers := make([]*snapshot.Layer, len(digests))
	for i, d := range digests {
		l, err := m.acquireLayer(d, false)
		if err != nil {
			m.releaseLayers(digests[:i], layers[:i])
			return nil, err
		}
		layers[i] = l
	}
	c, err := snapshot.OpenChain(layers, size, bs, m.cache, m.indexFile(key, readOnly))
	if err != nil {
		m.releaseLayers(digests, layers)
		return nil, err
	}
	r.c = c
	r.refs.Store(1)
	return r, nil
}

// indexFile says where the merged index of the chain named key is kept.
func (m *Manager) indexFile(key snapshot.ChainKey, readOnly bool) snapshot.IndexFile {
	return snapshot.IndexFile{Dir: filepath.Join(m.root, "index"), Key: key, ReadOnly: readOnly}
}

// acquire adds a reference; only callers already holding one (or holding
// the volume's I/O lock, under which the volume's reference is held) may
// call it. It does not allocate.
func (r *chainRef) acquire() { r.refs.Add(1) }

// release drops a reference; the last one removes the chain from the
// manager, unmaps its index and releases its layers. A reference taken
// by openChain between the count reaching zero and chainMu being taken
// here keeps the chain (it is checked again under chainMu).
func (r *chainRef) release() {
	if r == nil || r.refs.Add(-1) != 0 {
		return
	}
	m := r.m
	m.chainMu.Lock()
	if r.refs.Load() != 0 || r.dropped {
		m.chainMu.Unlock()
		return
	}
	r.dropped = true
	if m.chains[r.key] == r {
		delete(m.chains, r.key)
	}
	m.chainMu.Unlock()
	// No one holds a reference and no one can take one: unmapping is safe.
	r.c.Close()
	m.releaseLayers(r.digests, r.c.Layers())
}

// OpenChains is the number of distinct chains the manager has open.
func (m *Manager) OpenChains() int {
	m.chainMu.Lock()
	defer m.chainMu.Unlock()
	return len(m.chains)
}

// discard moves a directory that is no longer referenced (an old
// writable layer) into root/trash at once and removes it in the
// background: unlinking a large file costs time proportional to its
// extents, which should not hold up a seal or a rollback. Close waits for
// the removals; Recover removes whatever a crash left in the trash.
func (m *Manager) discard(dir string) error {
	trash := filepath.Join(m.root, "trash")
	if err := os.MkdirAll(trash, 0o700); err != nil {
		return err
	}
	dst, err := os.MkdirTemp(trash, "d-")
	if err != nil {
		return err
	}
	if err := os.Rename(dir, filepath.Join(dst, "x")); err != nil {
		os.Remove(dst)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	m.cleanup.Add(1)
	go func() {
		defer m.cleanup.Done()
		os.RemoveAll(dst)
	}()
	return nil
}

// Close waits for background removals and closes every layer the
// manager opened.
func (m *Manager) Close() error {
	m.cleanup.Wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.opening) > 0 { // let opens in progress finish
		for _, c := range m.opening {
			m.mu.Unlock()
			<-c.done
			m.mu.Lock()
			break
		}
	}
	for d, ol := range m.layers {
		m.closeLayer(ol)
		delete(m.layers, d)
	}
	return nil
}

// CreateOptions configure a new volume.
type CreateOptions struct {
	BlockSize uint32
	Codec     string
	ChunkSize uint32
	Labels    map[string]string
}

// Create makes an empty volume of size bytes.
func (m *Manager) Create(name string, size uint64, o CreateOptions) (*metadata.Volume, error) {
	if o.BlockSize == 0 {
		o.BlockSize = snapshot.DefaultBlockSize
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = snapshot.DefaultChunkSize
	}
	codec, err := snapshot.ParseCodec(o.Codec)
	if err != nil {
		return nil, err
	}
	if err := checkSize(size, o.BlockSize); err != nil {
		return nil, err
	}
	if o.BlockSize < snapshot.MinBlockSize || o.BlockSize > snapshot.MaxBlockSize || o.BlockSize&(o.BlockSize-1) != 0 {
		return nil, fmt.Errorf("block size %d: want a power of two from %d to %d", o.BlockSize, snapshot.MinBlockSize, snapshot.MaxBlockSize)
	}
	if o.ChunkSize < snapshot.MinChunkSize || o.ChunkSize > snapshot.MaxChunkSize || o.ChunkSize%o.BlockSize != 0 {
		return nil, fmt.Errorf("chunk size %d: want a multiple of the block size from %d to %d", o.ChunkSize, snapshot.MinChunkSize, snapshot.MaxChunkSize)
	}
	v := &metadata.Volume{Name: name, Size: size, BlockSize: o.BlockSize, Codec: codec.String(),
		ChunkSize: o.ChunkSize, Writable: 1, Created: time.Now().UTC(), Labels: o.Labels}
	return v, m.createRecord(v)
}

// MaxVolumeBlocks is the most blocks a volume may have: the writable
// layer keeps an in-memory bitmap over every block (18 MiB of page table
// at this size, plus 4 KiB per 16384-block page written), so 2^35 blocks:
// 16 TiB with 512-byte blocks, 128 TiB with 4 KiB blocks. The writable
// data file is a sparse file as large as the volume, so the filesystem
// under the root must allow such a file too (ext4: just under 16 TiB;
// XFS and btrfs: 8 EiB).
const MaxVolumeBlocks = 1 << 35

// MaxVolumeSize is the largest volume of block size bs.
func MaxVolumeSize(bs uint32) uint64 {
	return min(uint64(bs)*MaxVolumeBlocks, uint64(snapshot.MaxVirtualSize))
}

func checkSize(size uint64, bs uint32) error {
	if bs == 0 || size == 0 || size%uint64(bs) != 0 {
		return fmt.Errorf("%w: size %d must be a non-zero multiple of the block size %d", ErrRange, size, bs)
	}
	if limit := MaxVolumeSize(bs); size > limit {
		return fmt.Errorf("%w: size %d is larger than the largest volume with %d-byte blocks, %d bytes (%d TiB: at most 2^35 blocks, as the writable layer keeps a bitmap over every block)",
			ErrRange, size, bs, limit, limit>>40)
	}
	return nil
}

// createRecord records a new volume, first clearing any directory a
// crashed earlier attempt (or a deleted volume) left under its name.
func (m *Manager) createRecord(v *metadata.Volume) error {
	_, err := m.createRecordTx(v.Name, func(*metadata.Tx) (*metadata.Volume, error) { return v, nil })
	return err
}

// createRecordTx records a new volume named name, the record that build
// makes inside the creating transaction: whatever build reads (a
// snapshot's chain, its layer records) is still true when the volume is
// created. It holds the volume's lock throughout and first clears any
// directory a crashed earlier attempt (or a deleted volume) left under
// the name.
func (m *Manager) createRecordTx(name string, build func(tx *metadata.Tx) (*metadata.Volume, error)) (*metadata.Volume, error) {
	if err := metadata.ValidateName("volume", name); err != nil {
		return nil, err
	}
	exists := func(tx *metadata.Tx) error {
		_, err := tx.Volume(name)
		if err == nil {
			return fmt.Errorf("volume %s: %w", name, metadata.ErrExists)
		}
		if errors.Is(err, metadata.ErrNotFound) {
			return nil
		}
		return err
	}
	// Refuse a taken name before touching its directory.
	if err := m.cat.View(exists); err != nil {
		return nil, err
	}
	lock, err := m.lockVolume(name)
	if err != nil {
		return nil, err
	}
	defer lock.release()
	if err := removeWritableDirs(m.volDir(name)); err != nil {
		return nil, err
	}
	var v *metadata.Volume
	err = m.cat.Update(func(tx *metadata.Tx) error {
		if err := exists(tx); err != nil {
			return err
		}
		var err error
		if v, err = build(tx); err != nil {
			return err
		}
		if v.Name != name {
			return fmt.Errorf("volume %s: record names %s: %w", name, v.Name, metadata.ErrInvalid)
		}
		return tx.CreateVolume(v)
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// testHookClone, set by tests, runs inside Clone between reading the
// snapshot and recording the clone.
var testHookClone func()

// Clone makes a writable volume whose chain is snapshot vol@snap's: it
// shares every layer, no data is copied. The snapshot is read, its layers
// checked (each has a layer record, so gc has not taken it) and the clone
// recorded in one transaction: a delete of vol and a gc cannot come in
// between and leave the clone naming removed layers.
func (m *Manager) Clone(name, vol, snap string) (*metadata.Volume, error) {
	return m.createRecordTx(name, func(tx *metadata.Tx) (*metadata.Volume, error) {
		src, err := tx.Volume(vol)
		if err != nil {
			return nil, err
		}
		s, err := tx.Snapshot(vol, snap)
		if err != nil {
			return nil, err
		}
		if testHookClone != nil {
			testHookClone() // the snapshot is read, the clone not yet recorded
		}
		for _, d := range s.Layers {
			if _, err := tx.Layer(d); err != nil {
				return nil, fmt.Errorf("clone of %s@%s: %w", vol, snap, err)
			}
		}
		return &metadata.Volume{Name: name, Size: s.Size, BlockSize: src.BlockSize, Codec: src.Codec,
			ChunkSize: src.ChunkSize, Layers: append([]string(nil), s.Layers...), Writable: 1,
			Origin: vol + "@" + snap, Created: time.Now().UTC()}, nil
	})
}

// Open opens a volume for I/O, taking its lock.
func (m *Manager) Open(name string) (*Volume, error) {
	if err := metadata.ValidateName("volume", name); err != nil {
		return nil, err
	}
	lock, err := m.lockVolume(name)
	if err != nil {
		return nil, err
	}
	v, err := m.openLocked(name, lock)
	if err != nil {
		lock.release()
		return nil, err
	}
	return v, nil
}

func (m *Manager) openLocked(name string, lock *volumeLock) (*Volume, error) {
	var rec *metadata.Volume
	if err := m.cat.View(func(tx *metadata.Tx) (err error) { rec, err = tx.Volume(name); return }); err != nil {
		return nil, err
	}
	if rec.Device != nil && rec.Device.Kind == DeviceNBD {
		// We hold the lock, so that NBD server is gone (see Device).
		d, err := m.clearStaleNBDRecord(name)
		if err != nil {
			return nil, err
		}
		rec.Device = d
	}
	if err := checkSize(rec.Size, rec.BlockSize); err != nil {
		return nil, fmt.Errorf("volume %s: %w", name, err) // before allocating for its size
	}
	chain, err := m.openChain(rec.Layers, rec.Size, rec.BlockSize, false)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", name, err)
	}
	keep := []uint64{rec.Writable}
	if rec.Frozen != 0 {
		keep = append(keep, rec.Frozen)
	}
	if err := removeWritableDirs(m.volDir(name), keep...); err != nil {
		chain.release()
		return nil, err
	}
	w, err := openWritable(m.writableDir(name, rec.Writable), rec.Size, rec.BlockSize)
	if err != nil {
		chain.release()
		return nil, fmt.Errorf("volume %s: %w", name, err)
	}
	v := &Volume{m: m, name: name, lock: lock, rec: rec, chain: chain, w: w,
		bs: uint64(rec.BlockSize), size: rec.Size}
	v.ctx, v.cancel = context.WithCancel(context.Background())
	if rec.Frozen != 0 {
		// A seal was interrupted: finish it before anything else. If it
		// cannot be finished now (a full disk), the volume still opens,
		// with the frozen layer in its read path: its data stays readable
		// and exportable, and the next Snapshot retries the seal.
		if v.frozen, err = openWritable(m.writableDir(name, rec.Frozen), rec.Size, rec.BlockSize); err != nil {
			v.Close()
			return nil, fmt.Errorf("volume %s: frozen layer of interrupted snapshot %s: %w", name, rec.FrozenSnapshot, err)
		}
		if _, err := v.sealFrozen(context.Background()); err != nil {
			v.sealErr = fmt.Errorf("volume %s: snapshot %s is not finished (it is retried by the next snapshot): %w",
				name, rec.FrozenSnapshot, err)
		}
	}
	return v, nil
}

// OpenReadOnly opens a volume for reading only (export): it writes
// nothing under the root, so it works on a full disk. Compared with Open:
//
//   - the volume's lock is taken shared, without writing the owner's PID
//     into the lock file (whose absence, for a volume directory never
//     created, means no lock is needed). A process that owns the volume
//     (a server, an import) holds it exclusively, so a read-only open of
//     a volume in use fails with ErrInUse, as Open does, rather than read
//     a layer being written; read-only opens share the volume, and an
//     Open for writing fails with ErrInUse while one is open;
//   - no directory or file is created (a writable layer never opened is
//     empty), no leftover writable directory is removed, the data file is
//     not resized, the journal is read as it is (a torn tail is ignored in
//     memory, not truncated; damage fails with ErrCorrupt as in Open);
//   - a frozen layer left by an interrupted seal is read through, the
//     seal is not finished (SealPending says so);
//   - the catalogue is only read.
//
// Writes, Snapshot and Flatten of the volume fail with ErrReadOnly;
// Flush and Close write nothing.
func (m *Manager) OpenReadOnly(name string) (*Volume, error) {
	if err := metadata.ValidateName("volume", name); err != nil {
		return nil, err
	}
	lock, err := sharedLockNB(filepath.Join(m.volDir(name), "lock"), "volume "+name)
	if err != nil {
		return nil, err
	}
	var rec *metadata.Volume
	if err := m.cat.View(func(tx *metadata.Tx) (err error) { rec, err = tx.Volume(name); return }); err != nil {
		lock.release()
		return nil, err
	}
	if err := checkSize(rec.Size, rec.BlockSize); err != nil {
		lock.release()
		return nil, fmt.Errorf("volume %s: %w", name, err)
	}
	chain, err := m.openChain(rec.Layers, rec.Size, rec.BlockSize, true)
	if err != nil {
		lock.release()
		return nil, fmt.Errorf("volume %s: %w", name, err)
	}
	v := &Volume{m: m, name: name, lock: lock, rec: rec, chain: chain,
		bs: uint64(rec.BlockSize), size: rec.Size, readOnly: true}
	v.ctx, v.cancel = context.WithCancel(context.Background())
	if v.w, err = openWritableReadOnly(m.writableDir(name, rec.Writable), rec.Size, rec.BlockSize); err != nil {
		chain.release()
		lock.release()
		return nil, fmt.Errorf("volume %s: %w", name, err)
	}
	if rec.Frozen != 0 {
		if v.frozen, err = openWritableReadOnly(m.writableDir(name, rec.Frozen), rec.Size, rec.BlockSize); err != nil {
			v.Close()
			return nil, fmt.Errorf("volume %s: frozen layer of interrupted snapshot %s: %w", name, rec.FrozenSnapshot, err)
		}
		v.sealErr = fmt.Errorf("volume %s: snapshot %s is not finished (opened read-only: its frozen layer is read through; the next open for writing finishes it)",
			name, rec.FrozenSnapshot)
	}
	return v, nil
}

// SealPending reports a snapshot whose seal was interrupted and could not
// be finished when the volume was opened (nil when there is none): the
// volume works, its frozen layer is read through, and the next Snapshot
// finishes it first. Callers print it as a warning.
func (v *Volume) SealPending() error {
	v.sealMu.Lock()
	defer v.sealMu.Unlock()
	if v.frozen == nil {
		return nil
	}
	return v.sealErr
}

// removeWritableDirs removes writable-layer directories other than the
// generations in keep: leftovers of a seal or rollback that committed its
// catalogue transaction but crashed before cleaning up.
func removeWritableDirs(dir string, keep ...uint64) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		var gen uint64
		if !strings.HasPrefix(e.Name(), "w-") {
			continue
		}
		if _, err := fmt.Sscanf(e.Name(), "w-%d", &gen); err == nil && !slices.Contains(keep, gen) {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// OpenAfterCrash opens a volume whose previous owner process died while
// serving it (ublk user recovery): the writable layer is reconciled with
// its data file, so writes the dead process completed but had not yet
// journaled are kept, then flushed.
func (m *Manager) OpenAfterCrash(name string) (*Volume, uint64, error) {
	v, err := m.Open(name)
	if err != nil {
		return nil, 0, err
	}
	n, err := v.w.reconcile()
	if err == nil {
		err = v.w.flush()
	}
	if err != nil {
		v.Close()
		return nil, 0, fmt.Errorf("volume %s: reconcile after crash: %w", name, err)
	}
	return v, n, nil
}
