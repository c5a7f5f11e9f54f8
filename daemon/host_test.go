package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obdvol/obdvol/device"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/volume"
)

// clientEnv makes the test binary a control client (TestPeerRefused runs
// it as another user): it sends a status request to the socket named
// there and prints the error.
const clientEnv = "OBDVOL_DAEMON_TEST_CLIENT"

func TestMain(m *testing.M) {
	if sock := os.Getenv(clientEnv); sock != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := ask(ctx, sock, "daemon", &Request{Op: OpStatus})
		fmt.Printf("uid %d: %v\n", os.Getuid(), err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// newManager returns a manager over a fresh root (with a catalogue and a
// content store).
func newManager(t *testing.T, root string) *volume.Manager {
	t.Helper()
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	store, err := repo.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	m := volume.NewManager(root, cat, repo.Blobs{Store: store}, volume.Options{CacheBytes: 16 << 20})
	t.Cleanup(func() { m.Close() })
	return m
}

// startHost opens and starts a host on root; it is stopped when the
// test ends (unless the test stopped it).
func startHost(t *testing.T, root string, m *volume.Manager) *Host {
	t.Helper()
	h, err := Open(Config{Root: root, Manager: m, DevDir: filepath.Join(root, "dev"), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Stop() })
	return h
}

func needTool(t *testing.T, tools ...string) {
	for _, x := range tools {
		if _, err := exec.LookPath(x); err != nil {
			t.Fatalf("%s not installed: run make deps", x)
		}
	}
}

func qemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", append(args, uri)...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed") {
		t.Fatalf("qemu-io %v %s: %v\n%s", cmds, uri, err, out)
	}
	return string(out)
}

func record(t *testing.T, m *volume.Manager, name string) *metadata.Volume {
	t.Helper()
	var v *metadata.Volume
	if err := m.Catalog().View(func(tx *metadata.Tx) (err error) { v, err = tx.Volume(name); return }); err != nil {
		t.Fatal(err)
	}
	return v
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("%s is not a socket (%v)", path, fi.Mode())
	}
	return fi.Mode().Perm()
}

// NBD exports through the host with a real client; a stop and a new host
// on the same root (what a reboot or a restart looks like to the
// catalogue) brings the persistent exports back, with their data, and
// not the one-off one; deactivating one volume of a group keeps the
// others served.
func TestHostNBDRestartRestoresPersistent(t *testing.T) {
	needTool(t, "qemu-io")
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	for _, n := range []string{"a", "b", "c"} {
		if _, err := m.Create(n, 4<<20, volume.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	h := startHost(t, root, m)
	ctx := context.Background()
	c := &Client{Root: root}
	sock1, sock2 := filepath.Join(t.TempDir(), "p.sock"), filepath.Join(t.TempDir(), "o.sock")
	resp, err := c.Do(ctx, &Request{Op: OpServeNBD, Volumes: []string{"a", "b"}, Listen: "unix:" + sock1, Persistent: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Volumes) != 2 || resp.PID != os.Getpid() {
		t.Fatalf("serve-nbd answered %+v", resp)
	}
	uriA, uriB := resp.Volumes[0].Device, resp.Volumes[1].Device
	if _, err := c.Do(ctx, &Request{Op: OpServeNBD, Volumes: []string{"c"}, Listen: "unix:" + sock2}); err != nil {
		t.Fatal(err)
	}
	// Already active, and a listener already in use, are refused.
	if _, err := c.Do(ctx, &Request{Op: OpServeNBD, Volumes: []string{"c"}, Listen: "unix:" + filepath.Join(t.TempDir(), "x")}); err == nil || !strings.Contains(err.Error(), "already active") {
		t.Errorf("second export of c: %v", err)
	}
	for _, p := range []string{SocketPath(root), VolumeSocketPath(root, "a"), VolumeSocketPath(root, "c"), sock1, sock2} {
		if got := mode(t, p); got != 0o600 {
			t.Errorf("%s: mode %v, want 0600", p, got)
		}
	}
	qemuIO(t, uriA, "write -P 0xa1 0 1M", "flush")
	qemuIO(t, uriB, "write -P 0xb1 1M 64k", "flush")
	// snapshot and status reach the daemon through the volume's socket.
	if r, err := AskVolume(ctx, root, "a", &Request{Op: OpSnapshot, Snapshot: "s1"}); err != nil || r.Snapshot == nil {
		t.Fatalf("snapshot through a's socket: %+v, %v", r, err)
	}
	if r, err := c.Do(ctx, &Request{Op: OpStatus}); err != nil || len(r.Volumes) != 3 || !r.Volumes[0].Persistent || r.Volumes[2].Persistent {
		t.Fatalf("status: %+v, %v", r, err)
	}
	if a := record(t, m, "a"); a.Device == nil || a.Activation == nil || a.Activation.Listen != "unix:"+sock1 {
		t.Fatalf("a's records: device %+v activation %+v", a.Device, a.Activation)
	}
	if r := record(t, m, "c"); r.Device == nil || r.Activation != nil {
		t.Fatalf("c's records: device %+v activation %+v", r.Device, r.Activation)
	}

	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c"} {
		if r := record(t, m, n); r.Device != nil {
			t.Errorf("%s: device record %+v after a clean stop", n, r.Device)
		}
	}
	if _, err := os.Lstat(sock1); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stopped listener's socket is still there: %v", err)
	}

	startHost(t, root, m)
	r, err := c.Do(ctx, &Request{Op: OpStatus})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Volumes) != 2 || r.Volumes[0].Name != "a" || r.Volumes[1].Name != "b" {
		t.Fatalf("after restart: %+v, want a and b (persistent) only", r.Volumes)
	}
	qemuIO(t, uriA, "read -P 0xa1 0 1M")
	qemuIO(t, uriB, "read -P 0xb1 1M 64k")
	if _, err := os.Lstat(sock2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the one-off export's socket is back: %v", err)
	}

	// Deactivating a: b's listener comes back with b alone.
	if _, err := c.Do(ctx, &Request{Op: OpDeactivate, Volume: "a"}); err != nil {
		t.Fatal(err)
	}
	if a := record(t, m, "a"); a.Device != nil || a.Activation != nil {
		t.Errorf("a after deactivate: device %+v activation %+v", a.Device, a.Activation)
	}
	qemuIO(t, uriB, "read -P 0xb1 1M 64k")
	if _, err := c.Do(ctx, &Request{Op: OpDeactivate, Volume: "a"}); err == nil || !strings.Contains(err.Error(), "not active") {
		t.Errorf("second deactivate of a: %v", err)
	}
	// Only a's data file is written: the chain reads a's writes back.
	v, err := m.Open("a")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	v.ReadAt(buf, 4096)
	v.Close()
	if buf[0] != 0xa1 || buf[4095] != 0xa1 {
		t.Errorf("a after deactivate reads %#x", buf[0])
	}
}

