package main

// The non-blocking ublk queues, checked and measured on the VM's kernel.
//
//	guest slowread          one queue, on a shared ring thread (RingGroup)
//	                        that also serves a second device, read too;
//	                        a backend read of one block sleeps
//	                        100 ms (and then holds until the other reads are
//	                        done, at most 3 s, so the check does not depend
//	                        on the emulator's speed); 128 O_DIRECT reads of
//	                        other blocks from 16 goroutines must all return
//	                        while that read is still in the backend
//	guest slowread-serial   the same with ublk.Options.Serial: printed only
//	                        (there, the other reads wait for the slow one)
//	guest resize            what the kernel's ublk driver offers for online
//	                        grow; where it can (6.16+), grows a live device,
//	                        then one with ext4 mounted (resize2fs online,
//	                        file intact, fsck clean); else checks that
//	                        Resize refuses with errors.ErrUnsupported
//	guest bench [ROUNDS SECONDS]
//	                        4K random reads, 32 in flight, 1 ms backend
//	                        delay: async queues vs Serial; then ublk vs a
//	                        loop device over the same raw file; interleaved
//	                        rounds, median ratio with min-max (TCG figures)

import (
	"bytes"
	crand "crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdvol/obdvol/device/ublk"
)

// memDisk is an in-memory backend: block i's first 8 bytes hold i. Reads
// may be delayed (every read, or one slow block's).
type memDisk struct {
	mu    sync.RWMutex
	data  []byte
	delay time.Duration // every read

	slowOff      int64 // -1: none
	slowMin      time.Duration
	slowMax      time.Duration
	slowStarted  chan struct{}
	release      chan struct{}
	slowReturned atomic.Bool
}

func newMemDisk(size int) *memDisk {
	m := &memDisk{data: make([]byte, size), slowOff: -1}
	for off := 0; off < size; off += 4096 {
		binary.LittleEndian.PutUint64(m.data[off:], uint64(off/4096))
	}
	return m
}

func (m *memDisk) ReadAt(p []byte, off int64) (int, error) {
	if m.delay > 0 {
		time.Sleep(m.delay)
	}
	if m.slowOff >= off && m.slowOff < off+int64(len(p)) {
		close(m.slowStarted)
		time.Sleep(m.slowMin)
		select {
		case <-m.release:
		case <-time.After(m.slowMax):
		}
		defer m.slowReturned.Store(true)
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off+int64(len(p)) > int64(len(m.data)) {
		return 0, fmt.Errorf("read beyond the end")
	}
	return copy(p, m.data[off:]), nil
}

func (m *memDisk) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off+int64(len(p)) > int64(len(m.data)) {
		return 0, fmt.Errorf("write beyond the end")
	}
	return copy(m.data[off:], p), nil
}

func (m *memDisk) Flush() error { return nil }
func (m *memDisk) Discard(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}
func (m *memDisk) WriteZeroes(off, n int64) error { return m.Discard(off, n) }
func (m *memDisk) Size() uint64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return uint64(len(m.data))
}

func (m *memDisk) grow(size int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := len(m.data)
	m.data = append(m.data, make([]byte, size-old)...)
	for off := old; off < size; off += 4096 {
		binary.LittleEndian.PutUint64(m.data[off:], uint64(off/4096))
	}
}

// fileDisk serves a raw file.
type fileDisk struct{ f *os.File }

func (d fileDisk) ReadAt(p []byte, off int64) (int, error)  { return d.f.ReadAt(p, off) }
func (d fileDisk) WriteAt(p []byte, off int64) (int, error) { return d.f.WriteAt(p, off) }
func (d fileDisk) Flush() error                             { return d.f.Sync() }
func (d fileDisk) Discard(off, n int64) error               { return nil }
func (d fileDisk) WriteZeroes(off, n int64) error {
	_, err := d.f.WriteAt(make([]byte, n), off)
	return err
}
func (d fileDisk) Size() uint64 {
	st, err := d.f.Stat()
	if err != nil {
		return 0
	}
	return uint64(st.Size())
}

func openDirect(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	for i := 0; err != nil && i < 100; i++ {
		time.Sleep(20 * time.Millisecond)
		f, err = os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	}
	return f, err
}

// readBlock reads block b with O_DIRECT and checks its number.
func readBlock(f *os.File, buf []byte, b int64) error {
	if _, err := f.ReadAt(buf, b*4096); err != nil {
		return fmt.Errorf("read block %d: %w", b, err)
	}
	if got := binary.LittleEndian.Uint64(buf); got != uint64(b) {
		return fmt.Errorf("block %d read back as block %d", b, got)
	}
	return nil
}

