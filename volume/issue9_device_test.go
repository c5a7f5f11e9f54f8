package volume_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
)

// liveProcess starts a process that has nothing to do with obdvol: the
// PID a dead server's record names once the kernel has reused it.
func liveProcess(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

func setDevice(t *testing.T, m *volume.Manager, name string, d *metadata.Device) {
	t.Helper()
	err := m.Catalog().Update(func(tx *metadata.Tx) error {
		v, err := tx.Volume(name)
		if err != nil {
			return err
		}
		v.Device = d
		return tx.PutVolume(v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func deviceOf(t *testing.T, m *volume.Manager, name string) *metadata.Device {
	t.Helper()
	var d *metadata.Device
	err := m.Catalog().View(func(tx *metadata.Tx) error {
		v, err := tx.Volume(name)
		if err == nil {
			d = v.Device
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// staleSocket leaves a socket file nobody listens on, as a server killed
// with -9 does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("precondition: no stale socket at %s (%v)", path, err)
	}
}

// A device record is judged by the volume lock, not by its PID: a record
// of a dead NBD server whose PID now names a live process is stale; the
// next operation that needs the volume (rollback, resize, delete, or
// Device itself) clears it and removes the dead server's socket, and
// goes on.
func TestStaleNBDRecordWithLivePID(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	m := newManager(t, root)
	pid := liveProcess(t)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("precondition: pid %d is not alive: %v", pid, err)
	}
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Snapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	v.Close()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	stale := func() {
		t.Helper()
		staleSocket(t, sock)
		setDevice(t, m, "v", &metadata.Device{Kind: volume.DeviceNBD, Path: "nbd+unix:///v?socket=" + sock, PID: pid, ID: -1})
	}
	gone := func(op string) {
		t.Helper()
		if d := deviceOf(t, m, "v"); d != nil {
			t.Errorf("%s left the stale record %+v", op, d)
		}
		if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left the dead server's socket (%v)", op, err)
		}
	}

	stale()
	if d, live, err := m.Device("v"); err != nil || d != nil || live {
		t.Fatalf("Device of a stale NBD record: %+v, live %v, %v; want nil", d, live, err)
	}
	gone("Device")

	stale()
	if err := m.Resize("v", 2<<20, false); err != nil {
		t.Fatalf("resize with a stale NBD record: %v", err)
	}
	gone("resize")

	stale()
	if _, err := m.Rollback("v", "s1", false); err != nil {
		t.Fatalf("rollback with a stale NBD record: %v", err)
	}
	gone("rollback")

	// A live server on that path now (another volume's) keeps its socket.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	setDevice(t, m, "v", &metadata.Device{Kind: volume.DeviceNBD, Path: "nbd+unix:///v?socket=" + sock, PID: pid, ID: -1})
	if err := m.Delete("v", false); err != nil {
		t.Fatalf("delete with a stale NBD record: %v", err)
	}
	if c, err := net.Dial("unix", sock); err != nil {
		t.Errorf("delete removed a live server's socket: %v", err)
	} else {
		c.Close()
	}
}

// A dead ublk server's record (its PID alive again, its lock free) is
// stale too, but its kernel device lives on: operations that would
// change the volume under it are refused, pointing to activate, and the
// record stays for activate to reattach the device.
func TestStaleUblkRecordWithLivePID(t *testing.T) {
	root := t.TempDir()
	m := newManager(t, root)
	pid := liveProcess(t)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Snapshot(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	v.Close()
	rec := &metadata.Device{Kind: volume.DeviceUblk, Path: "/dev/ublkb7", PID: pid, ID: 7}
	setDevice(t, m, "v", rec)
	d, live, err := m.Device("v")
	if err != nil || d == nil || live || d.ID != 7 {
		t.Fatalf("Device of a dead ublk server's record: %+v, live %v, %v; want the record, not live", d, live, err)
	}
	refused := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, volume.ErrRefused) || !strings.Contains(err.Error(), "obdvol activate v") {
			t.Errorf("%s under a dead ublk server's device: %v; want a refusal pointing to activate", op, err)
		}
	}
	refused("resize", m.Resize("v", 2<<20, false))
	_, err = m.Rollback("v", "s1", false)
	refused("rollback", err)
	refused("delete", m.Delete("v", false))
	if got := deviceOf(t, m, "v"); got == nil || *got != *rec {
		t.Fatalf("the ublk record became %+v", got)
	}
	// Open (activate's recovery opens the volume) keeps it too.
	v, err = m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	if got := deviceOf(t, m, "v"); got == nil || *got != *rec {
		t.Fatalf("open changed the ublk record to %+v", got)
	}
}

// A server is alive exactly while it holds the volume lock: a record
// naming the lock's holder is live; while another process holds the
// lock (a command working after the server died) the record is not.
func TestDeviceLiveWhileServerHoldsLock(t *testing.T) {
	m := newManager(t, t.TempDir())
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v") // the server: it holds the lock
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	setDevice(t, m, "v", &metadata.Device{Kind: volume.DeviceNBD, Path: "nbd://127.0.0.1:1/v", PID: os.Getpid(), ID: -1})
	if d, live, err := m.Device("v"); err != nil || d == nil || !live {
		t.Fatalf("Device of a serving volume: %+v, live %v, %v", d, live, err)
	}
	if held, err := m.HeldBy("v", os.Getpid()); err != nil || !held {
		t.Fatalf("HeldBy(server) = %v, %v", held, err)
	}
	other := liveProcess(t)
	setDevice(t, m, "v", &metadata.Device{Kind: volume.DeviceNBD, Path: "nbd://127.0.0.1:1/v", PID: other, ID: -1})
	if d, live, err := m.Device("v"); err != nil || live {
		t.Fatalf("Device of a record naming pid %d while we hold the lock: %+v, live %v, %v", other, d, live, err)
	}
	if held, err := m.HeldBy("v", other); err != nil || held {
		t.Fatalf("HeldBy(other) = %v, %v", held, err)
	}
}
