package torture

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"
)

// op is one kind of random operation; do returns false when nothing is
// in a state it applies to.
type op struct {
	name   string
	weight int
	do     func(w *world) bool
}

var ops = []op{
	{"create", 6, (*world).opCreate},
	{"serve", 8, (*world).opServe},
	{"unserve", 4, (*world).opUnserve},
	{"write", 30, (*world).opWrite},
	{"flush", 8, (*world).opFlush},
	{"import", 4, (*world).opImport},
	{"read", 8, (*world).opRead},
	{"snapshot", 8, (*world).opSnapshot},
	{"clone", 4, (*world).opClone},
	{"rollback", 3, (*world).opRollback},
	{"delete-snap", 3, (*world).opDeleteSnap},
	{"delete-vol", 2, (*world).opDeleteVol},
	{"flatten", 3, (*world).opFlatten},
	{"resize", 3, (*world).opResize},
	{"gc", 5, (*world).opGC},
	{"push", 4, (*world).opPush},
	{"pull", 8, (*world).opPull},
	{"remote-push", 3, (*world).opRemotePush},
	{"offline-check", 2, (*world).opOffline},
	{"lazy-share", 3, (*world).opLazyShare},
	{"fill", 5, (*world).opFill},
	{"check", 3, (*world).opCheck},
	{"race", 3, (*world).opRace},
	{"journal-bitflip", 1, (*world).opJournalFlip},
	{"catalogue-corrupt", 1, (*world).opCatalogCorrupt},
	{"kill", 5, (*world).opKill},
	{"strace-kill", 5, (*world).opStraceKill},
	{"enospc", 2, (*world).opENOSPC},
	{"catalogue-stall", 1, (*world).opStall},
	{"socket-safety", 1, (*world).opSocket},
}

func (w *world) pickOp() {
	total := 0
	for _, o := range ops {
		total += o.weight
	}
	for try := 0; try < 20; try++ {
		r := w.rng.Intn(total)
		for _, o := range ops {
			if r < o.weight {
				if o.do(w) {
					return
				}
				break
			}
			r -= o.weight
		}
	}
}

var sizes = []int{64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20}

// lazyMax adds --lazy-cache-max to some commands: eviction after them.
func (w *world) lazyMax(args []string) []string {
	if w.rng.Intn(6) == 0 {
		return append([]string{"--lazy-cache-max", []string{"0", "4K", "64K", "1M"}[w.rng.Intn(4)]}, args...)
	}
	return args
}

func (w *world) opCreate() bool {
	if len(w.vols) >= w.maxVols {
		return false
	}
	name := w.name("v")
	size := sizes[w.rng.Intn(len(sizes))]
	bs := []int{4096, 4096, 4096, 512, 16384}[w.rng.Intn(5)]
	codec := []string{"zstd", "s2", "none"}[w.rng.Intn(3)]
	chunk := []string{"16K", "64K"}[w.rng.Intn(2)]
	w.logf("create %s size %d bs %d %s %s", name, size, bs, codec, chunk)
	p := w.run(w.lazyMax([]string{"create", name, "--size", fmt.Sprint(size), "--block-size", fmt.Sprint(bs), "--codec", codec, "--chunk-size", chunk})...)
	v := &vol{name: name, bs: bs, snaps: map[string]*snap{}}
	made := &state{data: make([]byte, size), why: "create"}
	if p.ok() {
		v.alts = []*state{made}
	} else {
		v.alts = []*state{{absent: true, why: "create failed"}, made}
		v.check = true
	}
	w.vols[name] = v
	return true
}

func (w *world) opServe() bool {
	v := w.pickVol(idle)
	if v == nil {
		return false
	}
	w.logf("serve %s", v.name)
	w.serve(v)
	return true
}

func (w *world) serve(v *vol) {
	sock := filepath.Join(w.dir, "s", v.name+".sock")
	os.Remove(sock)
	inject := ""
	if w.strace && w.rng.Intn(4) == 0 {
		// A failing disk: the Nth fdatasync of the server fails with EIO.
		inject = fmt.Sprintf("fdatasync:error=EIO:when=%d", 3+w.rng.Intn(8))
		w.logf("  serve %s with %s", v.name, inject)
	}
	p, err := w.start("obdvol serve "+v.name, inject, w.lazyMax([]string{"serve", "--foreground", v.name, "--nbd", "unix:" + sock})...)
	if err != nil {
		w.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if !p.running() {
			w.afterProc(p)
			w.logf("  serve %s -> %s", v.name, p.short())
			v.check = true
			return
		}
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			w.find("hang", "serve %s did not listen in 10s", v.name)
			w.kill9(p)
			<-p.done
			w.afterProc(p)
			v.check = true
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	if fi, err := os.Stat(sock); err == nil && fi.Mode().Perm()&0o077 != 0 {
		w.findOnce("socket-mode", "socket", "serve %s created its NBD socket with mode %v (umask 000): any local user can read and write the disk", v.name, fi.Mode().Perm())
	}
	c, err := dialNBD(sock, v.name, 10*time.Second)
	if err != nil {
		w.logf("  connect %s: %v", v.name, err)
		w.kill9(p)
		<-p.done
		w.afterProc(p)
		v.check = true
		return
	}
	data := v.alts[0].data
	v.srv = &server{p: p, sock: sock, nbd: c, durable: append([]byte(nil), data...), cur: append([]byte(nil), data...), eio: inject != ""}
	if int(c.size) != len(data) {
		w.find("data", "serve %s exports %d bytes, the volume has %d", v.name, c.size, len(data))
	}
	w.logf("  serving %s (pid %d)", v.name, p.cmd.Process.Pid)
}

// stopServer ends a server: SIGTERM (a clean stop: flush) or SIGKILL.
// The model then holds the states a check will choose from.
func (w *world) stopServer(v *vol, kill bool) {
	s := v.srv
	v.srv = nil
	s.nbd.close()
	if kill {
		w.kill9(s.p)
	} else {
		// Under strace, signal obdvol itself: strace would detach.
		pid := s.p.cmd.Process.Pid
		if s.eio {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)); err == nil {
				if f := strings.Fields(string(b)); len(f) > 0 {
					fmt.Sscan(f[0], &pid)
				}
			}
		}
		syscall.Kill(pid, syscall.SIGTERM)
	}
	w.wait(s.p, w.cmdTimeout)
	w.logf("  server %s -> %s", v.name, s.p.short())
	crashed := &state{data: s.durable, pending: s.pending, why: "kill of serve"}
	v.stale = !s.p.ok() || kill
	if s.p.ok() && !kill && s.flushFailed {
		w.findOnce("fsync-exit", "fsync", "serve %s exited 0 on SIGTERM (\"flush, exit\") after a flush had failed with EIO: its final flush claimed durability an earlier failed fdatasync may have lost", v.name)
	}
	if s.p.ok() && !kill {
		v.alts = []*state{{data: s.cur, pending: s.unsure, why: "clean stop of serve"}}
		if len(s.unsure) > 0 {
			v.check = true
		}
		return
	}
	v.alts = []*state{crashed}
	v.check = true
}

