package daemon

import (
	"context"
	"fmt"
	"os"

	"github.com/obdvol/obdvol/device/nbd"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
)

// Foreground serves volumes over NBD in the calling process, until its
// context ends, without a daemon: obdvol serve --foreground. Each volume
// gets its device record and its control socket (--root/run/<vol>.sock),
// so that snapshot, flush and status reach it as they reach the daemon.
type Foreground struct {
	Root     string
	Manager  *volume.Manager
	Open     func(name string) (*volume.Volume, error) // nil: Manager.Open
	Spec     NBDSpec
	ReadOnly bool
	// RecordReads records the ranges clients read, per volume (for push
	// --prefetch); Serve returns them.
	RecordReads bool
	Logf        func(format string, args ...any)
	ErrorKind   func(error) string
	// Ready, if not nil, is called with the export URIs once clients can
	// connect.
	Ready func(uris []string)
}

// Serve serves vols until ctx ends: then it stops accepting, lets
// requests in flight finish, flushes, clears the device records and
// closes the volumes.
func (f *Foreground) Serve(ctx context.Context, vols []string) (recorded map[string][]volume.Range, err error) {
	open := f.Open
	if open == nil {
		open = f.Manager.Open
	}
	logf := f.Logf
	if logf == nil {
		logf = func(fm string, a ...any) { fmt.Fprintf(os.Stderr, fm+"\n", a...) }
	}
	kind := f.ErrorKind
	if kind == nil {
		kind = func(error) string { return "error" }
	}
	var opened []*volume.Volume
	defer func() {
		for _, v := range opened {
			v.Close()
		}
	}()
	var exports []nbd.Export
	for _, name := range vols {
		v, err := open(name)
		if err != nil {
			return nil, err
		}
		opened = append(opened, v)
		if f.RecordReads {
			v.RecordReads(1 << 16)
		}
		exports = append(exports, nbd.Export{Name: name, Backend: v, ReadOnly: f.ReadOnly, Description: "obdvol volume " + name})
	}
	l, uri, err := f.Spec.Listen()
	if err != nil {
		return nil, err
	}
	cat := f.Manager.Catalog()
	setDevice := func(name string, d *metadata.Device) error {
		return cat.Update(func(tx *metadata.Tx) error {
			v, err := tx.Volume(name)
			if err != nil {
				return err
			}
			v.Device = d
			return tx.PutVolume(v)
		})
	}
	var uris []string
	for _, v := range opened {
		v := v
		u := uri(v.Name())
		uris = append(uris, u)
		st := VolumeStatus{Name: v.Name(), Kind: metadata.ActivationNBD, Device: u, ID: -1, PID: os.Getpid(),
			ReadOnly: f.ReadOnly, Listen: f.Spec.String()}
		ctl, err := listenControl(VolumeSocketPath(f.Root, v.Name()), v.Name(), func(ctx context.Context, r *Request) (*Response, error) {
			switch r.Op {
			case OpSnapshot:
				res, err := v.Snapshot(ctx, r.Snapshot)
				return &Response{Snapshot: res}, err
			case OpFlush:
				return &Response{Volumes: []VolumeStatus{st}}, v.Flush()
			case OpResize:
				return nil, fmt.Errorf("volume %s is served by obdvol serve --foreground (pid %d), which does not resize online: stop it, resize, serve again (or serve it through the daemon): %w",
					v.Name(), os.Getpid(), volume.ErrRefused)
			}
			return &Response{Volumes: []VolumeStatus{st}}, nil
		}, kind, logf)
		if err != nil {
			l.Close()
			return nil, err
		}
		defer ctl.stop()
		if err := setDevice(v.Name(), &metadata.Device{Kind: metadata.ActivationNBD, Path: u, PID: os.Getpid(), ID: -1}); err != nil {
			l.Close()
			return nil, err
		}
		defer setDevice(v.Name(), nil)
	}
	if f.Ready != nil {
		f.Ready(uris)
	}
	srv := nbd.NewServer(exports)
	srv.Logf = logf
	err = srv.Serve(ctx, l)
	if f.RecordReads {
		recorded = map[string][]volume.Range{}
		for _, v := range opened {
			recorded[v.Name()] = v.Recorded()
		}
	}
	return recorded, err
}
