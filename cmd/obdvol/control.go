package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/obdvol/obdvol/internal/unixsock"
	"github.com/obdvol/obdvol/volume"
)

// The control socket lets CLI commands reach the process that owns an
// active volume (a ublk or NBD server): --root/run/<vol>.sock, one JSON
// request per connection, one JSON response.

type controlRequest struct {
	Op       string `json:"op"` // "snapshot", "flush", "status"
	Snapshot string `json:"snapshot,omitempty"`
}

type controlResponse struct {
	Error    string             `json:"error,omitempty"`
	Kind     string             `json:"kind,omitempty"`
	Snapshot *volume.SealResult `json:"snapshot,omitempty"`
	Status   map[string]any     `json:"status,omitempty"`
}

func controlPath(root, vol string) string { return filepath.Join(root, "run", vol+".sock") }

// serveControl answers control requests for v until ctx ends. status
// supplies what "status" reports (device path, frontend, pid).
func serveControl(ctx context.Context, root string, v *volume.Volume, status func() map[string]any) (func(), error) {
	path := controlPath(root, v.Name())
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	// We hold the volume lock, so a socket there is a dead server's
	// (stale); Listen refuses anything else and creates it 0600.
	l, err := unixsock.Listen(path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go handleControl(ctx, c, v, status)
		}
	}()
	stop := func() {
		l.Close() // removes the socket
		<-done
	}
	return stop, nil
}

func handleControl(ctx context.Context, c net.Conn, v *volume.Volume, status func() map[string]any) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	var req controlRequest
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&req); err != nil {
		json.NewEncoder(c).Encode(controlResponse{Error: "bad request: " + err.Error(), Kind: "usage"})
		return
	}
	var resp controlResponse
	var err error
	switch req.Op {
	case "snapshot":
		resp.Snapshot, err = v.Snapshot(ctx, req.Snapshot)
	case "flush":
		err = v.Flush()
	case "status":
		if status != nil {
			resp.Status = status()
		}
	default:
		err = usagef("unknown control operation %q", req.Op)
	}
	if err != nil {
		resp.Error, resp.Kind = err.Error(), errorKind(err)
	}
	json.NewEncoder(c).Encode(resp)
}

// errRemote is an error reported by the server process.
type errRemote struct{ msg, kind string }

func (e errRemote) Error() string { return e.msg }

// askServer sends one request to the server that owns vol. It returns
// os.ErrNotExist (wrapped) when no server listens.
func askServer(ctx context.Context, root, vol string, req controlRequest) (*controlResponse, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", controlPath(root, vol))
	if err != nil {
		return nil, fmt.Errorf("no server for volume %s: %w", vol, os.ErrNotExist)
	}
	defer c.Close()
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return nil, err
	}
	var resp controlResponse
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return nil, fmt.Errorf("server for volume %s: %w", vol, err)
	}
	if resp.Error != "" {
		return &resp, errRemote{resp.Error, resp.Kind}
	}
	return &resp, nil
}

// withOwner runs local with the volume opened here, or, when another
// process owns it and listens on the control socket, remote.
func withOwner(e *env, name string, local func(*volume.Volume) error, remote func() error) error {
	v, err := e.openVolume(name)
	if errors.Is(err, volume.ErrInUse) {
		if rerr := remote(); !errors.Is(rerr, os.ErrNotExist) {
			return rerr
		}
		return err
	}
	if err != nil {
		return err
	}
	defer v.Close()
	return local(v)
}