func (w *world) opUnserve() bool {
	v := w.pickVol(served)
	if v == nil {
		return false
	}
	w.logf("unserve %s", v.name)
	w.stopServer(v, false)
	return true
}

// nbdFailed handles an NBD error: the server is stopped and the volume
// checked; a timeout is a hang.
func (w *world) nbdFailed(v *vol, what string, err error) {
	w.logf("  nbd %s on %s: %v", what, v.name, err)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		w.find("hang", "nbd %s on %s: %v", what, v.name, err)
	}
	w.stopServer(v, true)
}

// opWrite sends a batch of writes, all in flight at once, with disjoint
// 512-byte sectors (a disk may not lose sector A because B was written),
// often several in one block, at any alignment.
func (w *world) opWrite() bool {
	v := w.pickVol(served)
	if v == nil {
		return false
	}
	s := v.srv
	size := int64(len(s.cur))
	k := 1 + w.rng.Intn(8)
	used := map[int64]bool{}
	var reqs []*nbdRequest
	var writes []write
	sameBlock := w.rng.Intn(2) == 0
	blk := w.rng.Int63n(size / int64(v.bs))
	for i := 0; i < k; i++ {
		var off, n int64
		if sameBlock && v.bs > 512 {
			sec := blk*int64(v.bs) + 512*w.rng.Int63n(int64(v.bs)/512)
			a, b := w.rng.Int63n(512), w.rng.Int63n(512)
			if a > b {
				a, b = b, a
			}
			off, n = sec+a, b-a+1
		} else {
			n = 1 + w.rng.Int63n([]int64{512, 4096, 3 * 4096, 64 << 10}[w.rng.Intn(4)])
			n = min(n, size)
			off = w.rng.Int63n(size - n + 1)
		}
		clash := false
		for sec := off / 512; sec <= (off+n-1)/512; sec++ {
			clash = clash || used[sec]
		}
		if clash {
			continue
		}
		for sec := off / 512; sec <= (off+n-1)/512; sec++ {
			used[sec] = true
		}
		data := make([]byte, n)
		q := &nbdRequest{typ: nbdCmdWrite, off: uint64(off), n: uint32(n), data: data}
		switch w.rng.Intn(8) {
		case 0:
			q.typ, q.data = nbdCmdWriteZeroes, nil
		case 1, 2:
			pat := []byte(fmt.Sprintf("step %d write %d ", w.step, i))
			for j := range data {
				data[j] = pat[j%len(pat)]
			}
		default:
			w.rng.Read(data)
		}
		reqs = append(reqs, q)
		writes = append(writes, write{off, data})
	}
	w.logf("write %s: %d writes in flight (%s)", v.name, len(reqs), describeWrites(writes))
	// Sent writes may land even if the batch fails.
	s.pending = append(s.pending, writes...)
	v.dirty = true
	if err := s.nbd.do(reqs, w.cmdTimeout); err != nil {
		s.unsure = append(s.unsure, writes...)
		w.nbdFailed(v, "write", err)
		return true
	}
	failed := 0
	for i, q := range reqs {
		if q.err != 0 {
			// A failed write may have landed in part.
			failed++
			s.unsure = append(s.unsure, writes[i])
			w.logf("  write %d+%d failed: errno %d", q.off, q.n, q.err)
		} else {
			apply(s.cur, writes[i])
		}
	}
	if failed > 0 {
		w.stopServer(v, false)
	}
	return true
}

