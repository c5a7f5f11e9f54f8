package main

// The clones bench, ublk half (the NBD half is tests/bench/clones.go).
//
//	guest clonesbench [ROUNDS SECONDS [N...]]
//	        one golden volume (64 MiB, half-compressible, imported and
//	        snapshotted with the obdvol CLI) and max(N) clones of its
//	        snapshot (obdvol create cK --from golden@g). A measurement of
//	        N starts a fresh obdvol daemon, activates c0..c(N-1) through it
//	        with obdvol activate --queues 1 (one queue thread per device
//	        keeps the VM's thread count sane), checks that every device is
//	        a block device served by that daemon, warms the shared chunk
//	        cache with one sequential pass over c0, then keeps 64 4K
//	        O_DIRECT random reads in flight for SECONDS, request j going
//	        to device j%N (the same client load for every N: only the
//	        number of distinct devices behind it changes). It takes the
//	        aggregate IOPS and the daemon's VmRSS (and its RssAnon,
//	        RssFile, Threads: /proc/PID/status) after the reads,
//	        deactivates every clone (each device must be gone) and stops
//	        the daemon (SIGTERM).
//	        The N run in interleaved rounds (1, max, the others: the
//	        smallest and the largest N next to each other in every round);
//	        the medians with min-max and the targets are printed:
//	        RSS(64) <= 1.5 x RSS(1) + 64 x 2 MiB, IOPS(64) >= 0.8 x IOPS(1).
//	        TCG figures: the emulator, not the kernel, bounds the IOPS.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/obdvol/obdvol/daemon"
)

const (
	cbRoot     = "/tmp/cb"
	cbObdvol   = "/bin/obdvol"
	cbSize     = 64 << 20
	cbInFlight = 64                   // total 4K reads in flight, for every N
	cbImage    = "/tmp/cb-golden.raw" // the golden's bytes (tmpfs), kept for the loop control
)

// cbLoop is the control measurement: the same client load over n loop
// devices bound read-only to one raw file holding the golden's bytes (the
// kernel's own block driver sharing one page cache, as the clones share
// one chunk cache). What loop(N)/loop(1) loses is what this VM loses by
// spreading the same reads over N devices, whatever serves them.
func cbLoop(n int, dur time.Duration) (float64, error) {
	img, err := os.Open(cbImage)
	if err != nil {
		return 0, err
	}
	defer img.Close()
	devs := make([]string, n)
	for k := range devs {
		dev, detach, err := attachLoop(img)
		if err != nil {
			return 0, fmt.Errorf("loop %d of %d: %w", k+1, n, err)
		}
		defer detach()
		if fi, err := os.Stat(dev); err != nil || fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
			return 0, fmt.Errorf("%q is not a block device (%v)", dev, err)
		}
		devs[k] = dev
	}
	if err := cbWarm(devs[0]); err != nil {
		return 0, err
	}
	if _, err := randReadDevs(devs, cbSize/4096, cbInFlight, dur); err != nil {
		return 0, err
	}
	return randReadDevs(devs, cbSize/4096, cbInFlight, dur)
}

