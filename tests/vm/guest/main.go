// Command guest runs inside the test VM: it reports, with marker lines on
// the serial console, what the ublk frontend does on a real kernel.
//
//	guest preflight   the ublk control device is usable
//	guest io          a volume served as /dev/ublkbN: O_DIRECT writes and
//	                  reads at many offsets and sizes, flushes and
//	                  discards, compared with an in-memory model
//	guest powercut    power cuts at every flush point (powercut.go)
//	guest slowread, slowread-serial, resize, bench
//	                  the non-blocking ublk queues and online grow
//	                  (ublkq.go)
//	guest clonesbench [ROUNDS SECONDS [N...]]
//	                  N clones of one golden served by one daemon
//	                  (clonesbench.go)
//	guest write DEV OFFSET SRC LENGTH [loop]
//	                  writes LENGTH bytes read from SRC to the block device
//	                  DEV at OFFSET and flushes; DEV is opened without
//	                  O_CREAT and must be a block device, so a write after
//	                  the device went away fails instead of creating a
//	                  file in /dev. With loop: again and again until a
//	                  write fails, then "writer stopped after N writes".
package main

import (
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/obdvol/obdvol/device/ublk"
	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/volume"
)

func main() {
	mode := "preflight"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	var err error
	switch mode {
	case "preflight":
		err = ublk.Preflight()
	case "io":
		err = ioTest()
	case "slowread":
		err = slowReadTest(false)
	case "slowread-serial":
		err = slowReadTest(true)
	case "resize":
		err = resizeTest()
	case "bench":
		err = benchCmd(os.Args[2:])
	case "clonesbench": // clonesbench.go
		err = clonesBenchCmd(os.Args[2:])
	case "powercut":
		err = powercutCmd(os.Args[2:])
		if err != nil {
			fmt.Printf("OBDVOL-VM-POWERCUT-FAIL %v\n", err)
			os.Exit(1)
		}
		return
	case "write":
		err = writeCmd(os.Args[2:])
		if err != nil {
			fmt.Fprintln(os.Stderr, "guest write:", err)
			os.Exit(1)
		}
		return
	}
	if err != nil {
		fmt.Printf("OBDVOL-VM-%s FAIL %v\n", mode, err)
		os.Exit(1)
	}
	fmt.Printf("OBDVOL-VM-%s OK\n", mode)
}

func aligned(n int) []byte {
	b := make([]byte, n+4096)
	off := (4096 - int(uintptr(unsafe.Pointer(&b[0]))&4095)) & 4095
	return b[off : off+n]
}

func ioTest() error {
	root := "/tmp/obdvol"
	os.MkdirAll(root, 0o700)
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		return err
	}
	st, err := repo.NewStore(root)
	if err != nil {
		return err
	}
	m := volume.NewManager(root, cat, repo.Blobs{Store: st}, volume.Options{CacheBytes: 16 << 20})
	const size = 32 << 20
	if _, err := m.Create("v", size, volume.CreateOptions{}); err != nil {
		return err
	}
	v, err := m.Open("v")
	if err != nil {
		return err
	}
	d, err := ublk.Start(v, ublk.Options{Queues: 2, Depth: 32})
	if err != nil {
		return err
	}
	fmt.Println("OBDVOL-VM-DEVICE", d.Path)
	f, err := os.OpenFile(d.Path, os.O_RDWR|unix.O_DIRECT, 0)
	for i := 0; err != nil && i < 100; i++ {
		time.Sleep(20 * time.Millisecond)
		f, err = os.OpenFile(d.Path, os.O_RDWR|unix.O_DIRECT, 0)
	}
	if err != nil {
		d.Stop()
		return err
	}
	model := make([]byte, size)
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 300; i++ {
		off := int64(r.Intn(size/4096)) * 4096
		n := min(int64(r.Intn(64)+1)*4096, size-off)
		switch r.Intn(10) {
		case 0:
			rng := [2]uint64{uint64(off), uint64(n)}
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKDISCARD, uintptr(unsafe.Pointer(&rng))); e != 0 {
				return fmt.Errorf("BLKDISCARD: %w", e)
			}
			clear(model[off : off+n])
		case 1:
			if err := f.Sync(); err != nil {
				return fmt.Errorf("fsync: %w", err)
			}
		default:
			p := aligned(int(n))
			r.Read(p)
			if _, err := f.WriteAt(p, off); err != nil {
				return fmt.Errorf("write at %d: %w", off, err)
			}
			copy(model[off:], p)
		}
		q := aligned(int(n))
		if _, err := f.ReadAt(q, off); err != nil {
			return fmt.Errorf("read at %d: %w", off, err)
		}
		if !bytes.Equal(q, model[off:off+n]) {
			return fmt.Errorf("step %d: read at %d+%d differs from the model", i, off, n)
		}
	}
	f.Close()
	if err := d.Stop(); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	all := make([]byte, size)
	if _, err := v.ReadAt(all, 0); err != nil {
		return err
	}
	if !bytes.Equal(all, model) {
		return fmt.Errorf("volume differs from the model after the device stopped")
	}
	return v.Close()
}

func writeCmd(args []string) error {
	if len(args) < 4 {
		return fmt.Errorf("usage: guest write DEV OFFSET SRC LENGTH [loop]")
	}
	off, err1 := strconv.ParseInt(args[1], 10, 64)
	n, err2 := strconv.ParseInt(args[3], 10, 64)
	if err1 != nil || err2 != nil || off < 0 || n <= 0 {
		return fmt.Errorf("bad offset %q or length %q", args[1], args[3])
	}
	loop := len(args) > 4 && args[4] == "loop"
	src, err := os.Open(args[2])
	if err != nil {
		return err
	}
	defer src.Close()
	buf := make([]byte, n)
	for i := 0; ; i++ {
		if _, err := io.ReadFull(src, buf); err != nil {
			return fmt.Errorf("read %s: %w", args[2], err)
		}
		err := writeDevice(args[0], off, buf)
		if err == nil && loop {
			continue
		}
		if loop {
			fmt.Printf("writer stopped after %d writes: %v\n", i, err)
			return nil
		}
		return err
	}
}

// writeDevice writes p at off to the block device dev and flushes it.
func writeDevice(dev string, off int64, p []byte) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0) // no O_CREAT
	if err != nil {
		return err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return fmt.Errorf("%s is not a block device", dev)
	}
	if _, err := f.WriteAt(p, off); err != nil {
		return err
	}
	return f.Sync()
}