// opImport writes a random range of a file into an idle volume.
func (w *world) opImport() bool {
	v := w.pickVol(idle)
	if v == nil {
		return false
	}
	old := v.alts[0].data
	size := int64(len(old))
	n := 1 + w.rng.Int63n(min(size, 256<<10))
	off := w.rng.Int63n(size - n + 1)
	if w.rng.Intn(2) == 0 {
		off -= off % int64(v.bs)
		n = min(n, size-off)
	}
	data := make([]byte, n)
	w.rng.Read(data)
	file := filepath.Join(w.dir, "import.bin")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		w.t.Fatal(err)
	}
	w.logf("import %s %d+%d", v.name, off, n)
	p := w.run(w.lazyMax([]string{"import", v.name, file, "--offset", fmt.Sprint(off)})...)
	next := &state{data: append([]byte(nil), old...), why: "import"}
	apply(next.data, write{off, data})
	v.dirty = true
	if p.ok() {
		v.alts = []*state{next}
		return true
	}
	v.alts = []*state{{data: old, pending: []write{{off, data}}, why: "failed import"}}
	v.check = true
	return true
}

func describeWrites(ws []write) string {
	var s []string
	for _, x := range ws {
		s = append(s, fmt.Sprintf("%d+%d", x.off, len(x.data)))
	}
	return strings.Join(s, " ")
}

func (w *world) opFlush() bool {
	v := w.pickVol(served)
	if v == nil {
		return false
	}
	w.logf("flush %s", v.name)
	q := &nbdRequest{typ: nbdCmdFlush}
	if err := v.srv.nbd.do([]*nbdRequest{q}, w.cmdTimeout); err != nil {
		w.nbdFailed(v, "flush", err)
		return true
	}
	if q.err != 0 {
		w.logf("  flush failed: errno %d", q.err)
		if v.srv.eio {
			v.srv.flushFailed = true // keep going: later flushes must fail too
			return true
		}
		w.stopServer(v, false)
		return true
	}
	if v.srv.flushFailed {
		w.findOnce("fsync-retry", "fsync", "flush of %s succeeded after an earlier flush failed (EIO injected on fdatasync): after a failed fdatasync the kernel may have dropped the dirty pages, so the volume must stay broken (fail-stop), not report a later flush as durable", v.name)
	}
	v.srv.durable = append(v.srv.durable[:0], v.srv.cur...)
	v.srv.pending = append([]write(nil), v.srv.unsure...)
	return true
}

// opRead reads back through the server: every acknowledged write must
// be there, crash or not.
func (w *world) opRead() bool {
	v := w.pickVol(served)
	if v == nil {
		return false
	}
	s := v.srv
	size := int64(len(s.cur))
	off, n := int64(0), size
	if w.rng.Intn(2) == 0 {
		n = 1 + w.rng.Int63n(min(size, 128<<10))
		off = w.rng.Int63n(size - n + 1)
	}
	w.logf("read %s %d+%d", v.name, off, n)
	q := &nbdRequest{typ: nbdCmdRead, off: uint64(off), n: uint32(n)}
	if err := s.nbd.do([]*nbdRequest{q}, w.cmdTimeout); err != nil {
		w.nbdFailed(v, "read", err)
		return true
	}
	if q.err != 0 {
		if s.eio && q.err == 5 {
			// Fail-stop: after the injected fdatasync EIO the volume
			// refuses all I/O until it is reopened. Not a finding; the
			// server is killed and its unflushed writes become unsure.
			w.logf("  read failed: errno 5 (fail-stop after the injected EIO)")
			s.flushFailed = true
			w.stopServer(v, true)
			return true
		}
		w.find("unreadable", "read %d+%d of served volume %s failed: errno %d", off, n, v.name, q.err)
		w.stopServer(v, true)
		return true
	}
	if i := firstDiff(q.data, s.cur[off:off+n]); i >= 0 {
		w.find("data", "served volume %s: read %d+%d after acknowledged writes: %s", v.name, off, n, describeDiff(q.data, s.cur[off:off+n], i, off))
		// Take what the server returns, so that the defect is reported once.
		copy(s.cur[off:], q.data)
		copy(s.durable[off:], q.data)
	}
	return true
}

func (w *world) opSnapshot() bool {
	v := w.pickVol(func(v *vol) bool { return served(v) || idle(v) })
	if v == nil {
		return false
	}
	n := w.name("s")
	w.logf("snapshot %s@%s (served %v)", v.name, n, v.srv != nil)
	data := append([]byte(nil), v.content()...)
	p := w.run(w.lazyMax([]string{"snapshot", v.name + "@" + n})...)
	sn := &snap{seq: w.next}
	v.snaps[n] = sn
	made := &state{data: data, why: "snapshot"}
	if p.ok() {
		v.dirty = false
		sn.alts = []*state{made}
		if v.srv != nil {
			v.srv.durable = append(v.srv.durable[:0], v.srv.cur...)
			v.srv.pending = nil
		}
		return true
	}
	sn.alts = []*state{{absent: true, why: "snapshot failed"}, made}
	sn.late = true
	if v.srv == nil {
		v.check = true
	}
	return true
}

// pickSnap picks a volume (not busy with a background command) and one of
// its snapshots whose content is certain.
func (w *world) pickSnap(f func(*vol) bool) (*vol, string) {
	v := w.pickVol(func(v *vol) bool {
		return f(v) && len(v.sortedSnaps(known)) > 0
	})
	if v == nil {
		return nil, ""
	}
	ss := v.sortedSnaps(known)
	return v, ss[w.rng.Intn(len(ss))]
}

