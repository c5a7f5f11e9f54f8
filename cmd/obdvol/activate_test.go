package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/obdvol/obdvol/device/ublk"
	"github.com/obdvol/obdvol/metadata"
)

// On a host without ublk (like the build machines), activate fails at once
// saying what is missing, and changes nothing.
func TestActivateWithoutUblk(t *testing.T) {
	_, statErr := os.Stat(ublk.ControlPath)
	ctx := context.Background()
	h := newHost(t)
	h.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, h.g, &createOptions{Size: "1M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "v")
	})
	if statErr != nil { // the VM test covers hosts that have ublk
		err := runActivate(ctx, &bytes.Buffer{}, h.g, &activateOptions{}, "v")
		if !errors.Is(err, ublk.ErrUnavailable) && !errors.Is(err, ublk.ErrNotRoot) {
			t.Fatalf("activate without ublk: %v", err)
		}
	}
	rec, _ := volumeRecord(mustEnv(t, h.g), "v")
	if rec.Device != nil {
		t.Fatal("a failed activate recorded a device")
	}
	if err := runDeactivate(ctx, &bytes.Buffer{}, h.g, "v"); err == nil {
		t.Fatal("deactivate of an inactive volume succeeded")
	}
}

// deactivate judges the server by the volume lock, not by its PID: the
// record of a dead ublk server whose PID now names an unrelated process
// gets no signal sent to that process, and points to activate (which
// reattaches the kernel device); an NBD record of a dead server is not
// "active" at all.
func TestDeactivateDeadServerWithReusedPID(t *testing.T) {
	ctx := context.Background()
	h := newHost(t)
	h.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, h.g, &createOptions{Size: "1M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "v")
	})
	other := exec.Command("sleep", "600")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- other.Wait() }()
	defer other.Process.Kill()
	pid := other.Process.Pid

	e := mustEnv(t, h.g)
	if err := setDevice(e, "v", &metadata.Device{Kind: "ublk", Path: "/dev/ublkb7", PID: pid, ID: 7}); err != nil {
		t.Fatal(err)
	}
	e.close()
	err := runDeactivate(ctx, &bytes.Buffer{}, h.g, "v")
	if err == nil || !strings.Contains(err.Error(), "obdvol activate v") {
		t.Errorf("deactivate of a dead ublk server's device: %v; want a pointer to activate", err)
	}
	select {
	case err := <-exited:
		t.Fatalf("deactivate signalled pid %d, an unrelated process (%v)", pid, err)
	case <-time.After(200 * time.Millisecond):
	}
	if rec, _ := volumeRecord(mustEnv(t, h.g), "v"); rec.Device == nil || rec.Device.ID != 7 {
		t.Fatalf("the dead ublk server's record is gone (%+v): activate can no longer reattach /dev/ublkb7", rec.Device)
	}

	e = mustEnv(t, h.g)
	if err := setDevice(e, "v", &metadata.Device{Kind: "nbd", Path: "nbd://127.0.0.1:1/v", PID: pid, ID: -1}); err != nil {
		t.Fatal(err)
	}
	e.close()
	err = runDeactivate(ctx, &bytes.Buffer{}, h.g, "v")
	if err == nil || !strings.Contains(err.Error(), "is not active") {
		t.Errorf("deactivate of a dead NBD server's volume: %v; want \"not active\"", err)
	}
	if rec, _ := volumeRecord(mustEnv(t, h.g), "v"); rec.Device != nil {
		t.Errorf("the dead NBD server's record stayed: %+v", rec.Device)
	}
}

// setDevice records (or clears, with nil) where a volume is served, as a
// server would.
func setDevice(e *env, name string, d *metadata.Device) error {
	return e.cat.Update(func(tx *metadata.Tx) error {
		v, err := tx.Volume(name)
		if err != nil {
			return err
		}
		v.Device = d
		return tx.PutVolume(v)
	})
}