// cbCLI runs obdvol on the bench's root and returns its standard output.
func cbCLI(args ...string) ([]byte, error) {
	cmd := exec.Command(cbObdvol, append([]string{"--root", cbRoot, "--no-progress"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("obdvol %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// cbGolden writes the golden's content (each 4K block: half random, half
// text, as the host benches) and makes the golden, its snapshot and maxN
// clones of it.
func cbGolden(maxN int) error {
	if err := os.MkdirAll(cbRoot, 0o700); err != nil {
		return err
	}
	f, err := os.Create(cbImage)
	if err != nil {
		return err
	}
	r := rand.New(rand.NewSource(42))
	buf := make([]byte, 1<<20)
	for off := 0; off < cbSize; off += len(buf) {
		for b := 0; b < len(buf); b += 4096 {
			r.Read(buf[b : b+2048])
			for i := 2048; i < 4096; i++ {
				buf[b+i] = "obdvol half-compressible text "[i%30]
			}
		}
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	steps := [][]string{{"create", "golden", "--size", strconv.Itoa(cbSize)}, {"import", "golden", cbImage}, {"snapshot", "golden@g"}}
	for k := 0; k < maxN; k++ {
		steps = append(steps, []string{"create", fmt.Sprintf("c%d", k), "--from", "golden@g"})
	}
	for _, s := range steps {
		if _, err := cbCLI(s...); err != nil {
			return err
		}
	}
	return nil
}

type cbResult struct {
	iops, warmIOPS        float64
	rss, rssAnon, rssFile float64 // MiB (VmRSS, RssAnon, RssFile)
	anonHuge              float64 // MiB (AnonHugePages: THP)
	threads               float64
	setup, teardown       time.Duration
}

// cbMeasure is one measurement of n clones (see the file's comment).
func cbMeasure(n int, dur time.Duration) (res cbResult, err error) {
	t0 := time.Now()
	d := exec.Command(cbObdvol, "--root", cbRoot, "--no-progress", "daemon")
	var log bytes.Buffer
	d.Stdout, d.Stderr = &log, &log
	if err := d.Start(); err != nil {
		return res, err
	}
	exited := make(chan error, 1)
	go func() { exited <- d.Wait() }()
	pid := d.Process.Pid
	stopped := false
	defer func() {
		if !stopped {
			d.Process.Kill()
			<-exited
		}
		if err != nil {
			err = fmt.Errorf("clones n=%d: %w\ndaemon log:\n%s", n, err, log.String())
		}
	}()
	if err := cbWaitDaemon(exited); err != nil {
		return res, err
	}
	devs := make([]string, n)
	for k := 0; k < n; k++ {
		vol := fmt.Sprintf("c%d", k)
		out, err := cbCLI("--json", "activate", vol, "--queues", "1", "--persistent=false")
		if err != nil {
			return res, err
		}
		var a struct {
			Device string `json:"device"`
			PID    int    `json:"pid"`
		}
		if err := json.Unmarshal(out, &a); err != nil {
			return res, fmt.Errorf("activate %s answered %q: %w", vol, out, err)
		}
		if a.PID != pid {
			// Had our daemon died, activate would have started a detached one.
			if a.PID > 0 {
				syscall.Kill(a.PID, syscall.SIGTERM)
			}
			return res, fmt.Errorf("activate %s was served by pid %d, not the bench's daemon (pid %d)", vol, a.PID, pid)
		}
		if fi, err := os.Stat(a.Device); err != nil || fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
			return res, fmt.Errorf("activate %s: %q is not a block device (%v)", vol, a.Device, err)
		}
		devs[k] = a.Device
	}
	if err := cbWarm(devs[0]); err != nil {
		return res, err
	}
	res.setup = time.Since(t0)
	// The same random reads once unmeasured: first touches (the
	// devices' I/O buffers, the workers) are not what is compared.
	if res.warmIOPS, err = randReadDevs(devs, cbSize/4096, cbInFlight, dur); err != nil {
		return res, err
	}
	if res.iops, err = randReadDevs(devs, cbSize/4096, cbInFlight, dur); err != nil {
		return res, err
	}
	for _, f := range []struct {
		name string
		v    *float64
		div  float64
	}{{"VmRSS", &res.rss, 1024}, {"RssAnon", &res.rssAnon, 1024}, {"RssFile", &res.rssFile, 1024}, {"Threads", &res.threads, 1}} {
		if *f.v, err = cbProcStatus(pid, f.name); err != nil {
			return res, err
		}
		*f.v /= f.div
	}
	if res.anonHuge, err = cbAnonHuge(pid); err != nil {
		return res, err
	}
	t1 := time.Now()
	for k := 0; k < n; k++ {
		if _, err := cbCLI("deactivate", fmt.Sprintf("c%d", k)); err != nil {
			return res, err
		}
		if _, err := os.Stat(devs[k]); !errors.Is(err, os.ErrNotExist) {
			return res, fmt.Errorf("c%d: %s still there after deactivate (%v)", k, devs[k], err)
		}
	}
	if err := d.Process.Signal(syscall.SIGTERM); err != nil {
		return res, err
	}
	select {
	case err := <-exited:
		stopped = true
		if err != nil {
			return res, fmt.Errorf("the daemon exited after SIGTERM with %v", err)
		}
	case <-time.After(60 * time.Second):
		return res, errors.New("the daemon did not exit within 60s of SIGTERM")
	}
	res.teardown = time.Since(t1)
	return res, nil
}

// cbWaitDaemon waits until the daemon answers on its control socket.
func cbWaitDaemon(exited <-chan error) error {
	c := &daemon.Client{Root: cbRoot}
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ok := c.Running(ctx)
		cancel()
		if ok {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("the daemon exited before it answered: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("the daemon did not answer within 60s")
		}
	}
}

// cbWarm reads dev once from start to end (1 MiB O_DIRECT reads): the
// golden's chunks enter the daemon's shared cache.
func cbWarm(dev string) error {
	f, err := openDirect(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := aligned(1 << 20)
	for off := int64(0); off < cbSize; off += int64(len(buf)) {
		if _, err := f.ReadAt(buf, off); err != nil {
			return fmt.Errorf("warm %s at %d: %w", dev, off, err)
		}
	}
	return nil
}

// cbAnonHuge is the daemon's anonymous memory in transparent huge pages
// (AnonHugePages of /proc/PID/smaps_rollup), in MiB.
func cbAnonHuge(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "AnonHugePages:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no AnonHugePages in /proc/%d/smaps_rollup", pid)
}

// cbProcStatus is a numeric field of /proc/PID/status (kB for sizes).
func cbProcStatus(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field+":" {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// randReadDevs keeps depth 4K O_DIRECT random reads in flight for dur,
// slot j always reading device j%len(paths) (Linux native AIO from one
// goroutine: a cheap client, so that the emulator's time goes to the
// devices under test), and returns the aggregate IOPS.
func randReadDevs(paths []string, blocks int64, depth int, dur time.Duration) (float64, error) {
	fds := make([]uint32, len(paths))
	for i, p := range paths {
		f, err := openDirect(p)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		fds[i] = uint32(f.Fd())
	}
	var ctx uintptr
	if _, _, e := unix.Syscall(unix.SYS_IO_SETUP, uintptr(depth), uintptr(unsafe.Pointer(&ctx)), 0); e != 0 {
		return 0, fmt.Errorf("io_setup: %w", e)
	}
	defer unix.Syscall(unix.SYS_IO_DESTROY, ctx, 0, 0)
	r := rand.New(rand.NewSource(1))
	bufs := aligned(depth * 4096)
	cbs := make([]iocb, depth)
	ptrs := make([]uintptr, depth)
	events := make([]ioEvent, depth)
	submit := func(idx []int) error {
		for i, n := range idx {
			cbs[n] = iocb{data: uint64(n), fd: fds[n%len(fds)], buf: uint64(uintptr(unsafe.Pointer(&bufs[n*4096]))),
				nbytes: 4096, offset: r.Int63n(blocks) * 4096}
			ptrs[i] = uintptr(unsafe.Pointer(&cbs[n]))
		}
		for done := 0; done < len(idx); {
			k, _, e := unix.Syscall(unix.SYS_IO_SUBMIT, ctx, uintptr(len(idx)-done), uintptr(unsafe.Pointer(&ptrs[done])))
			if e == unix.EINTR || e == unix.EAGAIN {
				continue
			}
			if e != 0 {
				return fmt.Errorf("io_submit: %w", e)
			}
			done += int(k)
		}
		return nil
	}
	all := make([]int, depth)
	for i := range all {
		all[i] = i
	}
	start := time.Now()
	deadline := start.Add(dur)
	if err := submit(all); err != nil {
		return 0, err
	}
	ops, inflight := 0, depth
	again := make([]int, 0, depth)
	for inflight > 0 {
		n, _, e := unix.Syscall6(unix.SYS_IO_GETEVENTS, ctx, 1, uintptr(depth), uintptr(unsafe.Pointer(&events[0])), 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, fmt.Errorf("io_getevents: %w", e)
		}
		more := time.Now().Before(deadline)
		again = again[:0]
		for _, ev := range events[:n] {
			if ev.res != 4096 {
				return 0, fmt.Errorf("read on %s returned %d", paths[int(ev.data)%len(paths)], ev.res)
			}
			ops++
			if more {
				again = append(again, int(ev.data))
			} else {
				inflight--
			}
		}
		if err := submit(again); err != nil {
			return 0, err
		}
	}
	runtime.KeepAlive(cbs)
	runtime.KeepAlive(bufs)
	return float64(ops) / time.Since(start).Seconds(), nil
}

// cbSpread is a series' median and range.
func cbSpread(v []float64) (med, lo, hi float64) {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2], s[0], s[len(s)-1]
}

func clonesBenchCmd(args []string) error {
	rounds, secs := 5, 2.0
	ns := []int{1, 16, 64}
	var err error
	if len(args) > 0 {
		if rounds, err = strconv.Atoi(args[0]); err != nil || rounds < 1 {
			return fmt.Errorf("bad ROUNDS %q", args[0])
		}
	}
	if len(args) > 1 {
		if secs, err = strconv.ParseFloat(args[1], 64); err != nil || secs <= 0 {
			return fmt.Errorf("bad SECONDS %q", args[1])
		}
	}
	if len(args) > 2 {
		ns = ns[:0]
		for _, a := range args[2:] {
			n, err := strconv.Atoi(a)
			if err != nil || n < 1 || n > cbInFlight {
				return fmt.Errorf("bad N %q (1..%d)", a, cbInFlight)
			}
			ns = append(ns, n)
		}
	}
	sort.Ints(ns)
	minN, maxN := ns[0], ns[len(ns)-1]
	order := append([]int{minN}, ns[1:]...) // smallest, largest, the others
	if len(ns) > 2 {
		order = append([]int{minN, maxN}, ns[1:len(ns)-1]...)
	}
	dur := time.Duration(secs * float64(time.Second))
	fmt.Printf("clones-bench: %d clones of one %d MiB golden, N=%v activated at once through one obdvol daemon (fresh for each measurement, default --cache-size) with activate --queues 1; 4K O_DIRECT random reads, %d in flight over the N devices, %.1fs a measurement, %d interleaved rounds (order %v) [TCG]\n",
		maxN, cbSize>>20, ns, cbInFlight, secs, rounds, order)
	t0 := time.Now()
	if err := cbGolden(maxN); err != nil {
		return err
	}
	fmt.Printf("clones-bench: golden, snapshot and %d clones made in %v\n", maxN, time.Since(t0).Round(time.Second))
	res := map[int][]cbResult{}
	loops := map[int][]float64{}
	for i := 0; i < rounds; i++ {
		if minN != maxN {
			for _, n := range []int{minN, maxN} {
				iops, err := cbLoop(n, dur)
				if err != nil {
					return fmt.Errorf("loop control: %w", err)
				}
				loops[n] = append(loops[n], iops)
			}
			fmt.Printf("clones-bench: round %d control: loop N=%d %.0f IOPS, N=%d %.0f IOPS (%.2fx)\n",
				i+1, minN, loops[minN][i], maxN, loops[maxN][i], loops[maxN][i]/loops[minN][i])
		}
		for _, n := range order {
			r, err := cbMeasure(n, dur)
			if err != nil {
				return err
			}
			res[n] = append(res[n], r)
			fmt.Printf("clones-bench: round %d N=%d: %.0f IOPS (warm-up pass %.0f), daemon VmRSS %.1f MiB (RssAnon %.1f of which THP %.1f, RssFile %.1f), %.0f threads; setup %v, teardown %v\n",
				i+1, n, r.iops, r.warmIOPS, r.rss, r.rssAnon, r.anonHuge, r.rssFile, r.threads, r.setup.Round(100*time.Millisecond), r.teardown.Round(100*time.Millisecond))
		}
	}
	col := func(n int, f func(cbResult) float64) []float64 {
		var v []float64
		for _, r := range res[n] {
			v = append(v, f(r))
		}
		return v
	}
	for _, n := range ns {
		im, il, ih := cbSpread(col(n, func(r cbResult) float64 { return r.iops }))
		rm, rl, rh := cbSpread(col(n, func(r cbResult) float64 { return r.rss }))
		am, al, ah := cbSpread(col(n, func(r cbResult) float64 { return r.rssAnon }))
		hm, _, _ := cbSpread(col(n, func(r cbResult) float64 { return r.anonHuge }))
		fm, fl, fh := cbSpread(col(n, func(r cbResult) float64 { return r.rssFile }))
		tm, _, _ := cbSpread(col(n, func(r cbResult) float64 { return r.threads }))
		fmt.Printf("clones-bench: N=%d: %.0f IOPS (min %.0f, max %.0f); daemon VmRSS %.1f MiB (min %.1f, max %.1f): RssAnon %.1f (%.1f-%.1f; THP %.1f), RssFile %.1f (%.1f-%.1f); %.0f threads [TCG]\n",
			n, im, il, ih, rm, rl, rh, am, al, ah, hm, fm, fl, fh, tm)
	}
	if minN == maxN {
		return nil
	}
	// Ratios per round: N=minN and N=maxN ran next to each other.
	var ratio, perDev []float64
	for i := range res[maxN] {
		ratio = append(ratio, res[maxN][i].iops/res[minN][i].iops)
		perDev = append(perDev, (res[maxN][i].rss-res[minN][i].rss)/float64(maxN-minN))
	}
	verdict := func(ok bool) string {
		if ok {
			return "PASS"
		}
		return "MISS"
	}
	qm, ql, qh := cbSpread(ratio)
	fmt.Printf("clones-bench: IOPS(%d)/IOPS(%d): median %.2fx (min %.2fx, max %.2fx) over %d interleaved rounds; target >= 0.80x: %s [TCG]\n",
		maxN, minN, qm, ql, qh, rounds, verdict(qm >= 0.8))
	var lratio, rel []float64
	for i := range loops[maxN] {
		lratio = append(lratio, loops[maxN][i]/loops[minN][i])
		rel = append(rel, ratio[i]/lratio[i])
	}
	lm, ll, lh := cbSpread(lratio)
	em, el, eh := cbSpread(rel)
	l1, _, _ := cbSpread(loops[minN])
	lN, _, _ := cbSpread(loops[maxN])
	fmt.Printf("clones-bench: control, loop devices over one raw file, same client: N=%d %.0f IOPS, N=%d %.0f IOPS; loop(%d)/loop(%d): median %.2fx (min %.2fx, max %.2fx) [TCG]\n",
		minN, l1, maxN, lN, maxN, minN, lm, ll, lh)
	fmt.Printf("clones-bench: ublk's ratio over the control's, round by round: median %.2f (min %.2f, max %.2f): what obdvol loses to N devices beyond what the kernel's loop driver loses in this VM [TCG]\n",
		em, el, eh)
	r1, _, _ := cbSpread(col(minN, func(r cbResult) float64 { return r.rss }))
	rN, rl, rh := cbSpread(col(maxN, func(r cbResult) float64 { return r.rss }))
	limit := 1.5*r1 + float64(maxN)*2
	fmt.Printf("clones-bench: RSS(%d) %.1f MiB (min %.1f, max %.1f); target <= 1.5 x RSS(%d) + %d x 2 MiB = %.1f MiB (medians): %s [TCG]\n",
		maxN, rN, rl, rh, minN, maxN, limit, verdict(rN <= limit))
	pm, pl, ph := cbSpread(perDev)
	fmt.Printf("clones-bench: daemon RSS a device past the first, (RSS(%d) - RSS(%d)) / %d: median %.2f MiB (min %.2f, max %.2f) [TCG]\n",
		maxN, minN, maxN-minN, pm, pl, ph)
	return nil
}