func (w *world) opClone() bool {
	if len(w.vols) >= w.maxVols {
		return false
	}
	src, sn := w.pickSnap(func(v *vol) bool { return true })
	if src == nil {
		return false
	}
	name := w.name("v")
	w.logf("clone %s from %s@%s", name, src.name, sn)
	data := src.snaps[sn].alts[0].data
	p := w.run(w.lazyMax([]string{"create", name, "--from", src.name + "@" + sn})...)
	v := &vol{name: name, bs: src.bs, snaps: map[string]*snap{}, lazy: src.lazy}
	made := &state{data: append([]byte(nil), data...), why: "clone"}
	if p.ok() {
		v.alts = []*state{made}
	} else {
		v.alts = []*state{{absent: true, why: "clone failed"}, made}
		v.check = true
	}
	w.vols[name] = v
	return true
}

func (w *world) opRollback() bool {
	v, sn := w.pickSnap(idle)
	if v == nil {
		return false
	}
	force := w.rng.Intn(2) == 0
	w.logf("rollback %s@%s force %v", v.name, sn, force)
	args := []string{"rollback", v.name + "@" + sn}
	if force {
		args = append(args, "--force")
	}
	target := &state{data: append([]byte(nil), v.snaps[sn].alts[0].data...), why: "rollback"}
	seq := v.snaps[sn].seq
	p := w.run(w.lazyMax(args)...)
	if p.ok() {
		v.alts = []*state{target}
		for n, s := range v.snaps {
			if s.seq > seq {
				delete(v.snaps, n)
			}
		}
		return true
	}
	v.alts = append(v.alts, target)
	for _, n := range v.sortedSnaps(nil) {
		if s := v.snaps[n]; s.seq > seq {
			s.alts = append(s.alts, &state{absent: true, why: "rollback --force"})
		}
	}
	v.check = true
	return true
}

func (w *world) opDeleteSnap() bool {
	v, sn := w.pickSnap(func(v *vol) bool { return v.busy == nil })
	if v == nil {
		return false
	}
	args := []string{"delete", v.name + "@" + sn}
	if w.rng.Intn(2) == 0 {
		args = append(args, "--force")
	}
	w.logf("delete %s@%s", v.name, sn)
	p := w.run(w.lazyMax(args)...)
	if p.ok() {
		delete(v.snaps, sn)
		return true
	}
	v.snaps[sn].alts = append(v.snaps[sn].alts, &state{absent: true, why: "delete snapshot failed"})
	if v.srv == nil {
		v.check = true
	}
	return true
}

func (w *world) opDeleteVol() bool {
	v := w.pickVol(idle)
	if v == nil || len(w.vols) < 3 {
		return false
	}
	args := []string{"delete", v.name}
	if w.rng.Intn(2) == 0 {
		args = append(args, "--force")
	}
	w.logf("delete %s", v.name)
	p := w.run(w.lazyMax(args)...)
	if p.ok() {
		w.dropVol(v)
		return true
	}
	v.alts = append(v.alts, &state{absent: true, why: "delete failed"})
	v.check = true
	return true
}

func (w *world) opFlatten() bool {
	v := w.pickVol(idle)
	if v == nil {
		return false
	}
	w.logf("flatten %s", v.name)
	if p := w.run(w.lazyMax([]string{"flatten", v.name})...); !p.ok() {
		v.check = true
	}
	return true
}

func (w *world) opResize() bool {
	v := w.pickVol(idle)
	if w.inject != "" {
		// A kill needs a resize that runs: not one refused because a
		// killed server left the volume marked active.
		v = w.pickVol(func(v *vol) bool { return idle(v) && !v.stale && v.dirty })
		if v == nil {
			v = w.pickVol(func(v *vol) bool { return idle(v) && !v.stale })
		}
	}
	if v == nil {
		return false
	}
	old := v.alts[0].data
	size := sizes[w.rng.Intn(len(sizes))]
	if w.rng.Intn(3) == 0 {
		size = len(old) + v.bs*(1+w.rng.Intn(4))*[]int{1, -1}[w.rng.Intn(2)]
	}
	if w.inject != "" && w.rng.Intn(3) > 0 {
		// A shrink killed before its commit must keep the data past the new
		// end: cut below the last byte that is not zero.
		last := len(old) - 1
		for last >= 0 && old[last] == 0 {
			last--
		}
		if last >= v.bs {
			size = v.bs * (1 + w.rng.Intn(last/v.bs))
		}
	}
	if size <= 0 || size%v.bs != 0 {
		return false
	}
	args := []string{"resize", v.name, fmt.Sprint(size)}
	if size < len(old) {
		args = append(args, "--shrink")
	}
	w.logf("resize %s %d -> %d", v.name, len(old), size)
	data := make([]byte, size)
	copy(data, old)
	p := w.run(w.lazyMax(args)...)
	next := &state{data: data, why: "resize"}
	if p.ok() {
		v.alts = []*state{next}
		return true
	}
	v.alts = append(v.alts, next)
	v.check = true
	return true
}

// opGC runs gc, often in the background while other commands run, with
// or without eviction of lazily fetched data.
func (w *world) opGC() bool {
	args := []string{"gc"}
	if w.rng.Intn(2) == 0 {
		args = append(args, "--cache-max", []string{"0", "4K", "64K", "1M"}[w.rng.Intn(4)])
	}
	w.logf("gc %v", args[1:])
	if w.rng.Intn(3) > 0 {
		w.background(strings.Join(args, " "), nil, args...)
		return true
	}
	w.run(args...)
	return true
}

