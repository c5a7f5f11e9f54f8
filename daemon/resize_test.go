package daemon

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obdvol/obdvol/device/ublk"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/volume"
)

func nbdSize(t *testing.T, uri string) string {
	t.Helper()
	out, err := exec.Command("nbdinfo", "--size", uri).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo --size %s: %v\n%s", uri, err, out)
	}
	return strings.TrimSpace(string(out))
}

// An NBD export grows online through a control request: a new connection
// sees the new size, the data written before is intact, the grown space
// reads as zeros and takes writes; the catalogue records the size; a
// smaller size is refused and changes nothing; a volume not active here
// is refused.
func TestResizeNBDOnline(t *testing.T) {
	needTool(t, "qemu-io", "nbdinfo")
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	if _, err := m.Create("v", 4<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	startHost(t, root, m)
	c := &Client{Root: root}
	ctx := context.Background()
	r, err := c.Do(ctx, &Request{Op: OpServeNBD, Volumes: []string{"v"}, Listen: "unix:" + filepath.Join(t.TempDir(), "s")})
	if err != nil {
		t.Fatal(err)
	}
	uri := r.Volumes[0].Device
	qemuIO(t, uri, "write -P 0x42 3M 1M", "flush")
	if got := nbdSize(t, uri); got != "4194304" {
		t.Fatalf("precondition: size %s", got)
	}
	// Through the volume's own control socket, as the CLI asks.
	r, err = AskVolume(ctx, root, "v", &Request{Op: OpResize, Size: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if r.Volumes[0].Size != 8<<20 {
		t.Errorf("resize answered size %d", r.Volumes[0].Size)
	}
	if got := nbdSize(t, uri); got != "8388608" {
		t.Fatalf("a new connection after the grow sees size %s, want 8388608", got)
	}
	qemuIO(t, uri, "read -P 0x42 3M 1M", "read -P 0 4M 4M", "write -P 0x43 7M 1M", "read -P 0x43 7M 1M")
	if rec := record(t, m, "v"); rec.Size != 8<<20 || rec.Device == nil {
		t.Errorf("catalogue after the grow: size %d, device %v", rec.Size, rec.Device)
	}
	_, err = c.Do(ctx, &Request{Op: OpResize, Volume: "v", Size: 2 << 20})
	var re *RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Msg, "shrinking") {
		t.Fatalf("shrink of an active volume: %v", err)
	}
	if got := nbdSize(t, uri); got != "8388608" {
		t.Fatalf("size %s after a refused shrink", got)
	}
	if _, err := m.Create("idle", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Do(ctx, &Request{Op: OpResize, Volume: "idle", Size: 2 << 20}); !errors.As(err, &re) || !strings.Contains(re.Msg, "not active") {
		t.Fatalf("resize of a volume the daemon does not serve: %v", err)
	}
	if _, err := ParseRequest([]byte(`{"op":"resize","volume":"v"}`)); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("resize without a size: %v", err)
	}
}

// A ublk device whose kernel lacks UPDATE_SIZE (a real *ublk.Device
// whose granted flags lack FlagUpdateSize, as on Linux < 6.16): the grow
// is refused before anything changes, naming the kernel and what to do.
func TestResizeUblkRefusedWithoutUpdateSize(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	if _, err := m.Create("v", 4<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h := startHost(t, root, m)
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	dev := &ublk.Device{ID: 7, Path: "/dev/ublkb7"}
	if dev.CanResize() {
		t.Fatal("precondition: a device without FlagUpdateSize says it can resize")
	}
	h.mu.Lock()
	h.vols["v"] = &active{name: "v", v: v, kind: metadata.ActivationUblk, dev: dev, device: dev.Path, id: 7}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.vols, "v")
		h.mu.Unlock()
	}()
	_, err = h.Resize("v", 8<<20)
	if !errors.Is(err, ErrNoOnlineResize) || !errors.Is(err, errors.ErrUnsupported) || !errors.Is(err, volume.ErrRefused) ||
		!strings.Contains(err.Error(), "Linux 6.16") || !strings.Contains(err.Error(), "deactivate, resize, activate") ||
		!strings.Contains(err.Error(), ublk.KernelRelease()) {
		t.Fatalf("grow of a ublk device without UPDATE_SIZE: %v", err)
	}
	if v.Size() != 4<<20 || record(t, m, "v").Size != 4<<20 {
		t.Fatalf("the refused grow changed the volume: size %d, record %d", v.Size(), record(t, m, "v").Size)
	}
	// Not a multiple of the device's 4 KiB block: refused first too.
	if _, err := h.Resize("v", 4<<20+512); !errors.Is(err, volume.ErrRange) && !errors.Is(err, volume.ErrRefused) {
		t.Fatalf("grow to an unaligned size: %v", err)
	}
}

// fakeResizer stands for a ublk device on a kernel with UPDATE_SIZE (the
// host has no ublk driver): it records the volume's size when asked.
type fakeResizer struct {
	v      *volume.Volume
	asked  uint64
	volWas uint64
	err    error
}

func (f *fakeResizer) CanResize() bool { return true }
func (f *fakeResizer) Resize(n uint64) error {
	f.asked, f.volWas = n, f.v.Size()
	return f.err
}

// With UPDATE_SIZE, the volume grows first and then the device (the
// kernel must never see a device bigger than its backend); a device that
// then fails leaves a bigger volume, reported.
func TestResizeUblkOrder(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	if _, err := m.Create("v", 4<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h := startHost(t, root, m)
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	f := &fakeResizer{v: v}
	if err := h.grow(v, f, "v", 8<<20); err != nil {
		t.Fatal(err)
	}
	if f.asked != 8<<20 || f.volWas != 8<<20 {
		t.Fatalf("device asked for %d while the volume had %d, want both 8 MiB", f.asked, f.volWas)
	}
	f.err = errors.New("injected UPDATE_SIZE failure")
	if err := h.grow(v, f, "v", 12<<20); err == nil || !strings.Contains(err.Error(), "kept its size") {
		t.Fatalf("device failure: %v", err)
	}
	if v.Size() != 12<<20 {
		t.Fatalf("volume size %d after the device failed", v.Size())
	}
}

// nbdConn is a minimal NBD client (fixed newstyle, NBD_OPT_EXPORT_NAME,
// simple replies): enough to hold one connection across a grow.
type nbdConn struct {
	c    net.Conn
	size uint64
}

func dialNBD(t *testing.T, sock, export string) *nbdConn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	hello := make([]byte, 18)
	if _, err := io.ReadFull(c, hello); err != nil || string(hello[:16]) != "NBDMAGICIHAVEOPT" {
		t.Fatalf("NBD hello %q: %v", hello, err)
	}
	be := binary.BigEndian
	msg := be.AppendUint32(nil, 1|2) // fixed newstyle, no zeroes
	msg = append(msg, "IHAVEOPT"...)
	msg = be.AppendUint32(msg, 1) // NBD_OPT_EXPORT_NAME
	msg = be.AppendUint32(msg, uint32(len(export)))
	msg = append(msg, export...)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	rep := make([]byte, 10)
	if _, err := io.ReadFull(c, rep); err != nil {
		t.Fatalf("NBD export reply: %v", err)
	}
	return &nbdConn{c: c, size: be.Uint64(rep)}
}

// read sends one NBD_CMD_READ and returns its reply's error code.
func (n *nbdConn) read(t *testing.T, off uint64, length uint32) uint32 {
	t.Helper()
	be := binary.BigEndian
	req := be.AppendUint32(nil, 0x25609513)
	req = be.AppendUint16(req, 0)
	req = be.AppendUint16(req, 0) // NBD_CMD_READ
	req = be.AppendUint64(req, 42)
	req = be.AppendUint64(req, off)
	req = be.AppendUint32(req, length)
	if _, err := n.c.Write(req); err != nil {
		t.Fatal(err)
	}
	rep := make([]byte, 16)
	if _, err := io.ReadFull(n.c, rep); err != nil || be.Uint32(rep) != 0x67446698 {
		t.Fatalf("NBD read reply %x: %v", rep, err)
	}
	if e := be.Uint32(rep[4:]); e != 0 {
		return e
	}
	if _, err := io.ReadFull(n.c, make([]byte, length)); err != nil {
		t.Fatal(err)
	}
	return 0
}

// An NBD client connected before a grow keeps the size it was told at
// its handshake (the protocol has no size change in transmission): its
// reads past the old end fail with EINVAL, below it they work; a client
// that connects after the grow gets the new size.
func TestResizeNBDExistingConnectionKeepsItsSize(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	if _, err := m.Create("v", 4<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h := startHost(t, root, m)
	sock := filepath.Join(t.TempDir(), "s")
	if _, err := h.ServeNBD(&Request{Op: OpServeNBD, Volumes: []string{"v"}, Listen: "unix:" + sock}); err != nil {
		t.Fatal(err)
	}
	old := dialNBD(t, sock, "v")
	if old.size != 4<<20 || old.read(t, 0, 4096) != 0 {
		t.Fatalf("precondition: size %d", old.size)
	}
	if _, err := h.Resize("v", 8<<20); err != nil {
		t.Fatal(err)
	}
	if e := old.read(t, 6<<20, 4096); e != 22 {
		t.Fatalf("read past the old end on the old connection: NBD error %d, want EINVAL (22)", e)
	}
	if e := old.read(t, 4<<20-4096, 4096); e != 0 {
		t.Fatalf("read below the old end on the old connection: NBD error %d", e)
	}
	nw := dialNBD(t, sock, "v")
	if nw.size != 8<<20 || nw.read(t, 6<<20, 4096) != 0 {
		t.Fatalf("a new connection: size %d", nw.size)
	}
}
