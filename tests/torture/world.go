package torture

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obdvol/obdvol/tests/regtest"
)

// finding is a broken promise: wrong or lost data, a crash, a hang, a leak.
type finding struct {
	step int
	kind string
	msg  string
}

// snap is the model of one snapshot.
type snap struct {
	seq  int // creation order (rollback --force drops newer ones)
	alts []*state
	// late: a snapshot command failed or was killed after recording its
	// intent; the next open of the volume may finish it, so it may appear
	// later (with the content it was taken with).
	late bool
}

// vol is the model of one volume.
type vol struct {
	name  string
	bs    int
	alts  []*state
	snaps map[string]*snap
	srv   *server
	busy  *proc // a background command that owns the volume
	lazy  bool
	check bool // its state is uncertain: read it back before using it
	stale bool // its last server was killed (obdvol may still think it active)
	dirty bool // its writable layer holds data (import or writes since a seal)
}

// server is a running `obdvol serve` of one volume with an NBD client.
type server struct {
	p       *proc
	sock    string
	nbd     *nbdClient
	durable []byte  // content at the last acknowledged flush
	pending []write // written since
	cur     []byte  // content after every acknowledged write
	unsure  []write // writes that failed: each may have landed, in part
	eio     bool    // runs under strace, which fails its Nth fdatasync
	// flushFailed: a flush failed (the injected EIO); none may succeed after.
	flushFailed bool
}

// tag is a pushed (or maybe pushed) snapshot in the registry.
type tag struct {
	data   []byte
	pushed bool // the push exited 0
	bs     int
	snap   string // the pushed snapshot's name, which a pull gives the volume
	remote bool   // pushed from the origin root: a pull downloads it
}

type world struct {
	t          *testing.T
	seed       int64
	rng        *rand.Rand
	dir        string // scratch: sockets, exports
	mnt        string // the tmpfs holding root (empty: none)
	root       string
	origin     string // the root of another host that pushes tags
	bin        string
	reg        *regtest.Registry
	cmdTimeout time.Duration

	vols     map[string]*vol
	tags     map[string]*tag
	procs    []*proc // running processes we started
	nextProc int
	next     int // name counter

	inject    string // strace injection for the next foreground command
	enospc    int    // steps left with the disk nearly full
	ballast   string
	step      int
	log       []string
	findings  []finding
	maxVols   int
	exportDir string
	seen      map[string]bool
	offline   bool      // the registry is stopped
	strace    bool      // strace is installed: faults at exact syscalls
	deadline  time.Time // when the run stops starting operations
}

func (w *world) logf(f string, a ...any) {
	w.log = append(w.log, fmt.Sprintf("%5d ", w.step)+fmt.Sprintf(f, a...))
}

func (w *world) find(kind, f string, a ...any) {
	msg := fmt.Sprintf(f, a...)
	w.findings = append(w.findings, finding{w.step, kind, msg})
	w.logf("  FINDING %s: %s", kind, strings.ReplaceAll(msg, "\n", "\n        "))
}