// background starts a command and returns at once; done (may be nil)
// applies its result when the driver reaps it. Some are killed at a
// random moment.
func (w *world) background(desc string, done func(p *proc), args ...string) *proc {
	p, err := w.start("obdvol "+strings.Join(args, " "), "", args...)
	if err != nil {
		w.t.Fatal(err)
	}
	p.onDone = done
	w.logf("  started %s (pid %d)", desc, p.cmd.Process.Pid)
	if w.rng.Intn(5) == 0 {
		d := time.Duration(w.rng.Intn(200)) * time.Millisecond
		w.logf("  will kill pid %d after %v", p.cmd.Process.Pid, d)
		go func() {
			select {
			case <-p.done:
			case <-time.After(d):
				syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			}
		}()
	}
	return p
}

// reap applies the results of finished background commands, in start order.
func (w *world) reap(block bool) {
	var bg []*proc
	for _, p := range w.procs {
		if strings.HasPrefix(p.desc, "obdvol serve") {
			continue
		}
		bg = append(bg, p)
	}
	sort.Slice(bg, func(i, j int) bool { return bg[i].id < bg[j].id })
	for _, p := range bg {
		if block {
			w.wait(p, w.cmdTimeout)
		} else if p.running() {
			continue
		} else {
			w.afterProc(p)
		}
		w.logf("  reaped %s -> %s", p.desc, p.short())
		if p.onDone != nil {
			p.onDone(p)
		}
	}
}

func (w *world) opPush() bool {
	v, sn := w.pickSnap(func(v *vol) bool { return true })
	if v == nil {
		return false
	}
	t := w.name("t")
	ref := fmt.Sprintf("%s/torture/r:%s", w.reg.Addr, t)
	tg := &tag{data: append([]byte(nil), v.snaps[sn].alts[0].data...), bs: v.bs, snap: sn}
	w.tags[t] = tg
	// Sometimes in chunks (a session recorded under --root/uploads, which
	// a killed push leaves for the next one, and gc removes) or in parts.
	args := []string{"push", v.name + "@" + sn, ref, "--plain-http"}
	switch w.rng.Intn(4) {
	case 0:
		args = append(args, "--chunk-size", []string{"64K", "256K"}[w.rng.Intn(2)])
	case 1:
		args = append(args, "--max-blob", "64K")
	}
	w.logf("%s as %s", strings.Join(args, " "), t)
	w.background("push", func(p *proc) { tg.pushed = p.ok() }, args...)
	return true
}

func (w *world) opPull() bool {
	if len(w.vols) >= w.maxVols || len(w.tags) == 0 {
		return false
	}
	var ts []string
	for t := range w.tags {
		ts = append(ts, t)
	}
	sort.Strings(ts)
	t := ts[w.rng.Intn(len(ts))]
	var pushed []string
	for _, x := range ts {
		if w.tags[x].pushed {
			pushed = append(pushed, x)
		}
	}
	if len(pushed) > 0 && w.rng.Intn(5) > 0 {
		t = pushed[w.rng.Intn(len(pushed))]
	}
	tg := w.tags[t]
	name := w.name("v")
	args := []string{"pull", fmt.Sprintf("%s/torture/r:%s", w.reg.Addr, t), name, "--plain-http"}
	lazy := w.rng.Intn(2) == 0
	if lazy {
		args = append(args, "--lazy", "--fill=false")
		if w.rng.Intn(3) == 0 {
			args = append(args, "--wait")
		}
	}
	args = w.lazyMax(args)
	w.logf("pull %s into %s (lazy %v, pushed %v)", t, name, lazy, tg.pushed)
	v := &vol{name: name, bs: tg.bs, snaps: map[string]*snap{}, lazy: lazy}
	made := &state{data: append([]byte(nil), tg.data...), why: "pull"}
	v.alts = []*state{{absent: true, why: "pull failed"}, made}
	v.check = true
	w.vols[name] = v
	done := func(p *proc) {
		v.busy = nil
		if p.ok() {
			v.lazy = lazy && !slices.Contains(args, "--wait")
			v.alts = []*state{made}
			v.snaps[tg.snap] = &snap{seq: w.next, alts: []*state{{data: made.data, why: "pull"}}}
			v.check = false
			v.bs = tg.bs
			return
		}
		if tg.pushed && !p.killed && w.enospc == 0 {
			w.logf("  note: pull of a pushed tag failed: %s", p.short())
		}
		v.snaps[tg.snap] = &snap{seq: w.next, alts: []*state{{absent: true, why: "pull failed"}, {data: made.data, why: "pull"}}}
	}
	if w.rng.Intn(2) == 0 {
		p := w.run(args...)
		done(p)
		return true
	}
	if w.rng.Intn(2) == 0 && w.strace {
		// Slow the pull after each rename (a blob entering the store) while
		// gc runs: gc may not take the blobs of a pull in flight.
		inject := "renameat,renameat2:delay_exit=300000"
		p, err := w.start("obdvol "+strings.Join(args, " ")+" [slow renames]", inject, args...)
		if err != nil {
			w.t.Fatal(err)
		}
		p.onDone = done
		v.busy = p
		w.logf("  started pull with slow renames (pid %d), gc every 80ms", p.cmd.Process.Pid)
		for i := 0; i < 6; i++ {
			time.Sleep(80 * time.Millisecond)
			w.background("gc", nil, "gc", "--cache-max", "0")
		}
		return true
	}
	v.busy = w.background("pull", done, args...)
	if w.rng.Intn(2) == 0 {
		w.concurrentGC()
	}
	return true
}

