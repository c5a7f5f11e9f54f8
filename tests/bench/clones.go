package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/obdvol/obdvol/device/nbd"
	"github.com/obdvol/obdvol/internal/unixsock"
	"github.com/obdvol/obdvol/volume"
)

// The clones bench: N clones of one golden snapshot (N = 1, 16, 64)
// served at once by one process, over NBD on a unix socket, read by
// NBD clients (4K random reads: 64 connections, one request in flight
// on each, connection j reading clone j%N: the same load for every N).
// It prints the aggregate IOPS and the server's RSS per N, in interleaved
// rounds (1, 16, 64, 1, 16, 64, ...), and the targets:
// RSS(64) <= 1.5 x RSS(1) + 64 x 2 MiB and IOPS(64) >= 0.8 x IOPS(1).
//
// Until the host daemon serves many volumes, the server is this binary
// run again (clonesServerEnv set): it opens N clones in one
// volume.Manager (one chunk cache, one merged index for all) and serves
// them with device/nbd.

var (
	clonesMiB    = flag.Int("clones-size", 128, "golden snapshot size for the clones bench, MiB")
	clonesRounds = flag.Int("clones-rounds", 5, "interleaved rounds of the clones bench")
	clonesSecs   = flag.Float64("clones-seconds", 2, "seconds of random reads per N per round")
)

// clonesServerEnv, when set to "root,N,socket", makes this binary the
// clones server (see init).
const clonesServerEnv = "OBDVOL_BENCH_CLONES_SERVER"

const clonesCache = 256 << 20 // the daemon's default --cache-size

func init() {
	spec := os.Getenv(clonesServerEnv)
	if spec == "" {
		return
	}
	parts := strings.Split(spec, ",")
	if len(parts) != 3 {
		fmt.Fprintf(os.Stderr, "%s=%q: want root,N,socket\n", clonesServerEnv, spec)
		os.Exit(2)
	}
	n, err := strconv.Atoi(parts[1])
	check(err)
	clonesServer(parts[0], n, parts[2])
	os.Exit(0)
}

// clonesServer opens clones c0..c(n-1) under root in one Manager and
// serves them over NBD on sock until SIGTERM or SIGINT; it prints "ready"
// once listening.
func clonesServer(root string, n int, sock string) {
	e := newEnv(root, clonesCache)
	defer e.mgr.Close()
	exports := make([]nbd.Export, n)
	for i := range exports {
		name := fmt.Sprintf("c%d", i)
		v, err := e.mgr.Open(name)
		check(err)
		defer v.Close()
		exports[i] = nbd.Export{Name: name, Backend: v, ReadOnly: true}
	}
	l, err := unixsock.Listen(sock)
	check(err)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	fmt.Printf("ready %d chains\n", e.mgr.OpenChains())
	check(nbd.NewServer(exports).Serve(ctx, l))
}

