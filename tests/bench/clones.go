package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/obdvol/obdvol/daemon"
)

// The clones bench measures the host daemon itself: a fresh root, one
// golden volume (half-compressible, imported and snapshotted with the
// CLI), 64 clones of its snapshot made with obdvol create --from. For
// each N (1, 16, 64) a measurement starts obdvol daemon --root R (a
// child of this bench), asks it with obdvol serve c0..c(N-1) --nbd
// unix:SOCK to export N clones on one listener, warms its chunk cache
// with one sequential pass over c0, and runs 4K random reads from NBD
// clients: 64 connections, one request in flight on each, connection j
// reading clone j%N, so the client load is the same for every N and only
// the number of distinct volumes behind it changes. It takes the
// aggregate IOPS and the daemon's VmRSS (/proc/PID/status) after the
// reads, then stops the daemon with SIGTERM and checks that it exited
// cleanly and that no daemon answers on the root any more. The three N
// run in interleaved rounds (rounds.go); the targets:
// RSS(64) <= 1.5 x RSS(1) + 64 x 2 MiB and IOPS(64) >= 0.8 x IOPS(1).

var (
	clonesMiB   = flag.Int("clones-size", 256, "golden volume size for the clones bench, MiB")
	clonesSecs  = flag.Float64("clones-seconds", 2, "seconds of random reads per measurement of the clones bench")
	clonesCache = flag.String("clones-cache", "256M", "the daemon's --cache-size in the clones bench (the daemon's default)")
)

// clonesConns is the client load of every measurement: connections, one
// request in flight on each.
const clonesConns = 64

func clonesBench(work, obdvol string) {
	size := uint64(*clonesMiB) << 20
	ns := []int{1, 64, 16} // circular order: N=1 and N=64 run next to each other in every round
	maxN := 64
	fmt.Printf("== %d clones of one %d MiB golden served by one obdvol daemon (--cache-size %s) over NBD on a unix socket: 4K random reads on %d connections (one in flight each), %.0fs a measurement; %s\n",
		maxN, size>>20, *clonesCache, clonesConns, *clonesSecs, roundsNote())
	root, err := filepath.Abs(filepath.Join(work, "clones")) // -dir may be relative
	check(err)
	check(os.MkdirAll(root, 0o700))
	img := filepath.Join(work, "clones-golden.raw")
	check(writeHalfCompressible(img, size))
	cli := func(args ...string) []byte { return obdvolCLI(obdvol, root, args...) }
	cli("create", "golden", "--size", fmt.Sprint(size))
	cli("import", "golden", img)
	check(os.Remove(img))
	cli("snapshot", "golden@g")
	for k := 0; k < maxN; k++ {
		cli("create", fmt.Sprintf("c%d", k), "--from", "golden@g")
	}

	iops := map[int]*series{}
	rss := map[int]*series{}
	file := map[int]*series{}
	var order []*series
	for _, n := range ns {
		name := fmt.Sprintf("N=%d", n)
		file[n] = &series{name: name, unit: "MiB of the RSS file-backed (RssFile)"}
		iops[n], rss[n] = measure2(name, "IOPS", name, "MiB daemon RSS (VmRSS)", func() (float64, float64) {
			i, r, f := clonesRound(obdvol, root, n, size)
			file[n].v = append(file[n].v, f)
			return i, r
		})
		order = append(order, iops[n])
	}
	interleave(order...)
	var all []*series
	for _, n := range []int{1, 16, 64} {
		all = append(all, iops[n], rss[n], file[n])
	}
	printSeries(all...)
	printRatio(iops[maxN], iops[1], atLeast(0.8))
	r1 := rss[1].spread().med
	limit := math.Round((1.5*r1+float64(maxN)*2)*10) / 10
	fmt.Printf("  RSS target: 1.5 x RSS(1) + %d x 2 MiB = %s MiB (medians)\n", maxN, num(limit))
	printValue(&series{name: fmt.Sprintf("RSS(%d)", maxN), unit: "MiB", v: rss[maxN].v}, atMost(limit))
	perClone := make([]float64, len(rss[1].v))
	for k := range perClone {
		perClone[k] = (rss[maxN].v[k] - rss[1].v[k]) / float64(maxN-1)
	}
	fmt.Printf("  daemon RSS a clone past the first, (RSS(%d) - RSS(1)) / %d: %s MiB (RSS(1) %s MiB)\n\n",
		maxN, maxN-1, spreadOf(perClone), num(r1))
	if daemonAnswers(root) {
		check(fmt.Errorf("an obdvol daemon still answers on %s after the clones bench", root))
	}
}