func (w *world) opFill() bool {
	v := w.pickVol(func(v *vol) bool { return idle(v) && v.lazy })
	if v == nil {
		return false
	}
	w.logf("fill %s", v.name)
	v.busy = w.background("fill", func(p *proc) {
		v.busy = nil
		if !p.ok() {
			v.check = true
		} else {
			v.lazy = false // complete: readable without the registry
		}
	}, w.lazyMax([]string{"fill", v.name})...)
	if w.rng.Intn(2) == 0 {
		w.concurrentGC()
	}
	return true
}

// concurrentGC starts gc (with eviction, often) in the background now,
// while the command just started runs.
func (w *world) concurrentGC() {
	args := []string{"gc"}
	if w.rng.Intn(3) > 0 {
		args = append(args, "--cache-max", []string{"0", "4K", "64K"}[w.rng.Intn(3)])
	}
	time.Sleep(time.Duration(w.rng.Intn(30)) * time.Millisecond)
	w.background(strings.Join(args, " "), nil, args...)
}

// opRace clones a snapshot while, at the same moment, another process
// deletes that snapshot and a third runs gc: either the clone fails or
// it holds the snapshot's data.
func (w *world) opRace() bool {
	if len(w.vols) >= w.maxVols {
		return false
	}
	src, sn := w.pickSnap(func(v *vol) bool { return v.busy == nil })
	if src == nil {
		return false
	}
	name := w.name("v")
	w.logf("race: clone %s from %s@%s, delete %s@%s, gc", name, src.name, sn, src.name, sn)
	data := src.snaps[sn].alts[0].data
	v := &vol{name: name, bs: src.bs, snaps: map[string]*snap{}, lazy: src.lazy, check: true}
	made := &state{data: append([]byte(nil), data...), why: "clone"}
	v.alts = []*state{{absent: true, why: "clone failed"}, made}
	w.vols[name] = v
	s := src.snaps[sn]
	s.alts = append(s.alts, &state{absent: true, why: "delete"})
	v.busy = w.background("clone", func(p *proc) { v.busy = nil }, "create", name, "--from", src.name+"@"+sn)
	src.busy = w.background("delete", func(p *proc) { src.busy = nil; src.check = true }, "delete", src.name+"@"+sn, "--force")
	w.background("gc", nil, "gc")
	return true
}

func (w *world) opCheck() bool {
	v := w.pickVol(idle)
	if v == nil {
		return false
	}
	w.logf("check %s", v.name)
	w.checkVol(v, true)
	return true
}

// opKill sends SIGKILL to a random server or background command.
func (w *world) opKill() bool {
	if len(w.procs) == 0 {
		return false
	}
	ps := append([]*proc(nil), w.procs...)
	sort.Slice(ps, func(i, j int) bool { return ps[i].id < ps[j].id })
	p := ps[w.rng.Intn(len(ps))]
	w.logf("kill -9 %s (pid %d)", p.desc, p.cmd.Process.Pid)
	for _, v := range w.sortedVols(served) {
		if v.srv.p == p {
			w.stopServer(v, true)
			return true
		}
	}
	w.kill9(p)
	return true
}

// opStraceKill runs the next foreground command under strace, which
// kills it at the Nth call of a syscall that commits something.
func (w *world) opStraceKill() bool {
	if !w.strace {
		return false
	}
	fg := []func(*world) bool{(*world).opSnapshot, (*world).opClone, (*world).opRollback, (*world).opDeleteSnap,
		(*world).opFlatten, (*world).opResize, (*world).opResize, (*world).opResize, (*world).opCreate, (*world).opImport, (*world).opPull}
	i := w.rng.Intn(len(fg))
	sys := []string{"fdatasync", "fdatasync", "fdatasync", "fsync", "renameat", "renameat", "unlinkat", "ftruncate", "pwrite64", "write"}[w.rng.Intn(10)]
	n := 1 + w.rng.Intn(5)
	if i >= 5 && i <= 7 {
		// resize: its commit points are fdatasyncs.
		sys, n = "fdatasync", 1+w.rng.Intn(4)
	}
	w.inject = fmt.Sprintf("%s:signal=SIGKILL:when=%d", sys, n)
	ok := fg[i](w)
	w.inject = ""
	return ok
}

// opENOSPC fills the tmpfs root so that the next steps run out of space,
// or gives the space back.
func (w *world) opENOSPC() bool {
	if w.mnt == "" || w.enospc > 0 {
		return false
	}
	leave := []int64{0, 16 << 10, 256 << 10, 1 << 20}[w.rng.Intn(4)]
	w.enospc = 3 + w.rng.Intn(8)
	w.logf("ENOSPC: fill the disk, leave %d bytes, for %d steps", leave, w.enospc)
	if err := w.fillDisk(leave); err != nil {
		w.t.Fatal(err)
	}
	return true
}