func slowReadTest(serial bool) error {
	const size, slowBlock = 64 << 20, 1000
	m := newMemDisk(size)
	m.slowOff, m.slowMin, m.slowMax = slowBlock*4096, 100*time.Millisecond, 3*time.Second
	m.slowStarted, m.release = make(chan struct{}), make(chan struct{})
	opts := ublk.Options{Queues: 1, Depth: 64, Serial: serial}
	var (
		rings *ublk.RingGroup
		d2    *ublk.Device
		f2    *os.File
	)
	if !serial {
		// The async queues run on a shared ring (as in the daemon),
		// served by the same thread as a second device's queue: the
		// slow read must hold back neither.
		rings = ublk.NewRings(1)
		opts.Rings = rings
		var err error
		if d2, err = ublk.Start(newMemDisk(size), opts); err != nil {
			return err
		}
		defer d2.Stop()
		if f2, err = openDirect(d2.Path); err != nil {
			return err
		}
		defer f2.Close()
	}
	d, err := ublk.Start(m, opts)
	if err != nil {
		return err
	}
	defer d.Stop()
	f, err := openDirect(d.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	slowErr := make(chan error, 1)
	var slowLat time.Duration
	go func() {
		t0 := time.Now()
		err := readBlock(f, aligned(4096), slowBlock)
		slowLat = time.Since(t0)
		slowErr <- err
	}()
	select {
	case <-m.slowStarted:
	case <-time.After(20 * time.Second):
		return fmt.Errorf("the slow read never reached the backend")
	}
	const readers, each = 16, 8
	var (
		wg          sync.WaitGroup
		mu          sync.Mutex
		lats        []time.Duration
		whilePend   atomic.Int32
		firstErr    error
		othersStart = time.Now()
	)
	for g := 0; g < readers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := aligned(4096)
			dev := f
			if f2 != nil && g%4 == 3 {
				dev = f2 // the other device on the slow one's ring
			}
			for i := 0; i < each; i++ {
				b := int64(2000 + 3*(g*each+i)) // away from the slow block, never adjacent
				t0 := time.Now()
				err := readBlock(dev, buf, b)
				lat := time.Since(t0)
				if !m.slowReturned.Load() {
					whilePend.Add(1)
				}
				mu.Lock()
				lats = append(lats, lat)
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	othersTook := time.Since(othersStart)
	close(m.release)
	if err := <-slowErr; err != nil {
		return err
	}
	if firstErr != nil {
		return firstErr
	}
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	mode := "async"
	if serial {
		mode = "serial"
	}
	fmt.Printf("ublkq: slowread %s: %d reads of other blocks took %v (latency median %v, max %v); "+
		"%d returned while the slow read was in the backend; the slow read took %v\n",
		mode, len(lats), othersTook.Round(time.Millisecond), lats[len(lats)/2].Round(time.Microsecond),
		lats[len(lats)-1].Round(time.Microsecond), whilePend.Load(), slowLat.Round(time.Millisecond))
	fmt.Printf("ublkq: slowread %s: %d of 1 queues wait in the netpoller\n", mode, d.PolledQueues())
	if !serial && d.PolledQueues() != 1 {
		return fmt.Errorf("the async queue waits in io_uring_enter: its ring's fd could not be polled")
	}
	if !serial && int(whilePend.Load()) != readers*each {
		return fmt.Errorf("only %d of %d reads of other blocks returned while the slow read was pending",
			whilePend.Load(), readers*each)
	}
	f.Close() // the kernel deletes the device once it is closed
	if err := d.Stop(); err != nil {
		return err
	}
	if rings == nil {
		return nil
	}
	f2.Close()
	if err := d2.Stop(); err != nil {
		return err
	}
	// Both queues left the ring thread (their tags aborted): it exits.
	closed := make(chan error, 1)
	go func() { closed <- rings.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			return err
		}
	case <-time.After(20 * time.Second):
		return fmt.Errorf("the ring thread did not exit after both devices stopped")
	}
	fmt.Printf("ublkq: slowread %s: two devices on one shared ring thread; it exited after both stopped\n", mode)
	return nil
}

// resizeTest reports whether this kernel can grow a live ublk device and
// checks that Resize does what the kernel allows.
func resizeTest() error {
	var u unix.Utsname
	unix.Uname(&u)
	feat, ferr := ublk.KernelFeatures()
	m := newMemDisk(16 << 20)
	d, err := ublk.Start(m, ublk.Options{Queues: 1, Depth: 16})
	if err != nil {
		return err
	}
	defer d.Stop()
	fmt.Printf("ublkq: resize: kernel %s: GET_FEATURES %#x (%v), UPDATE_SIZE offered: %v, device flags %#x, granted: %v\n",
		unix.ByteSliceToString(u.Release[:]), feat, ferr == nil, feat&ublk.FlagUpdateSize != 0, d.Flags(), d.CanResize())
	if ferr == nil && (feat&ublk.FlagUpdateSize != 0) != d.CanResize() {
		return fmt.Errorf("GET_FEATURES and the device's flags disagree about UPDATE_SIZE")
	}
	m.grow(32 << 20)
	err = d.Resize(32 << 20)
	if !d.CanResize() {
		if !errors.Is(err, errors.ErrUnsupported) {
			return fmt.Errorf("resize on a kernel without UPDATE_SIZE = %v, want ErrUnsupported", err)
		}
		if err := checkSectors(d, 16<<20); err != nil {
			return err
		}
		fmt.Println("ublkq: resize: Resize refused (ErrUnsupported), the device kept its size")
		return d.Stop()
	}
	if err != nil {
		return err
	}
	if err := checkSectors(d, 32<<20); err != nil {
		return err
	}
	f, err := openDirect(d.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := readBlock(f, aligned(4096), (32<<20)/4096-1); err != nil {
		return err
	}
	f.Close()
	fmt.Println("ublkq: resize: grew the live device to 32 MiB, its last block reads back")
	if err := growMountedExt4(d, m); err != nil {
		return err
	}
	return d.Stop()
}

func checkSectors(d *ublk.Device, size int) error {
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/ublkb%d/size", d.ID))
	if err != nil {
		return err
	}
	if s := string(b); s != strconv.Itoa(size>>9)+"\n" {
		return fmt.Errorf("after Resize the disk has %q sectors, want %d", s, size>>9)
	}
	return nil
}

// growMountedExt4 is what an LVM user does after lvextend: ext4 mounted
// on the device, the device grown under it, resize2fs online, the files
// intact and the filesystem clean.
func growMountedExt4(d *ublk.Device, m *memDisk) error {
	run := func(name string, args ...string) error {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %v: %w\n%s", name, args, err, out)
		}
		return nil
	}
	if err := run("/usr/local/bin/mke2fs", "-q", "-F", "-t", "ext4", d.Path); err != nil {
		return err
	}
	mnt := "/mnt/ublkq"
	os.MkdirAll(mnt, 0o755)
	if err := unix.Mount(d.Path, mnt, "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(mnt, 0)
		}
	}()
	data := make([]byte, 4<<20)
	crand.Read(data)
	if err := os.WriteFile(mnt+"/f", data, 0o644); err != nil {
		return err
	}
	unix.Sync()
	var before, after unix.Statfs_t
	if err := unix.Statfs(mnt, &before); err != nil {
		return err
	}
	m.grow(64 << 20)
	if err := d.Resize(64 << 20); err != nil {
		return err
	}
	if err := checkSectors(d, 64<<20); err != nil {
		return err
	}
	if err := run("/usr/local/bin/resize2fs", d.Path); err != nil {
		return err
	}
	if err := unix.Statfs(mnt, &after); err != nil {
		return err
	}
	if after.Blocks*uint64(after.Bsize)*10 < before.Blocks*uint64(before.Bsize)*18 { // 32 -> 64 MiB
		return fmt.Errorf("the mounted filesystem grew from %d to only %d blocks", before.Blocks, after.Blocks)
	}
	got, err := os.ReadFile(mnt + "/f")
	if err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("a file changed across the online grow")
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		return fmt.Errorf("umount: %w", err)
	}
	mounted = false
	if err := run("/usr/local/bin/e2fsck", "-fn", d.Path); err != nil {
		return err
	}
	fmt.Printf("ublkq: resize: ext4 mounted on the device grew online from %d to %d KiB (resize2fs), its file intact, fsck clean\n",
		before.Blocks*uint64(before.Bsize)>>10, after.Blocks*uint64(after.Bsize)>>10)
	return nil
}

