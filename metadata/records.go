package metadata

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"
)

// Layer states (Layer.State).
const (
	LayerFull    = "full"    // the whole blob is in the local content store
	LayerPartial = "partial" // a fetch is in progress or was interrupted
	LayerRemote  = "remote"  // nothing local: read from Origins on demand
)

// Volume is the record of one volume: its geometry, its chain of sealed
// layers and which writable layer directory is current.
type Volume struct {
	Name      string            `json:"name"`
	Size      uint64            `json:"size"` // bytes, a non-zero multiple of BlockSize
	BlockSize uint32            `json:"block_size"`
	Codec     string            `json:"codec"` // "zstd", "s2", "none"
	ChunkSize uint32            `json:"chunk_size"`
	Layers    []string          `json:"layers"`           // sealed layer digests, base first
	Writable  uint64            `json:"writable"`         // generation of the writable layer dir volumes/<name>/w-<gen>
	Origin    string            `json:"origin,omitempty"` // "vol@snap" this volume was cloned/pulled from
	Created   time.Time         `json:"created"`
	Labels    map[string]string `json:"labels,omitempty"`
	Device    *Device           `json:"device,omitempty"` // active device, nil when inactive
	// Activation is how the volume should be active whenever the host
	// daemon runs (a persistent activation), nil when it should not be:
	// the daemon re-activates it at start (after a crash or a reboot).
	// Device is where it is active now; Activation is the wish.
	Activation *Activation `json:"activation,omitempty"`
	// Frozen is the generation of a writable layer being sealed into
	// snapshot FrozenSnapshot while writes go on in Writable; 0 when none.
	// A record with Frozen set after a crash means that seal must be
	// finished (volume does it at the next open).
	Frozen         uint64 `json:"frozen,omitempty"`
	FrozenSnapshot string `json:"frozen_snapshot,omitempty"`
}

// Device is where an active volume is served.
type Device struct {
	Kind string `json:"kind"` // "ublk" or "nbd"
	Path string `json:"path"` // /dev/ublkb0 or the nbd URI
	PID  int    `json:"pid"`
	ID   int    `json:"id"` // ublk dev id, -1 for nbd
	// Boot is the kernel's boot id (/proc/sys/kernel/random/boot_id)
	// when the device was made: a ublk record from another boot names a
	// device that is gone (its id may name another device now).
	Boot string `json:"boot,omitempty"`
}

// Activation kinds (Activation.Kind), the same words as Device.Kind.
const (
	ActivationUblk = "ublk"
	ActivationNBD  = "nbd"
)

// Limits of an Activation's queue geometry (the kernel's ublk limits are
// lower still; these only keep a damaged record from asking for absurd
// amounts of memory).
const (
	MaxQueues = 256
	MaxDepth  = 4096
)

// Activation records that a volume should be active, and how: the host
// daemon (package daemon) writes it on a persistent activate or serve and
// deletes it on deactivate, and re-activates every volume that has one
// when it starts.
type Activation struct {
	Kind     string `json:"kind"` // ActivationUblk or ActivationNBD
	ReadOnly bool   `json:"read_only,omitempty"`
	Queues   int    `json:"queues,omitempty"` // ublk; 0: the daemon's default
	Depth    int    `json:"depth,omitempty"`  // ublk; 0: the daemon's default
	// Listen is the NBD listen spec, unix:PATH or tcp:HOST:PORT (nbd).
	Listen string `json:"listen,omitempty"`
	// AllowRemote allows a TCP listen spec on a non-loopback address.
	AllowRemote bool `json:"allow_remote,omitempty"`
}

func (a *Activation) validate() error {
	switch a.Kind {
	case ActivationUblk:
		if a.Listen != "" {
			return fmt.Errorf("ublk activation with a listen spec %q: %w", a.Listen, ErrInvalid)
		}
	case ActivationNBD:
		if a.Listen == "" {
			return fmt.Errorf("nbd activation without a listen spec: %w", ErrInvalid)
		}
	default:
		return fmt.Errorf("activation kind %q: want %s or %s: %w", a.Kind, ActivationUblk, ActivationNBD, ErrInvalid)
	}
	if a.Queues < 0 || a.Queues > MaxQueues || a.Depth < 0 || a.Depth > MaxDepth {
		return fmt.Errorf("activation with %d queues of depth %d: want 0..%d queues of depth 0..%d: %w",
			a.Queues, a.Depth, MaxQueues, MaxDepth, ErrInvalid)
	}
	return nil
}