// obdvolCLI runs obdvol on root and returns its standard output; a
// failure ends the bench with its standard error.
func obdvolCLI(obdvol, root string, args ...string) []byte {
	cmd := exec.Command(obdvol, append([]string{"--root", root, "--no-progress"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		check(fmt.Errorf("obdvol %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes()))
	}
	return out
}

// daemonAnswers says whether an obdvol daemon answers on root's control
// socket.
func daemonAnswers(root string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return (&daemon.Client{Root: root}).Running(ctx)
}

// clonesRound starts a daemon on root, has it export clones c0..c(n-1),
// warms its chunk cache with one sequential pass over c0, runs the
// random reads and returns their IOPS and the daemon's RSS in MiB after
// them, all of it and its file-backed part (RssFile: mapped files such
// as the merged indexes, which the kernel can reclaim); it stops the
// daemon before it returns.
func clonesRound(obdvol, root string, n int, size uint64) (iops, rssMiB, fileMiB float64) {
	d := exec.Command(obdvol, "--root", root, "--no-progress", "daemon", "--cache-size", *clonesCache)
	var log bytes.Buffer
	d.Stdout, d.Stderr = &log, &log
	startServer(d) // dies with the bench
	exited := make(chan error, 1)
	go func() { exited <- d.Wait() }()
	stopped := false
	fail := func(err error) {
		if !stopped {
			d.Process.Kill()
			<-exited
		}
		check(fmt.Errorf("clones bench, N=%d: %w\ndaemon log:\n%s", n, err, log.String()))
	}
	if err := waitAnswer(root, exited); err != nil {
		fail(err)
	}

	sock := filepath.Join(root, "clones.sock")
	args := []string{"--json", "serve", "--read-only", "--nbd", "unix:" + sock}
	for k := 0; k < n; k++ {
		args = append(args, fmt.Sprintf("c%d", k))
	}
	var served struct {
		Serving []string `json:"serving"`
		PID     int      `json:"pid"`
	}
	check(json.Unmarshal(obdvolCLI(obdvol, root, args...), &served))
	if served.PID != d.Process.Pid || len(served.Serving) != n {
		// Had our daemon died, serve would have started a detached one.
		if served.PID > 0 && served.PID != d.Process.Pid {
			syscall.Kill(served.PID, syscall.SIGTERM)
		}
		fail(fmt.Errorf("serve answered %d exports from pid %d, want %d from the bench's daemon (pid %d)",
			len(served.Serving), served.PID, n, d.Process.Pid))
	}

	warm := dialClone(sock, "c0")
	if err := warm.readAll(size); err != nil {
		fail(err)
	}
	warm.close()
	var total atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(time.Duration(*clonesSecs * float64(time.Second)))
	start := time.Now()
	errs := make(chan error, clonesConns)
	for j := 0; j < clonesConns; j++ {
		c := dialClone(sock, fmt.Sprintf("c%d", j%n))
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.close()
			k, err := c.randomReads(size, 1, deadline, int64(j))
			total.Add(k)
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		fail(err)
	}
	rssMiB, fileMiB = procMiB(d.Process.Pid, "VmRSS"), procMiB(d.Process.Pid, "RssFile")

	// SIGTERM: flush every volume and exit 0; nothing may answer after.
	check(d.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			fail(fmt.Errorf("the daemon exited after SIGTERM with %v", err))
		}
	case <-time.After(30 * time.Second):
		fail(errors.New("the daemon did not exit within 30s of SIGTERM"))
	}
	if daemonAnswers(root) {
		fail(errors.New("a daemon still answers after the bench's daemon exited"))
	}
	return float64(total.Load()) / elapsed.Seconds(), rssMiB, fileMiB
}

// waitAnswer waits until the daemon answers on root's control socket, or
// fails when it exits first or takes over 30s.
func waitAnswer(root string, exited <-chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	for !daemonAnswers(root) {
		select {
		case err := <-exited:
			return fmt.Errorf("the daemon exited before it answered: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("the daemon did not answer within 30s")
		}
	}
	return nil
}

// procMiB is a field of /proc/PID/status given in kB (VmRSS, RssFile),
// in MiB.
func procMiB(pid int, field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	check(err)
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field+":" {
			kb, err := strconv.ParseFloat(f[1], 64)
			check(err)
			return kb / 1024
		}
	}
	check(fmt.Errorf("no %s in /proc/%d/status", field, pid))
	return 0
}

// nbdConn is a minimal NBD client: fixed newstyle, NBD_OPT_EXPORT_NAME,
// simple replies, reads only, pipelined.
type nbdConn struct {
	c    net.Conn
	r    *bufio.Reader
	w    *bufio.Writer
	size uint64
}

const (
	nbdMagic      = 0x4e42444d41474943
	nbdOptMagic   = 0x49484156454F5054
	nbdReqMagic   = 0x25609513
	nbdReplyMagic = 0x67446698
)

func dialClone(sock, export string) *nbdConn {
	c, err := net.Dial("unix", sock)
	check(err)
	cl := &nbdConn{c: c, r: bufio.NewReaderSize(c, 256<<10), w: bufio.NewWriter(c)}
	be := binary.BigEndian
	var h [18]byte
	_, err = io.ReadFull(cl.r, h[:])
	check(err)
	if be.Uint64(h[0:]) != nbdMagic || be.Uint64(h[8:]) != nbdOptMagic {
		check(errors.New("nbd: bad greeting"))
	}
	var b []byte
	b = be.AppendUint32(b, 1|2) // fixed newstyle, no zeroes
	b = be.AppendUint64(b, nbdOptMagic)
	b = be.AppendUint32(b, 1) // NBD_OPT_EXPORT_NAME
	b = be.AppendUint32(b, uint32(len(export)))
	b = append(b, export...)
	cl.w.Write(b)
	check(cl.w.Flush())
	var r [10]byte
	_, err = io.ReadFull(cl.r, r[:])
	check(err)
	cl.size = be.Uint64(r[:])
	return cl
}

func (cl *nbdConn) send(cookie, off uint64, n uint32) {
	var h [28]byte
	be := binary.BigEndian
	be.PutUint32(h[0:], nbdReqMagic)
	be.PutUint16(h[6:], 0) // NBD_CMD_READ
	be.PutUint64(h[8:], cookie)
	be.PutUint64(h[16:], off)
	be.PutUint32(h[24:], n)
	cl.w.Write(h[:])
}

// reply reads one reply of a read of n bytes into p.
func (cl *nbdConn) reply(p []byte) error {
	var h [16]byte
	if _, err := io.ReadFull(cl.r, h[:]); err != nil {
		return err
	}
	be := binary.BigEndian
	if be.Uint32(h[0:]) != nbdReplyMagic {
		return fmt.Errorf("nbd: bad reply magic %#x", be.Uint32(h[0:]))
	}
	if e := be.Uint32(h[4:]); e != 0 {
		return fmt.Errorf("nbd: read failed with errno %d", e)
	}
	_, err := io.ReadFull(cl.r, p)
	return err
}

// readAll reads the export sequentially in 1 MiB requests, 8 in flight.
func (cl *nbdConn) readAll(size uint64) error {
	const chunk = 1 << 20
	p := make([]byte, chunk)
	sent, got := uint64(0), uint64(0)
	for got < size {
		for sent < size && sent-got < 8*chunk {
			cl.send(sent, sent, chunk)
			sent += chunk
		}
		if err := cl.w.Flush(); err != nil {
			return err
		}
		if err := cl.reply(p); err != nil {
			return err
		}
		got += chunk
	}
	return nil
}

// randomReads keeps depth 4K reads at random offsets in flight until
// deadline and returns how many completed.
func (cl *nbdConn) randomReads(size uint64, depth int, deadline time.Time, seed int64) (int64, error) {
	r := rand.New(rand.NewSource(seed))
	blocks := int64(size / bs)
	p := make([]byte, bs)
	var done int64
	inFlight := 0
	for cookie := uint64(0); ; cookie++ {
		more := time.Now().Before(deadline)
		for more && inFlight < depth {
			cl.send(cookie, uint64(r.Int63n(blocks))*bs, bs)
			inFlight++
		}
		if inFlight == 0 {
			return done, nil
		}
		if err := cl.w.Flush(); err != nil {
			return done, err
		}
		if err := cl.reply(p); err != nil {
			return done, err
		}
		inFlight--
		done++
	}
}

func (cl *nbdConn) close() {
	var h [28]byte
	binary.BigEndian.PutUint32(h[0:], nbdReqMagic)
	binary.BigEndian.PutUint16(h[6:], 2) // NBD_CMD_DISC
	cl.c.SetDeadline(time.Now().Add(time.Second))
	cl.w.Write(h[:])
	cl.w.Flush()
	cl.c.Close()
}