// iocb is struct iocb (linux/aio_abi.h, 64 bytes on little-endian).
type iocb struct {
	data     uint64
	key      uint32
	rwFlags  uint32
	opcode   uint16
	reqprio  int16
	fd       uint32
	buf      uint64
	nbytes   uint64
	offset   int64
	reserved uint64
	flags    uint32
	resfd    uint32
}

// ioEvent is struct io_event (32 bytes).
type ioEvent struct {
	data, obj uint64
	res, res2 int64
}

// randRead keeps depth 4K O_DIRECT random reads in flight on path for dur
// (Linux native AIO from one goroutine: a cheap client, so that the
// emulator's time goes to the device under test) and returns the IOPS.
func randRead(path string, blocks int64, depth int, dur time.Duration) (float64, error) {
	return randReadDevs([]string{path}, blocks, depth, dur)
}

// interleave runs a and b in alternating rounds and prints each round and
// the median ratio a/b with its min-max.
func interleave(name string, rounds int, a, b func() (float64, error)) error {
	var ratios []float64
	for i := 0; i < rounds; i++ {
		x, err := a()
		if err != nil {
			return err
		}
		y, err := b()
		if err != nil {
			return err
		}
		ratios = append(ratios, x/y)
		fmt.Printf("ublkq-bench: %s round %d: %.0f vs %.0f IOPS (%.2fx)\n", name, i+1, x, y, x/y)
	}
	sort.Float64s(ratios)
	fmt.Printf("ublkq-bench: %s: median %.2fx (min %.2fx, max %.2fx) over %d interleaved rounds [TCG]\n",
		name, ratios[len(ratios)/2], ratios[0], ratios[len(ratios)-1], rounds)
	return nil
}