// findOnce records a finding whose key was not seen yet in this run.
func (w *world) findOnce(key, kind, f string, a ...any) {
	if w.seen[key] {
		return
	}
	w.seen[key] = true
	w.find(kind, f, a...)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

func (w *world) name(prefix string) string {
	w.next++
	return fmt.Sprintf("%s%d", prefix, w.next)
}

// sortedVols returns the volumes that satisfy f, in name order (the
// order of map iteration must not depend on the run).
func (w *world) sortedVols(f func(*vol) bool) []*vol {
	var out []*vol
	for _, v := range w.vols {
		if f(v) {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func (w *world) pickVol(f func(*vol) bool) *vol {
	vs := w.sortedVols(f)
	if len(vs) == 0 {
		return nil
	}
	return vs[w.rng.Intn(len(vs))]
}

// idle: known to exist, not served, not owned by a background command,
// state certain.
func idle(v *vol) bool {
	return v.srv == nil && v.busy == nil && !v.check && len(v.alts) == 1 && !v.alts[0].absent
}

func served(v *vol) bool { return v.srv != nil }

func (v *vol) sortedSnaps(f func(*snap) bool) []string {
	var out []string
	for n, s := range v.snaps {
		if f == nil || f(s) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

func known(s *snap) bool { return len(s.alts) == 1 && !s.alts[0].absent }

// content is the certain content of a volume that is idle or served.
func (v *vol) content() []byte {
	if v.srv != nil {
		return v.srv.cur
	}
	return v.alts[0].data
}

// listing is what `obdvol list --json` says.
type listing map[string][]string // volume -> snapshots

func (w *world) list() (listing, error) {
	var last *proc
	for try := 0; try < 4; try++ {
		p := w.run("list")
		last = p
		if p.ok() {
			var j struct {
				Volumes []struct {
					Name      string   `json:"name"`
					Snapshots []string `json:"snapshots"`
				} `json:"volumes"`
			}
			if err := json.Unmarshal([]byte(p.out.String()), &j); err != nil {
				return nil, fmt.Errorf("list --json: %v", err)
			}
			l := listing{}
			for _, v := range j.Volumes {
				l[v.Name] = v.Snapshots
			}
			return l, nil
		}
		if p.kind() != "busy" {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	return nil, errors.New(last.short())
}

// export reads VOL or VOL@SNAP back, retrying while busy.
func (w *world) export(ref string) ([]byte, *proc) {
	file := filepath.Join(w.exportDir, "export.img")
	var p *proc
	for try := 0; try < 4; try++ {
		os.Remove(file)
		if w.offline {
			p = w.run("--remote-timeout", "2s", "export", ref, file)
		} else {
			p = w.run("export", ref, file)
		}
		if p.ok() {
			b, err := os.ReadFile(file)
			if err != nil {
				w.t.Fatalf("read export: %v", err)
			}
			os.Remove(file)
			return b, p
		}
		if p.kind() != "busy" {
			break
		}
		time.Sleep(300 * time.Millisecond)
	}
	return nil, p
}

// checkVol reads back a volume that no process uses, and its snapshots
// (all of them when full, else only the uncertain ones), against the model,
// and resolves the model to what it read.
func (w *world) checkVol(v *vol, full bool) {
	// While the disk is full too: reading needs no space.
	l, err := w.list()
	if err != nil {
		if w.enospc > 0 {
			w.findOnce("full:list", "unreadable-full", "list fails while the disk is full (so nothing can be read back): %v", err)
			return // checked again later
		}
		w.findOnce("list:"+err.Error(), "unreadable", "list failed while checking %s: %v", v.name, err)
		return
	}
	snaps, exists := l[v.name]
	var act []byte
	if exists {
		b, p := w.export(v.name)
		if b == nil {
			if p.kind() == "busy" {
				return // try again later
			}
			if w.enospc > 0 {
				w.findOnce("full:"+fullKey(p.out.String()), "unreadable-full", "volume %s (possible states: %s) cannot be exported while the disk is full: %s", v.name, whys(v.alts), p.short())
				return // checked again later
			}
			off := ""
			if w.offline {
				off = " without the registry (it was pulled whole or filled)"
			}
			w.find("unreadable", "volume %s (possible states: %s) is listed but cannot be exported%s: %s", v.name, whys(v.alts), off, p.short())
			v.alts = []*state{{absent: true, why: "unreadable"}}
			w.dropVol(v)
			return
		}
		act = b
	}
	w.resolve(v.name, &v.alts, act, exists)
	v.check = false
	if !exists {
		// Its snapshots went with it.
		if len(v.alts) == 1 && v.alts[0].absent {
			w.dropVol(v)
		}
		return
	}
	inList := map[string]bool{}
	for _, s := range snaps {
		inList[s] = true
	}
	for _, n := range v.sortedSnaps(nil) {
		s := v.snaps[n]
		if !full && known(s) && inList[n] {
			continue
		}
		if s.late && !inList[n] {
			continue // may still appear
		}
		s.late = false
		w.checkSnap(v, n, inList[n])
	}
	for _, n := range snaps {
		if v.snaps[n] == nil {
			w.find("data", "snapshot %s@%s exists but the model has no such snapshot", v.name, n)
			b, _ := w.export(v.name + "@" + n)
			v.snaps[n] = &snap{seq: w.next, alts: []*state{{data: b, why: "as read after a finding"}}}
		}
	}
}

func (w *world) checkSnap(v *vol, n string, exists bool) {
	s := v.snaps[n]
	var act []byte
	if exists {
		b, p := w.export(v.name + "@" + n)
		if b == nil {
			if p.kind() == "busy" {
				return
			}
			if w.enospc > 0 {
				w.findOnce("full:"+fullKey(p.out.String()), "unreadable-full", "snapshot %s@%s cannot be exported while the disk is full: %s", v.name, n, p.short())
				return
			}
			w.find("unreadable", "snapshot %s@%s is listed but cannot be exported: %s", v.name, n, p.short())
			delete(v.snaps, n)
			return
		}
		act = b
	}
	w.resolve(v.name+"@"+n, &s.alts, act, exists)
	if len(s.alts) == 1 && s.alts[0].absent {
		delete(v.snaps, n)
	}
}

func whys(alts []*state) string {
	var s []string
	for _, a := range alts {
		d := a.why
		if a.absent {
			d += "(absent)"
		} else if len(a.pending) > 0 {
			d += fmt.Sprintf("(%d unflushed writes)", len(a.pending))
		}
		s = append(s, d)
	}
	return strings.Join(s, " | ")
}

// resolve keeps the first possible state that act matches; none is a
// finding, and the model then takes what was read (so that one defect is
// reported once).
func (w *world) resolve(what string, alts *[]*state, act []byte, exists bool) {
	var diffs []string
	for _, a := range *alts {
		if ok, d := a.match(act, exists); ok {
			c := a.clone()
			c.pending = nil
			if exists {
				c.data = act
			}
			*alts = []*state{c}
			return
		} else {
			diffs = append(diffs, fmt.Sprintf("  state after %q: %s", a.why, d))
		}
	}
	kind := "data"
	if !exists {
		kind = "lost"
	}
	w.find(kind, "%s matches none of its possible states:\n%s", what, strings.Join(diffs, "\n"))
	*alts = []*state{{absent: !exists, data: act, why: "as read after a finding"}}
}

func (w *world) dropVol(v *vol) {
	delete(w.vols, v.name)
}

// ballast fills the tmpfs so that only leave bytes stay free.
func (w *world) fillDisk(leave int64) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(w.mnt, &st); err != nil {
		return err
	}
	free := int64(st.Bavail) * st.Bsize
	n := free - leave
	if n <= 0 {
		return nil
	}
	f, err := os.OpenFile(w.ballast, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:k]); err != nil {
			break // full
		}
		n -= k
	}
	return nil
}

// fullKey classes an error seen while the disk is full, so that each
// class is reported once.
func fullKey(out string) string {
	switch {
	case strings.Contains(out, "finishing interrupted snapshot"):
		return "seal"
	case strings.Contains(out, "journal"):
		return "journal"
	}
	return "other"
}

func (w *world) freeDisk() { os.Remove(w.ballast) }