// opStall plays a process that holds the catalogue's file lock longer
// than a command waits for it (5 s), taken while the command is past its
// first catalogue reads: strace slows the command's flock calls from the
// 4th on, and the lock is taken meanwhile. A command may then fail
// (busy); it may not lose anything. Every volume is checked afterwards.
func (w *world) opStall() bool {
	if w.enospc > 0 || !w.strace || time.Until(w.deadline) < 10*time.Second {
		return false
	}
	hold := 5500 * time.Millisecond
	victim := []string{"list", "gc", "list"}[w.rng.Intn(3)]
	w.logf("catalogue stall during %s: lock held %v", victim, hold)
	p, err := w.start("obdvol "+victim+" (catalogue stall)", "flock:delay_enter=200000:when=4+", victim)
	if err != nil {
		w.t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	f, err := os.OpenFile(filepath.Join(w.root, "catalog.db"), os.O_RDWR, 0)
	if err == nil {
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err == nil {
			time.Sleep(hold)
		}
		f.Close()
	}
	w.wait(p, w.cmdTimeout)
	w.logf("  %s -> %s", p.desc, p.short())
	for _, v := range w.sortedVols(idle) {
		v.check = true
	}
	return true
}

// opSocket checks that serve refuses a path that is a regular file or a
// live server's socket.
func (w *world) opSocket() bool {
	v := w.pickVol(idle)
	if v == nil {
		return false
	}
	var path, what string
	if other := w.pickVol(served); other != nil && w.rng.Intn(2) == 0 {
		path, what = other.srv.sock, "the live socket of the server of "+other.name
	} else {
		path, what = filepath.Join(w.dir, "precious.txt"), "a regular file"
		os.WriteFile(path, []byte("precious"), 0o600)
	}
	w.logf("socket safety: serve %s on %s", v.name, what)
	p, err := w.start("obdvol serve "+v.name+" (socket safety)", "", "serve", "--foreground", v.name, "--nbd", "unix:"+path)
	if err != nil {
		w.t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(time.Second):
	}
	if p.running() {
		w.findOnce("socket-"+what[:8], "socket", "serve %s --nbd unix:PATH where PATH is %s: it did not refuse (still serving after 1s)", v.name, what)
		p.cmd.Process.Signal(syscall.SIGTERM)
	}
	w.wait(p, w.cmdTimeout)
	w.logf("  -> %s", p.short())
	if what == "a regular file" {
		if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
			w.findOnce("socket-file", "socket", "serve %s --nbd unix:PATH deleted the regular file at PATH", v.name)
		}
		os.Remove(path)
	}
	if !p.ok() {
		v.check = true
	}
	return true
}

// opJournalFlip flips one bit in a journal record of an idle volume that
// valid records follow, and exports it: a clear error is right, wrong bytes with exit 0
// are a finding, and so is a journal rewritten by the read-only export.
// The bit is flipped back afterwards.
func (w *world) opJournalFlip() bool {
	v := w.pickVol(idle)
	if v == nil {
		return false
	}
	gens, _ := filepath.Glob(filepath.Join(w.root, "volumes", v.name, "w-*", "journal"))
	if len(gens) == 0 {
		return false
	}
	sort.Slice(gens, func(i, j int) bool {
		return len(gens[i]) < len(gens[j]) || len(gens[i]) == len(gens[j]) && gens[i] < gens[j]
	})
	path := gens[len(gens)-1]
	// The journal is a 16-byte header and 24-byte records; only a torn
	// last record may be dropped, so the flip goes into an earlier one.
	orig, err := os.ReadFile(path)
	nrec := (len(orig) - 16) / 24
	if err != nil || nrec < 2 {
		return false
	}
	off := 16 + 24*w.rng.Intn(nrec-1) + w.rng.Intn(24)
	bit := byte(1) << w.rng.Intn(8)
	flipped := append([]byte(nil), orig...)
	flipped[off] ^= bit
	w.logf("journal bit flip: %s byte %d of %d", v.name, off, len(orig))
	if err := os.WriteFile(path, flipped, 0o600); err != nil {
		w.t.Fatal(err)
	}
	b, p := w.export(v.name)
	after, _ := os.ReadFile(path)
	if b != nil {
		if i := firstDiff(b, v.alts[0].data); len(b) != len(v.alts[0].data) || i >= 0 {
			w.findOnce("journal-flip", "corrupt", "export %s exited 0 with wrong data after one flipped bit at byte %d of its %d-byte journal (expected a clear error)", v.name, off, len(orig))
		}
	} else {
		w.logf("  export refused: %s", p.short())
	}
	rewritten := string(after) != string(flipped)
	if rewritten {
		w.findOnce("journal-rewrite", "corrupt", "export %s (read-only) rewrote the journal after a flipped bit at byte %d: %d bytes before, %d after", v.name, off, len(flipped), len(after))
	}
	if len(after) == len(orig) {
		after[off] ^= bit
		os.WriteFile(path, after, 0o600)
	}
	if rewritten || b != nil && firstDiff(b, v.alts[0].data) >= 0 {
		// Reported above: the model takes what is there now.
		if b2, _ := w.export(v.name); b2 != nil {
			v.alts = []*state{{data: b2, why: "as read after a journal bit flip"}}
		}
	}
	v.check = true
	return true
}

// opCatalogCorrupt overwrites a random page of the catalogue with garbage
// while no other process runs, runs list, and restores the file: a clear
// error is right, a panic is a finding.
func (w *world) opCatalogCorrupt() bool {
	// No other process at all: a server committing to the damaged file
	// and the page then put back would mix two states of the file (seen
	// in a 30-minute run: "invalid freelist page" for good), which says
	// something about this harness, not about obdvol.
	if len(w.procs) > 0 {
		return false
	}
	path := filepath.Join(w.root, "catalog.db")
	orig, err := os.ReadFile(path)
	if err != nil || len(orig) < 4*4096 {
		return false
	}
	page := 2 + w.rng.Intn(min(len(orig)/4096-2, 4))
	bad := append([]byte(nil), orig...)
	w.rng.Read(bad[page*4096 : page*4096+4096])
	w.logf("catalogue corruption: page %d of %d", page, len(orig)/4096)
	// Pages are overwritten in place: no truncation, no new blocks, so
	// this works (and restores) on a full disk too.
	putPage := func(src []byte) error {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteAt(src[page*4096:page*4096+4096], int64(page)*4096)
		return err
	}
	if err := putPage(bad); err != nil {
		w.logf("  cannot corrupt the catalogue: %v", err)
		return true
	}
	for _, args := range [][]string{{"list"}, {"gc", "--dry-run"}} {
		w.run(args...) // a crash is a finding (afterProc)
	}
	if err := putPage(orig); err != nil {
		w.t.Fatal(err)
	}
	// A command on a corrupt catalogue may fail; it may not lose data.
	for _, v := range w.sortedVols(idle) {
		v.check = true
	}
	return true
}

