package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
)

// The control protocol: a client connects to a control socket, writes one
// JSON Request, reads one JSON Response, and the connection ends. A
// Response with Error set is a failure; Kind classifies it for scripts
// (the kinds of obdvol --json errors).

// Operations (Request.Op).
const (
	OpActivate   = "activate"   // Volume as a ublk device
	OpDeactivate = "deactivate" // Volume: stop its device or export, forget its activation
	OpServeNBD   = "serve-nbd"  // Volumes exported over NBD on Listen
	OpStatus     = "status"     // every active volume, or Volume's
	OpSnapshot   = "snapshot"   // Volume@Snapshot sealed at a flush point
	OpFlush      = "flush"      // Volume's writes made durable
	OpResize     = "resize"     // Volume grown online to Size bytes
)

// MaxRequest bounds the bytes of one request; longer ones are refused.
const MaxRequest = 64 << 10

// MaxServeVolumes bounds the volumes of one serve-nbd request.
const MaxServeVolumes = 1024

// Request is one control request.
type Request struct {
	Op       string   `json:"op"`
	Volume   string   `json:"volume,omitempty"`
	Volumes  []string `json:"volumes,omitempty"`  // serve-nbd
	Snapshot string   `json:"snapshot,omitempty"` // snapshot
	Size     uint64   `json:"size,omitempty"`     // resize: the new size in bytes
	ReadOnly bool     `json:"read_only,omitempty"`
	Queues   int      `json:"queues,omitempty"` // activate; 0: one per CPU
	Depth    int      `json:"depth,omitempty"`  // activate; 0: 64
	// Persistent records the activation in the catalogue: the daemon
	// activates the volume again whenever it starts.
	Persistent  bool   `json:"persistent,omitempty"`
	Listen      string `json:"listen,omitempty"` // serve-nbd: unix:PATH or tcp:HOST:PORT
	AllowRemote bool   `json:"allow_remote,omitempty"`
}

// Response answers one Request.
type Response struct {
	Error    string             `json:"error,omitempty"`
	Kind     string             `json:"kind,omitempty"`
	PID      int                `json:"pid,omitempty"` // the answering process
	Volumes  []VolumeStatus     `json:"volumes,omitempty"`
	Snapshot *volume.SealResult `json:"snapshot,omitempty"`
	// Host: the daemon itself (status naming no volume, from the daemon).
	Host *HostStatus `json:"host,omitempty"`
}

// VolumeStatus describes one active volume.
type VolumeStatus struct {
	Name       string `json:"name"`
	Kind       string `json:"kind"`           // "ublk" or "nbd"
	Device     string `json:"device"`         // /dev/ublkbN or the NBD URI
	Link       string `json:"link,omitempty"` // the stable name (ublk)
	ID         int    `json:"id"`             // ublk device id, -1 for nbd
	PID        int    `json:"pid"`
	ReadOnly   bool   `json:"read_only,omitempty"`
	Queues     int    `json:"queues,omitempty"`
	Depth      int    `json:"depth,omitempty"`
	Listen     string `json:"listen,omitempty"`
	Persistent bool   `json:"persistent"`
	// Reattached: the daemon reattached this device at its start, to a
	// kernel device its previous server left (user recovery).
	Reattached bool `json:"reattached,omitempty"`
	// Restored: an activate found the device the daemon brought back at
	// its start (reattached, or new for a persistent activation).
	Restored bool `json:"restored,omitempty"`
	// Size is the volume's size in bytes (in the answer to resize).
	Size uint64 `json:"size,omitempty"`
}

// ParseRequest decodes and checks one request: exactly one JSON object of
// at most MaxRequest bytes, a known operation with the fields it needs,
// valid names, a valid listen spec, bounded queues and depth. Errors wrap
// ErrBadRequest. It never panics (FuzzControlRequest).
func ParseRequest(b []byte) (*Request, error) { return parseRequest(b, "") }

// parseRequest is ParseRequest for the control socket of volume vol (""
// for the daemon's): a request there that names no volume is about vol,
// and one that names another volume is refused.
func parseRequest(b []byte, vol string) (*Request, error) {
	if len(b) > MaxRequest {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrBadRequest, len(b), MaxRequest)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var r Request
	if err := d.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	if d.More() {
		return nil, fmt.Errorf("%w: more than one JSON value", ErrBadRequest)
	}
	if vol != "" {
		if r.Volume == "" {
			r.Volume = vol
		}
		if r.Volume != vol || (r.Op != OpSnapshot && r.Op != OpFlush && r.Op != OpStatus && r.Op != OpResize) {
			return nil, fmt.Errorf("%w: the control socket of volume %s answers snapshot, flush, resize and status of %s only", ErrBadRequest, vol, vol)
		}
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Validate checks what ParseRequest checks after decoding.
func (r *Request) Validate() error {
	bad := func(f string, a ...any) error { return fmt.Errorf("%w: "+f, append([]any{ErrBadRequest}, a...)...) }
	name := func(n string) error {
		if err := metadata.ValidateName("volume", n); err != nil {
			return fmt.Errorf("%w: %v", ErrBadRequest, err)
		}
		return nil
	}
	if r.Queues < 0 || r.Queues > metadata.MaxQueues || r.Depth < 0 || r.Depth > metadata.MaxDepth {
		return bad("%d queues of depth %d: want 1..%d queues of depth 1..%d", r.Queues, r.Depth, metadata.MaxQueues, metadata.MaxDepth)
	}
	switch r.Op {
	case OpActivate, OpDeactivate, OpFlush:
		return name(r.Volume)
	case OpResize:
		if r.Size == 0 {
			return bad("resize wants a size in bytes")
		}
		return name(r.Volume)
	case OpSnapshot:
		if err := name(r.Volume); err != nil {
			return err
		}
		if err := metadata.ValidateName("snapshot", r.Snapshot); err != nil {
			return fmt.Errorf("%w: %v", ErrBadRequest, err)
		}
		return nil
	case OpStatus:
		if r.Volume == "" {
			return nil
		}
		return name(r.Volume)
	case OpServeNBD:
		if len(r.Volumes) == 0 || len(r.Volumes) > MaxServeVolumes {
			return bad("serve-nbd wants 1..%d volumes, got %d", MaxServeVolumes, len(r.Volumes))
		}
		seen := map[string]bool{}
		for _, v := range r.Volumes {
			if err := name(v); err != nil {
				return err
			}
			if seen[v] {
				return bad("volume %s named twice", v)
			}
			seen[v] = true
		}
		_, err := ParseNBDSpec(r.Listen, r.AllowRemote)
		return err
	}
	return bad("unknown operation %q", r.Op)
}