// Snapshot is the record of snapshot Volume@Name: the chain the volume had
// when it was taken. It is keyed by Ref(Volume, Name).
type Snapshot struct {
	Volume  string            `json:"volume"`
	Name    string            `json:"name"`
	Layers  []string          `json:"layers"` // the chain at snapshot time, base first
	Size    uint64            `json:"size"`
	Created time.Time         `json:"created"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// Ref returns the snapshot's reference, vol@snap.
func (s *Snapshot) Ref() string { return Ref(s.Volume, s.Name) }

// Layer is the record of one sealed layer, shared by every volume and
// snapshot whose chain names its digest.
type Layer struct {
	Digest      string    `json:"digest"`
	StoredBytes uint64    `json:"stored_bytes"` // blob size
	VirtualSize uint64    `json:"virtual_size"`
	DataBytes   uint64    `json:"data_bytes"` // uncompressed live data
	Extents     uint64    `json:"extents"`
	State       string    `json:"state"`             // LayerFull, LayerPartial or LayerRemote
	Origins     []string  `json:"origins,omitempty"` // registry refs it can be fetched from
	Created     time.Time `json:"created"`
	// Parts, by origin (a string of Origins), are the parts an origin
	// holds the layer in when it was pushed in parts (repo.Part): lazy
	// reads from that origin fetch ranges of the parts. An origin not
	// named here holds the layer as one blob.
	Parts map[string][]Part `json:"parts,omitempty"`
}

// Part is one part of a layer pushed in parts: a blob holding the
// layer's bytes from the sum of the sizes of the parts before it.
type Part struct {
	Digest string `json:"digest"`
	Size   uint64 `json:"size"`
}

// MaxParts bounds the parts of one layer at one origin.
const MaxParts = 8192

// validateParts checks parts as the parts of the layer: at least two,
// at most MaxParts, valid digests other than the layer's, positive sizes
// adding up to the layer's StoredBytes.
func (l *Layer) validateParts(origin string, parts []Part) error {
	if origin == "" || len(parts) < 2 || len(parts) > MaxParts {
		return fmt.Errorf("layer %s: %d parts at origin %q (2 to %d at a named origin): %w", l.Digest, len(parts), origin, MaxParts, ErrInvalid)
	}
	var sum uint64
	for i, p := range parts {
		if err := ValidateDigest(p.Digest); err != nil {
			return fmt.Errorf("layer %s: part %d: %w", l.Digest, i, err)
		}
		if p.Digest == l.Digest || p.Size == 0 || p.Size > l.StoredBytes-sum {
			return fmt.Errorf("layer %s of %d bytes: part %d (%s, %d bytes) at offset %d: %w",
				l.Digest, l.StoredBytes, i, p.Digest, p.Size, sum, ErrInvalid)
		}
		sum += p.Size
	}
	if sum != l.StoredBytes {
		return fmt.Errorf("layer %s of %d bytes: its parts at %s add up to %d: %w", l.Digest, l.StoredBytes, origin, sum, ErrInvalid)
	}
	return nil
}

// Intent records an operation before its side effects on files, so that
// the next process can finish or undo it after a crash. It is removed in
// the transaction that records the outcome.
type Intent struct {
	ID      uint64            `json:"id"` // assigned by AddIntent (bucket sequence)
	Op      string            `json:"op"` // "snapshot", "rollback", "delete", "flatten", "create", "pull", ...
	Volume  string            `json:"volume"`
	Args    map[string]string `json:"args,omitempty"`
	Created time.Time         `json:"created"`
}

// validate checks what PutVolume and decodeVolume enforce. Errors wrap
// ErrInvalidName or ErrInvalid.
func (v *Volume) validate() error {
	if err := ValidateName("volume", v.Name); err != nil {
		return err
	}
	if v.BlockSize == 0 || v.Size == 0 || v.Size%uint64(v.BlockSize) != 0 {
		return fmt.Errorf("volume %s: size %d must be a non-zero multiple of the block size %d: %w",
			v.Name, v.Size, v.BlockSize, ErrInvalid)
	}
	if err := validateChain(v.Layers); err != nil {
		return fmt.Errorf("volume %s: %w", v.Name, err)
	}
	if v.Activation != nil {
		if err := v.Activation.validate(); err != nil {
			return fmt.Errorf("volume %s: %w", v.Name, err)
		}
	}
	if v.Frozen != 0 {
		if v.Frozen >= v.Writable {
			return fmt.Errorf("volume %s: frozen generation %d not below writable %d: %w", v.Name, v.Frozen, v.Writable, ErrInvalid)
		}
		if err := ValidateName("snapshot", v.FrozenSnapshot); err != nil {
			return fmt.Errorf("volume %s: frozen snapshot: %w", v.Name, err)
		}
	}
	return nil
}

func (s *Snapshot) validate() error {
	if err := ValidateName("volume", s.Volume); err != nil {
		return err
	}
	if err := ValidateName("snapshot", s.Name); err != nil {
		return err
	}
	if err := validateChain(s.Layers); err != nil {
		return fmt.Errorf("snapshot %s: %w", s.Ref(), err)
	}
	return nil
}

func (l *Layer) validate() error {
	if err := ValidateDigest(l.Digest); err != nil {
		return err
	}
	for o, parts := range l.Parts {
		if err := l.validateParts(o, parts); err != nil {
			return err
		}
	}
	switch l.State {
	case LayerFull, LayerPartial, LayerRemote:
		return nil
	}
	return fmt.Errorf("layer %s: state %q: want %s, %s or %s: %w",
		l.Digest, l.State, LayerFull, LayerPartial, LayerRemote, ErrInvalid)
}

func (in *Intent) validate() error {
	if in.Op == "" {
		return fmt.Errorf("intent on %q: no operation: %w", in.Volume, ErrInvalid)
	}
	return nil
}

func validateChain(digests []string) error {
	for i, d := range digests {
		if err := ValidateDigest(d); err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return nil
}

// The decoders turn a stored key and value back into a record. Anything
// that does not decode, or decodes to a record its Put method would have
// refused, or names a different key, is an error wrapping ErrCorrupt; they
// never panic, whatever the bytes (FuzzDecodeRecords).

func decodeVolume(key, val []byte) (*Volume, error) {
	v := new(Volume)
	if err := decode(bucketVolumes, key, val, v); err != nil {
		return nil, err
	}
	if v.Name != string(key) {
		return nil, corrupt(bucketVolumes, key, fmt.Errorf("record names volume %q", v.Name))
	}
	if err := v.validate(); err != nil {
		return nil, corrupt(bucketVolumes, key, err)
	}
	return v, nil
}

func decodeSnapshot(key, val []byte) (*Snapshot, error) {
	s := new(Snapshot)
	if err := decode(bucketSnapshots, key, val, s); err != nil {
		return nil, err
	}
	if s.Ref() != string(key) {
		return nil, corrupt(bucketSnapshots, key, fmt.Errorf("record names snapshot %q", s.Ref()))
	}
	if err := s.validate(); err != nil {
		return nil, corrupt(bucketSnapshots, key, err)
	}
	return s, nil
}

func decodeLayer(key, val []byte) (*Layer, error) {
	l := new(Layer)
	if err := decode(bucketLayers, key, val, l); err != nil {
		return nil, err
	}
	if l.Digest != string(key) {
		return nil, corrupt(bucketLayers, key, fmt.Errorf("record names layer %q", l.Digest))
	}
	if err := l.validate(); err != nil {
		return nil, corrupt(bucketLayers, key, err)
	}
	return l, nil
}

func decodeIntent(key, val []byte) (*Intent, error) {
	if len(key) != 8 {
		return nil, corrupt(bucketIntents, key, fmt.Errorf("key is %d bytes, want 8", len(key)))
	}
	in := new(Intent)
	if err := decode(bucketIntents, key, val, in); err != nil {
		return nil, err
	}
	if id := binary.BigEndian.Uint64(key); in.ID != id {
		return nil, corrupt(bucketIntents, key, fmt.Errorf("record has id %d, key %d", in.ID, id))
	}
	if err := in.validate(); err != nil {
		return nil, corrupt(bucketIntents, key, err)
	}
	return in, nil
}

// decodeSchema reads the meta/schema value: a big-endian uint32.
func decodeSchema(val []byte) (uint32, error) {
	if len(val) != 4 {
		return 0, corrupt(bucketMeta, keySchema, fmt.Errorf("value is %d bytes, want 4", len(val)))
	}
	v := binary.BigEndian.Uint32(val)
	if v == 0 {
		return 0, corrupt(bucketMeta, keySchema, fmt.Errorf("schema version 0"))
	}
	return v, nil
}

func encodeSchema(v uint32) []byte {
	return binary.BigEndian.AppendUint32(nil, v)
}

func intentKey(id uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, id)
}

func decode(bucket, key, val []byte, rec any) error {
	if err := json.Unmarshal(val, rec); err != nil {
		return corrupt(bucket, key, err)
	}
	return nil
}

func corrupt(bucket, key []byte, err error) error {
	return fmt.Errorf("record %s/%q: %w: %v", bucket, key, ErrCorrupt, err)
}