// opRemotePush pushes a snapshot from another root (another host): pulls
// of its tag then download every blob instead of finding it in the store.
func (w *world) opRemotePush() bool {
	name := w.name("o")
	size := sizes[w.rng.Intn(4)]
	bs := []int{4096, 4096, 512, 16384}[w.rng.Intn(4)]
	data := make([]byte, size)
	for i := 0; i < 1+w.rng.Intn(4); i++ {
		off := w.rng.Intn(size)
		n := 1 + w.rng.Intn(size-off)
		w.rng.Read(data[off : off+n])
	}
	file := filepath.Join(w.dir, "origin.bin")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		w.t.Fatal(err)
	}
	t := w.name("t")
	ref := fmt.Sprintf("%s/torture/r:%s", w.reg.Addr, t)
	w.logf("remote push %s (%d bytes, bs %d) as %s", name, size, bs, t)
	for _, args := range [][]string{
		{"create", name, "--size", fmt.Sprint(size), "--block-size", fmt.Sprint(bs)},
		{"import", name, file},
		{"snapshot", name + "@r"},
		{"push", name + "@r", ref, "--plain-http"},
	} {
		p, err := w.startIn(w.origin, "origin: obdvol "+strings.Join(args, " "), "", args...)
		if err != nil {
			w.t.Fatal(err)
		}
		w.wait(p, w.cmdTimeout)
		w.logf("  %s -> %s", p.desc, p.short())
		if !p.ok() {
			return true
		}
	}
	w.tags[t] = &tag{data: data, bs: bs, snap: "r", pushed: true, remote: true}
	return true
}

// opOffline stops the registry and reads back every volume that was pulled
// whole, filled, or made here: none may need the registry any more (a gc
// during its pull may not have taken its blobs, eviction may not touch a
// complete blob). Lazily pulled volumes are skipped.
func (w *world) opOffline() bool {
	vs := w.sortedVols(func(v *vol) bool { return idle(v) && !v.lazy })
	if len(vs) == 0 || w.enospc > 0 {
		return false
	}
	w.logf("offline check: registry stopped, read %d volumes", len(vs))
	w.reg.Stop()
	w.offline = true
	for _, v := range vs {
		w.checkVol(v, false)
	}
	w.offline = false
	if err := w.reg.Restart(); err != nil {
		w.t.Fatalf("restart registry: %v", err)
	}
	return true
}

// opLazyShare pulls one remote tag lazily into two volumes (they share the
// lazy blob), then at once: fill of the first, a read of the second, and
// gc evicting lazily fetched data. The filled volume must then read
// without the registry, and both must hold the tag's data.
func (w *world) opLazyShare() bool {
	if len(w.vols)+2 > w.maxVols || w.enospc > 0 {
		return false
	}
	var ts []string
	for t, tg := range w.tags {
		if tg.remote {
			ts = append(ts, t)
		}
	}
	if len(ts) == 0 {
		return false
	}
	sort.Strings(ts)
	t := ts[w.rng.Intn(len(ts))]
	tg := w.tags[t]
	ref := fmt.Sprintf("%s/torture/r:%s", w.reg.Addr, t)
	var vs []*vol
	for i := 0; i < 2; i++ {
		name := w.name("v")
		w.logf("lazy-share: pull %s into %s lazily", t, name)
		p := w.run("pull", ref, name, "--plain-http", "--lazy", "--fill=false")
		v := &vol{name: name, bs: tg.bs, snaps: map[string]*snap{}, lazy: true}
		made := &state{data: append([]byte(nil), tg.data...), why: "pull"}
		w.vols[name] = v
		if !p.ok() {
			v.alts = []*state{{absent: true, why: "pull failed"}, made}
			v.snaps[tg.snap] = &snap{seq: w.next, late: true, alts: []*state{{absent: true, why: "pull failed"}, {data: made.data, why: "pull"}}}
			v.check = true
			return true
		}
		v.alts = []*state{made}
		v.snaps[tg.snap] = &snap{seq: w.next, alts: []*state{{data: made.data, why: "pull"}}}
		vs = append(vs, v)
	}
	a, b := vs[0], vs[1]
	w.logf("lazy-share: fill %s, read %s, gc --cache-max 0, at once", a.name, b.name)
	a.busy = w.background("fill", func(p *proc) {
		a.busy = nil
		if p.ok() {
			a.lazy = false
		}
		a.check = true
	}, w.lazyMax([]string{"fill", a.name})...)
	b.busy = w.background("export", func(p *proc) {
		b.busy = nil
		b.check = true
	}, "export", b.name, filepath.Join(w.dir, "lazy-share.img"))
	w.background("gc", nil, "gc", "--cache-max", "0")
	return true
}