// One daemon per root: a second Open fails with ErrRunning naming the
// first one's PID, and leaves the first one serving.
func TestSecondHostRefused(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	startHost(t, root, m)
	_, err := Open(Config{Root: root, Manager: m})
	if !errors.Is(err, ErrRunning) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("second daemon: %v, want ErrRunning naming pid %d", err, os.Getpid())
	}
	if !(&Client{Root: root}).Running(context.Background()) {
		t.Fatal("the first daemon stopped answering")
	}
}

// Deactivate of a volume no daemon serves only forgets its persistent
// activation; one with nothing to forget is refused.
func TestForgetInactive(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := ForgetInactive(m, "v"); !errors.Is(err, volume.ErrRefused) {
		t.Fatalf("forget an inactive volume: %v", err)
	}
	err := m.Catalog().Update(func(tx *metadata.Tx) error {
		v, err := tx.Volume("v")
		if err != nil {
			return err
		}
		v.Activation = &metadata.Activation{Kind: metadata.ActivationUblk}
		return tx.PutVolume(v)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ForgetInactive(m, "v"); err != nil {
		t.Fatal(err)
	}
	if r := record(t, m, "v"); r.Activation != nil {
		t.Fatalf("activation kept: %+v", r.Activation)
	}
}

// A restore failure of one volume (a ublk activation on a host without
// ublk, a volume whose directory is damaged) is logged and does not keep
// the others from coming back.
func TestRestoreFailureIsolated(t *testing.T) {
	needTool(t, "qemu-io")
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	sock := filepath.Join(t.TempDir(), "s.sock")
	for _, n := range []string{"good", "noublk"} {
		if _, err := m.Create(n, 1<<20, volume.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	err := m.Catalog().Update(func(tx *metadata.Tx) error {
		for n, a := range map[string]*metadata.Activation{
			"good":   {Kind: metadata.ActivationNBD, Listen: "unix:" + sock},
			"noublk": {Kind: metadata.ActivationUblk, Queues: 1},
		} {
			v, err := tx.Volume(n)
			if err != nil {
				return err
			}
			v.Activation = a
			if err := tx.PutVolume(v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/dev/ublk-control"); err == nil {
		t.Skip("this host has ublk: the ublk activation would succeed")
	}
	startHost(t, root, m)
	r, err := (&Client{Root: root}).Do(context.Background(), &Request{Op: OpStatus})
	if err != nil || len(r.Volumes) != 1 || r.Volumes[0].Name != "good" {
		t.Fatalf("status: %+v, %v", r, err)
	}
	qemuIO(t, r.Volumes[0].Device, "read -P 0 0 64k")
	if n := record(t, m, "noublk"); n.Activation == nil || n.Device != nil {
		t.Errorf("the failed volume's records changed: %+v %+v", n.Activation, n.Device)
	}
}

// counting is a Backend hook: it counts the reads served.
type counting struct {
	*volume.Volume
	reads *atomic.Int64
}

func (c counting) ReadAt(p []byte, off int64) (int, error) {
	c.reads.Add(1)
	return c.Volume.ReadAt(p, off)
}

// The Backend hook (for metrics) sees the I/O of the exports.
func TestBackendHook(t *testing.T) {
	needTool(t, "qemu-io")
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var reads atomic.Int64
	h, err := Open(Config{Root: root, Manager: m, Logf: t.Logf, Backend: func(name string, v *volume.Volume) device.Backend {
		return counting{v, &reads}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	defer h.Stop()
	st, err := h.ServeNBD(&Request{Op: OpServeNBD, Volumes: []string{"v"}, Listen: "unix:" + filepath.Join(t.TempDir(), "s")})
	if err != nil {
		t.Fatal(err)
	}
	qemuIO(t, st[0].Device, "read -P 0 0 64k")
	if reads.Load() == 0 {
		t.Fatal("the hook saw no read")
	}
}

// Requests for different volumes run concurrently (clones of one golden
// opened at once through the one manager); each export reads back the
// golden's data.
func TestConcurrentExports(t *testing.T) {
	needTool(t, "qemu-io")
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	if _, err := m.Create("golden", 2<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	g, err := m.Open("golden")
	if err != nil {
		t.Fatal(err)
	}
	g.WriteAt(bytes.Repeat([]byte{0x3c}, 1<<20), 512<<10)
	if _, err := g.Snapshot(context.Background(), "g"); err != nil {
		t.Fatal(err)
	}
	g.Close()
	const n = 8
	for i := 0; i < n; i++ {
		if _, err := m.Clone(fmt.Sprintf("c%d", i), "golden", "g"); err != nil {
			t.Fatal(err)
		}
	}
	startHost(t, root, m)
	c := &Client{Root: root}
	dir := t.TempDir()
	uris := make([]string, n)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			r, err := c.Do(context.Background(), &Request{Op: OpServeNBD, Volumes: []string{fmt.Sprintf("c%d", i)},
				Listen: "unix:" + filepath.Join(dir, fmt.Sprintf("c%d.sock", i))})
			if err == nil {
				uris[i] = r.Volumes[0].Device
			}
			errs <- err
		}(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range uris {
		qemuIO(t, u, "read -P 0x3c 512k 1M", "read -P 0 0 512k")
	}
}

// At start, a ublk record whose kernel device is gone (a record of
// another boot, whose id may be another device's now; a record of this
// boot whose /sys/block/ublkbN is missing) is cleared, never
// reattached; a persistent activation keeps its activation record (the
// new device it gets fails here for want of ublk, and is logged).
func TestRestoreUblkDeviceGone(t *testing.T) {
	if BootID() == "" || !sysfsUp() {
		t.Skip("no boot id or no sysfs on this host")
	}
	if _, err := os.Stat("/sys/block/ublkb5"); err == nil {
		t.Skip("this host has /dev/ublkb5")
	}
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	for n, boot := range map[string]string{"old": "another-boot", "gone": BootID()} {
		if _, err := m.Create(n, 1<<20, volume.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		err := m.Catalog().Update(func(tx *metadata.Tx) error {
			v, err := tx.Volume(n)
			if err != nil {
				return err
			}
			v.Device = &metadata.Device{Kind: "ublk", Path: "/dev/ublkb5", PID: 1 << 22, ID: 5, Boot: boot}
			if n == "gone" {
				v.Activation = &metadata.Activation{Kind: metadata.ActivationUblk}
			}
			return tx.PutVolume(v)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat("/dev/ublk-control"); err == nil {
		t.Skip("this host has ublk: a new device would be started for real")
	}
	startHost(t, root, m)
	if r := record(t, m, "old"); r.Device != nil {
		t.Errorf("the record of another boot was kept: %+v", r.Device)
	}
	if r := record(t, m, "gone"); r.Device != nil || r.Activation == nil {
		t.Errorf("gone device: record %+v, activation %+v; want no record, the activation kept", r.Device, r.Activation)
	}
}

// Members of one NBD listener deactivated at once: the listener comes
// back with whoever is left, whatever the order.
func TestConcurrentDeactivateInGroup(t *testing.T) {
	needTool(t, "qemu-io")
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	names := []string{"a", "b", "c", "d"}
	for _, n := range names {
		if _, err := m.Create(n, 1<<20, volume.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	h := startHost(t, root, m)
	st, err := h.ServeNBD(&Request{Op: OpServeNBD, Volumes: names, Listen: "unix:" + filepath.Join(t.TempDir(), "s")})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 3)
	for _, n := range names[:3] {
		go func(n string) {
			_, err := h.Deactivate(n)
			errs <- err
		}(n)
	}
	for range names[:3] {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	left, err := h.Status("")
	if err != nil || len(left) != 1 || left[0].Name != "d" {
		t.Fatalf("left: %+v, %v", left, err)
	}
	qemuIO(t, st[3].Device, "read -P 0 0 64k")
}
