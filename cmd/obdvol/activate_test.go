package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"

	"github.com/obdvol/obdvol/device/ublk"
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
		err := runActivate(ctx, &bytes.Buffer{}, h.g, &activateOptions{NotifyFD: -1}, "v")
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