func clonesBench(work string) {
	size := uint64(*clonesMiB) << 20
	ns := []int{1, 16, 64}
	fmt.Printf("== %d clones of one %d MiB golden served at once by one process (NBD, unix socket): 4K random reads on 64 connections (one in flight each), chunk cache %d MiB, %d interleaved rounds of %.0fs\n",
		ns[len(ns)-1], size>>20, clonesCache>>20, *clonesRounds, *clonesSecs)
	root := filepath.Join(work, "clones")
	e := newEnv(root, 32<<20)
	_, err := e.mgr.Create("golden", size, volume.CreateOptions{})
	check(err)
	v, err := e.mgr.Open("golden")
	check(err)
	r := rand.New(rand.NewSource(5))
	buf := make([]byte, 1<<20)
	text := strings.Repeat("obdvol clones bench ", bs/40)
	for off := uint64(0); off < size; off += uint64(len(buf)) {
		for b := 0; b < len(buf); b += bs {
			r.Read(buf[b : b+bs/2])
			copy(buf[b+bs/2:b+bs], text)
		}
		_, err := v.WriteAt(buf, int64(off))
		check(err)
	}
	_, err = v.Snapshot(context.Background(), "g")
	check(err)
	check(v.Close())
	for i := 0; i < ns[len(ns)-1]; i++ {
		_, err := e.mgr.Clone(fmt.Sprintf("c%d", i), "golden", "g")
		check(err)
	}
	check(e.mgr.Close())

	iops := map[int][]float64{}
	rss := map[int][]float64{}
	for round := 0; round < *clonesRounds; round++ {
		for _, n := range ns {
			i, m := clonesRound(root, n, size)
			iops[n] = append(iops[n], i)
			rss[n] = append(rss[n], m)
		}
	}
	for _, n := range ns {
		fmt.Printf("N=%-3d  %9.0f IOPS (min %.0f, max %.0f)   RSS %6.1f MiB (min %.1f, max %.1f)\n", n,
			median(iops[n]), slices.Min(iops[n]), slices.Max(iops[n]), median(rss[n]), slices.Min(rss[n]), slices.Max(rss[n]))
	}
	last := ns[len(ns)-1]
	rssLimit := 1.5*median(rss[1]) + float64(last)*2
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	fmt.Printf("RSS(%d) %.1f MiB <= 1.5 x RSS(1) + %d x 2 MiB = %.1f MiB: %s (%+.2f MiB a clone past the first)\n", last,
		median(rss[last]), last, rssLimit, verdict(median(rss[last]) <= rssLimit), (median(rss[last])-median(rss[1]))/float64(last-1))
	var ratios []float64
	for k := range iops[1] {
		ratios = append(ratios, iops[last][k]/iops[1][k])
	}
	fmt.Printf("IOPS(%d) / IOPS(1) = %.2f (per round min %.2f, max %.2f; target >= 0.8: %s)\n\n", last,
		median(ratios), slices.Min(ratios), slices.Max(ratios), verdict(median(ratios) >= 0.8))
}

func median(x []float64) float64 {
	s := slices.Clone(x)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// clonesRound starts a server for n clones, warms the chunk cache with
// one sequential pass over the golden (through c0), runs the random
// reads and returns their IOPS and the server's RSS in MiB after them.
func clonesRound(root string, n int, size uint64) (iops, rssMiB float64) {
	sock := filepath.Join(root, "clones.sock")
	self, err := os.Executable()
	check(err)
	srv := exec.Command(self)
	srv.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%s", clonesServerEnv, root, n, sock))
	srv.Stderr = os.Stderr
	out, err := srv.StdoutPipe()
	check(err)
	check(srv.Start())
	defer func() {
		srv.Process.Signal(syscall.SIGTERM)
		srv.Wait()
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready") {
		check(fmt.Errorf("clones server for N=%d: %q %v", n, line, err))
	}
	if line != "ready 1 chains\n" {
		check(fmt.Errorf("clones server for N=%d: %q: the clones do not share one chain", n, strings.TrimSpace(line)))
	}
	warm := dialClone(sock, "c0")
	check(warm.readAll(size))
	warm.close()

	// The same client load for every N: 64 connections, one request in
	// flight on each, connection j reading clone j%n. Only the number of
	// distinct volumes behind them changes.
	const conns, depth = 64, 1
	var total atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(time.Duration(*clonesSecs * float64(time.Second)))
	start := time.Now()
	errs := make(chan error, conns)
	for j := 0; j < conns; j++ {
		c := dialClone(sock, fmt.Sprintf("c%d", j%n))
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.close()
			k, err := c.randomReads(size, depth, deadline, int64(j))
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
		check(err)
	}
	return float64(total.Load()) / elapsed.Seconds(), vmRSS(srv.Process.Pid)
}

// vmRSS is a process's resident set in MiB (/proc/PID/status VmRSS).
func vmRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	check(err)
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			check(err)
			return kb / 1024
		}
	}
	check(errors.New("no VmRSS in /proc status"))
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