func benchCmd(args []string) error {
	rounds, secs := 5, 2.0
	if len(args) > 0 {
		rounds, _ = strconv.Atoi(args[0])
	}
	if len(args) > 1 {
		secs, _ = strconv.ParseFloat(args[1], 64)
	}
	dur := time.Duration(secs * float64(time.Second))
	const size = 64 << 20
	const blocks = size / 4096

	// Async queues vs Serial: one queue each, 1 ms per backend read.
	ma, ms := newMemDisk(size), newMemDisk(size)
	ma.delay, ms.delay = time.Millisecond, time.Millisecond
	da, err := ublk.Start(ma, ublk.Options{Queues: 1, Depth: 64})
	if err != nil {
		return err
	}
	defer da.Stop()
	ds, err := ublk.Start(ms, ublk.Options{Queues: 1, Depth: 64, Serial: true})
	if err != nil {
		return err
	}
	defer ds.Stop()
	if err := interleave("async/serial, 4K randread, 32 in flight, 1 ms backend delay, 1 queue", rounds,
		func() (float64, error) { return randRead(da.Path, blocks, 32, dur) },
		func() (float64, error) { return randRead(ds.Path, blocks, 32, dur) }); err != nil {
		return err
	}
	if err := da.Stop(); err != nil {
		return err
	}
	if err := ds.Stop(); err != nil {
		return err
	}

	// ublk vs loop over the same raw file (tmpfs).
	raw, err := os.OpenFile("/tmp/ublkq-raw", os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(raw.Name())
	defer raw.Close()
	chunk := make([]byte, 1<<20)
	for off := 0; off < size; off += len(chunk) {
		crand.Read(chunk)
		if _, err := raw.WriteAt(chunk, int64(off)); err != nil {
			return err
		}
	}
	du, err := ublk.Start(fileDisk{raw}, ublk.Options{Depth: 64})
	if err != nil {
		return err
	}
	defer du.Stop()
	loop, detach, err := attachLoop(raw)
	if err != nil {
		return err
	}
	defer detach()
	if err := interleave("ublk/loop, 4K randread, 32 in flight, same raw file on tmpfs", rounds,
		func() (float64, error) { return randRead(du.Path, blocks, 32, dur) },
		func() (float64, error) { return randRead(loop, blocks, 32, dur) }); err != nil {
		return err
	}
	return du.Stop()
}

// attachLoop binds a free loop device to f (the loop module is loaded).
func attachLoop(f *os.File) (string, func(), error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, err
	}
	defer ctl.Close()
	n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
	if err != nil {
		return "", nil, fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
	}
	path := fmt.Sprintf("/dev/loop%d", n)
	lf, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", nil, err
	}
	if err := unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_SET_FD, int(f.Fd())); err != nil {
		lf.Close()
		return "", nil, fmt.Errorf("LOOP_SET_FD: %w", err)
	}
	return path, func() {
		unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_CLR_FD, 0)
		lf.Close()
	}, nil
}
