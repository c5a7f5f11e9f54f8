package main

// guest powercut: power cuts at every flush point, CrashMonkey's method.
//
// obdvol's --root is an ext4 filesystem on dm-log-writes over a RAM disk.
// A seeded random workload runs the real obdvol binary (create, import,
// snapshot, clone, rollback, delete, gc, flatten, resize, push + pull) and
// marks the log after every command that succeeded: from that mark on,
// what the command did is acknowledged. Then the log is replayed from an
// empty disk, and at each cut point the replayed disk is written to a
// scratch RAM disk, mounted (ext4 recovers its journal), and obdvol run on
// it must open the catalogue and export every volume and snapshot:
//
//   - at a mark (what was durable when the command returned): exactly the
//     model after that command;
//   - at a flush or FUA inside a command: every object the command does
//     not change exactly as before it; an object it changes either as
//     before or as after (an import: each block either), present or
//     absent only as before or after.
//
// Every finding names the cut point, the command in flight and what
// differs; the run fails at the first.

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const pcBlock = 4096 // the volumes' block size (obdvol's default)

// pcState is what obdvol must hold after a command: the content of every
// volume ("v1") and snapshot ("v1@s2"), and the order snapshots were made
// in (rollback --force removes the newer ones).
type pcState struct {
	Objs    map[string][]byte
	Order   []string          // snapshots, oldest first
	Origins map[string]string // clone -> the snapshot it was made from
}

func (s *pcState) clone() *pcState {
	c := &pcState{Objs: make(map[string][]byte, len(s.Objs)), Order: append([]string(nil), s.Order...),
		Origins: make(map[string]string, len(s.Origins))}
	for k, v := range s.Objs {
		c.Objs[k] = v // contents are never modified in place
	}
	for k, v := range s.Origins {
		c.Origins[k] = v
	}
	return c
}

// hasClones says whether a live volume was cloned from snapshot snap.
func (s *pcState) hasClones(snap string) bool {
	for c, o := range s.Origins {
		if _, live := s.Objs[c]; live && o == snap {
			return true
		}
	}
	return false
}

func (s *pcState) volumes() []string {
	var out []string
	for k := range s.Objs {
		if !strings.Contains(k, "@") {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func (s *pcState) snapshots(vol string) []string {
	var out []string
	for _, k := range s.Order {
		if strings.HasPrefix(k, vol+"@") {
			out = append(out, k)
		}
	}
	return out
}

func (s *pcState) dropSnapshot(name string) {
	delete(s.Objs, name)
	for i, k := range s.Order {
		if k == name {
			s.Order = append(s.Order[:i:i], s.Order[i+1:]...)
			break
		}
	}
}

// pcStep is one command of the workload and the state it leaves.
type pcStep struct {
	Cmd      string
	Blockish bool // an import: in flight, each block is old or new
	After    *pcState
}

type powercut struct {
	obdvol  string
	root    string // --root while the workload runs
	r       *rand.Rand
	seq     int
	steps   []pcStep // steps[0]: the empty root, made before the "ready" mark
	layout  string
	verbose bool
	device  bool   // also write through ublk devices
	force   string // every other command is of this kind (pcOps)
}

func powercutCmd(args []string) error {
	fs := flag.NewFlagSet("powercut", flag.ContinueOnError)
	seed := fs.Int64("seed", 1, "workload seed")
	nsteps := fs.Int("steps", 20, "commands in the workload")
	maxPoints := fs.Int("points", 0, "check every mark and at most this many flush points, spread evenly (0: all)")
	fsck := fs.Bool("fsck", false, "e2fsck every replayed filesystem after the checks")
	data := fs.String("data", "/dev/ram0", "the data RAM disk")
	logdev := fs.String("log", "/dev/ram1", "the log RAM disk")
	scratch := fs.String("scratch", "/dev/ram2", "the RAM disk each cut point is checked on")
	fsMiB := fs.Int("fs-mib", 96, "filesystem size")
	verbose := fs.Bool("v", false, "print every command")
	device := fs.Bool("device", true, "also write through /dev/ublkbN (needs ublk_drv)")
	force := fs.String("force", "", "make every other command one of this kind (create, import, snapshot, clone, rollback, delete-snapshot, delete-volume, device, gc, flatten, resize, pull)")
	subsets := fs.Int("subsets", 0, "at each checked flush point, also check this many states keeping a random subset of the writes not yet flushed")
	probeEvery := fs.Int("probe", 0, "at every Nth checked point, also write and snapshot after the recovery (0: never)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pc := &powercut{obdvol: "/bin/obdvol", root: "/mnt/pc/r", r: rand.New(rand.NewSource(*seed)),
		layout: "/tmp/pc-layout", verbose: *verbose, device: *device, force: *force}
	size := int64(*fsMiB) << 20
	t0 := time.Now()

	// Record.
	table := fmt.Sprintf("0 %d log-writes %s %s", size/512, *data, *logdev)
	if err := run("/usr/local/bin/dmsetup", "create", "pclw", "--table", table); err != nil {
		return err
	}
	dev := "/dev/mapper/pclw"
	if err := run("/usr/local/bin/mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", dev); err != nil {
		return err
	}
	os.MkdirAll("/mnt/pc", 0o755)
	if err := unix.Mount(dev, "/mnt/pc", "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount %s: %w", dev, err)
	}
	if err := os.Mkdir(pc.root, 0o700); err != nil {
		return err
	}
	unix.Sync()
	pc.steps = []pcStep{{Cmd: "(start)", After: &pcState{Objs: map[string][]byte{}, Origins: map[string]string{}}}}
	if err := run("/usr/local/bin/dmsetup", "message", "pclw", "0", "mark", "step-0"); err != nil {
		return err
	}
	refused := 0
	for len(pc.steps) <= *nsteps {
		ok, post, err := pc.step()
		if err != nil {
			return err
		}
		if !ok {
			refused++
			continue
		}
		k := len(pc.steps) - 1
		if err := run("/usr/local/bin/dmsetup", "message", "pclw", "0", "mark", fmt.Sprintf("step-%d", k)); err != nil {
			return err
		}
		if post != nil {
			if err := post(); err != nil {
				return err
			}
		}
	}
	if err := stopDaemon(pc.root); err != nil {
		return err
	}
	if err := unix.Unmount("/mnt/pc", 0); err != nil {
		return fmt.Errorf("umount: %w", err)
	}
	if err := run("/usr/local/bin/dmsetup", "remove", "pclw"); err != nil {
		return err
	}
	fmt.Printf("powercut: seed %d: %d commands (%d skipped) recorded in %v\n", *seed, len(pc.steps)-1, refused,
		time.Since(t0).Round(time.Second))

	// Replay.
	l, err := readLog(*logdev)
	if err != nil {
		return err
	}
	defer l.Close()
	type point struct {
		entry int
		mark  int // the last step acknowledged
		exact bool
	}
	var points []point
	mark := -1
	for i := range l.Entries {
		e := &l.Entries[i]
		var k int
		if e.Flags&lwMark != 0 {
			if _, err := fmt.Sscanf(e.Mark, "step-%d", &k); err == nil {
				mark = k
				points = append(points, point{entry: i, mark: k, exact: true})
			}
			continue
		}
		if mark >= 0 && e.Flags&(lwFlush|lwFUA) != 0 {
			points = append(points, point{entry: i, mark: mark})
		}
	}
	if mark != len(pc.steps)-1 {
		return fmt.Errorf("the log's last mark is step-%d, not step-%d", mark, len(pc.steps)-1)
	}
	chosen := map[int]bool{}
	var flushes []int
	for i, p := range points {
		if p.exact || *maxPoints <= 0 {
			chosen[i] = true
		} else {
			flushes = append(flushes, i)
		}
	}
	if n := len(flushes); n > 0 {
		for j := 0; j < *maxPoints; j++ {
			chosen[flushes[j*n/(*maxPoints)+n/(2*(*maxPoints))]] = true
		}
	}
	fmt.Printf("powercut: %d log entries, %d cut points (%d marks), checking %d\n", len(l.Entries), len(points),
		len(pc.steps), len(chosen))
	img := make([]byte, size)
	next, checked := 0, 0
	sr := rand.New(rand.NewSource(*seed))
	var base []byte
	for pi, p := range points {
		// The writes between the previous cut point and this flush were
		// not flushed yet: a power cut may keep any subset of them.
		var window []int
		if chosen[pi] && !p.exact && *subsets > 0 {
			for i := next; i < p.entry; i++ {
				if e := &l.Entries[i]; e.Flags&lwMark == 0 && e.NrSectors > 0 {
					window = append(window, i)
				}
			}
			if len(window) > 1 {
				base = append(base[:0], img...)
			}
		}
		for ; next <= p.entry; next++ {
			if err := l.apply(img, &l.Entries[next]); err != nil {
				return fmt.Errorf("entry %d: %w", next, err)
			}
		}
		if !chosen[pi] {
			continue
		}
		probe := *probeEvery > 0 && checked%*probeEvery == *probeEvery-1
		if err := pc.check(img, *scratch, p.mark, p.exact, *fsck, probe); err != nil {
			kind := "flush"
			if p.exact {
				kind = "mark"
			}
			inflight := "none"
			if !p.exact {
				inflight = pc.inflight(p.mark)
			}
			return fmt.Errorf("FINDING at cut point %d (log entry %d, %s) after step %d (%s), in flight: %s: %w",
				pi, p.entry, kind, p.mark, pc.steps[p.mark].Cmd, inflight, err)
		}
		checked++
		if checked%25 == 0 {
			fmt.Printf("powercut: %d cut points checked (%v)\n", checked, time.Since(t0).Round(time.Second))
		}
		for j := 0; len(window) > 1 && j < *subsets; j++ {
			sub := append([]byte(nil), base...)
			kept := 0
			for _, i := range window {
				if sr.Intn(2) == 0 {
					if err := l.apply(sub, &l.Entries[i]); err != nil {
						return err
					}
					kept++
				}
			}
			if err := pc.check(sub, *scratch, p.mark, false, *fsck, false); err != nil {
				return fmt.Errorf("FINDING at cut point %d (log entry %d) keeping %d of the %d unflushed writes before it, after step %d (%s), in flight: %s: %w",
					pi, p.entry, kept, len(window), p.mark, pc.steps[p.mark].Cmd, pc.inflight(p.mark), err)
			}
			checked++
		}
	}
	fmt.Printf("powercut: seed %d: %d cut points checked, every acknowledged write and snapshot intact (%v)\n",
		*seed, checked, time.Since(t0).Round(time.Second))
	fmt.Printf("OBDVOL-VM-POWERCUT-POINTS %d\n", checked)
	return nil
}

func (pc *powercut) inflight(mark int) string {
	if mark+1 < len(pc.steps) {
		return pc.steps[mark+1].Cmd
	}
	return "(after the last command)"
}

func run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "DM_DISABLE_UDEV=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// ob runs obdvol on root and returns its stdout.
func (pc *powercut) ob(root string, args ...string) ([]byte, error) {
	cmd := exec.Command(pc.obdvol, append([]string{"--root", root, "--no-progress"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("obdvol %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// pcOps names a value of op in step for each kind of command (-force).
var pcOps = map[string]int{"create": 0, "import": 20, "snapshot": 50, "clone": 60, "rollback": 66,
	"delete-snapshot": 72, "delete-volume": 76, "device": 80, "gc": 87, "flatten": 91, "resize": 95, "pull": 98}

// step runs one random command; it returns false if it skipped the
// command (one the model says obdvol must refuse, or that does not apply
// now), and what to run after the mark. Every command it runs is valid:
// a refusal is a finding.
func (pc *powercut) step() (bool, func() error, error) {
	cur := pc.steps[len(pc.steps)-1].After
	next := cur.clone()
	vols := cur.volumes()
	pick := func(l []string) string { return l[pc.r.Intn(len(l))] }
	var args []string
	blockish := false
	pc.seq++
	op := pc.r.Intn(100)
	if o, ok := pcOps[pc.force]; ok && pc.seq%2 == 0 {
		op = o
	}
	if len(vols) == 0 || len(vols) < 2 && pc.r.Intn(4) == 0 {
		op = 0
	}
	switch {
	case op < 8 && len(vols) < 5: // create
		name := fmt.Sprintf("v%d", pc.seq)
		size := int64(1+pc.r.Intn(4)) << 20
		args = []string{"create", name, "--size", fmt.Sprint(size)}
		next.Objs[name] = make([]byte, size)
	case op < 44: // import: any offset and length, sometimes zeros
		v := pick(vols)
		old := cur.Objs[v]
		off := pc.r.Int63n(int64(len(old)))
		if pc.r.Intn(2) == 0 {
			off &^= pcBlock - 1
		}
		n := 1 + pc.r.Int63n(min(int64(len(old))-off, 96<<10))
		buf := make([]byte, n)
		if pc.r.Intn(5) != 0 {
			pc.r.Read(buf)
		}
		f := fmt.Sprintf("/tmp/pc-import-%d", pc.seq)
		if err := os.WriteFile(f, buf, 0o600); err != nil {
			return false, nil, err
		}
		defer os.Remove(f)
		args = []string{"import", v, f, "--offset", fmt.Sprint(off)}
		nv := bytes.Clone(old)
		copy(nv[off:], buf)
		next.Objs[v] = nv
		blockish = true
	case op < 58: // snapshot
		v := pick(vols)
		name := fmt.Sprintf("%s@s%d", v, pc.seq)
		args = []string{"snapshot", name}
		next.Objs[name] = cur.Objs[v]
		next.Order = append(next.Order, name)
	case op < 64: // clone
		snaps := cur.Order
		if len(snaps) == 0 || len(vols) >= 5 {
			return false, nil, nil
		}
		s := pick(snaps)
		name := fmt.Sprintf("c%d", pc.seq)
		args = []string{"create", name, "--from", s}
		next.Objs[name] = cur.Objs[s]
		next.Origins[name] = s
	case op < 70: // rollback (removes newer snapshots)
		v := pick(vols)
		snaps := cur.snapshots(v)
		if len(snaps) == 0 {
			return false, nil, nil
		}
		s := pick(snaps)
		args = []string{"rollback", s, "--force"}
		next.Objs[v] = cur.Objs[s]
		newer := false
		for _, k := range snaps {
			if newer {
				if cur.hasClones(k) {
					return false, nil, nil // refused by design: a clone was made from k
				}
				next.dropSnapshot(k)
			}
			newer = newer || k == s
		}
	case op < 75: // delete a snapshot
		if len(cur.Order) == 0 {
			return false, nil, nil
		}
		s := pick(cur.Order)
		args = []string{"delete", s, "--force"}
		next.dropSnapshot(s)
	case op < 78: // delete a volume with its snapshots
		if len(vols) < 3 {
			return false, nil, nil
		}
		v := pick(vols)
		args = []string{"delete", v, "--force"}
		delete(next.Objs, v)
		for _, s := range cur.snapshots(v) {
			next.dropSnapshot(s)
		}
	case op < 86 && pc.device: // writes through /dev/ublkbN, flushed
		return pc.deviceWrite(pick(vols), cur, next)
	case op < 89:
		args = []string{"gc"}
	case op < 93:
		args = []string{"flatten", pick(vols)}
	case op < 97: // resize: grow, or shrink
		v := pick(vols)
		old := cur.Objs[v]
		size := int64(len(old)) + int64(pc.r.Intn(2)*2-1)<<20
		if size <= 0 {
			size = int64(len(old)) + 1<<20
		}
		args = []string{"resize", v, fmt.Sprint(size)}
		if size < int64(len(old)) {
			args = append(args, "--shrink")
		}
		nv := make([]byte, size)
		copy(nv, old)
		next.Objs[v] = nv
	default: // pull a snapshot made and pushed on another root (tmpfs)
		if len(vols) >= 5 {
			return false, nil, nil
		}
		src, vol, snap := "/tmp/pc-src", fmt.Sprintf("src%d", pc.seq), fmt.Sprintf("r%d", pc.seq)
		size := int64(1+pc.r.Intn(2)) << 20
		content := make([]byte, size)
		for i := 0; i < 1+pc.r.Intn(3); i++ {
			off := pc.r.Int63n(size)
			pc.r.Read(content[off:min(size, off+pc.r.Int63n(256<<10))])
		}
		f := fmt.Sprintf("/tmp/pc-src-%d", pc.seq)
		if err := os.WriteFile(f, content, 0o600); err != nil {
			return false, nil, err
		}
		defer os.Remove(f)
		ref := fmt.Sprintf("oci:%s:t%d", pc.layout, pc.seq)
		for _, a := range [][]string{{"create", vol, "--size", fmt.Sprint(size)}, {"import", vol, f},
			{"snapshot", vol + "@" + snap}, {"push", vol + "@" + snap, ref}} {
			if _, err := pc.ob(src, a...); err != nil {
				return false, nil, fmt.Errorf("on the source root: %w", err)
			}
		}
		name := fmt.Sprintf("p%d", pc.seq)
		args = []string{"pull", ref, name}
		next.Objs[name] = content
		next.Objs[name+"@"+snap] = content
		next.Order = append(next.Order, name+"@"+snap)
	}
	if pc.verbose {
		fmt.Println("powercut: step", len(pc.steps), strings.Join(args, " "))
	}
	if _, err := pc.ob(pc.root, args...); err != nil {
		return false, nil, fmt.Errorf("FINDING: step %d: obdvol refused a valid command: %w", len(pc.steps), err)
	}
	pc.steps = append(pc.steps, pcStep{Cmd: strings.Join(args, " "), Blockish: blockish, After: next})
	return true, nil, nil
}

// deviceWrite activates v as a ublk device, writes a few block ranges
// through it and fsyncs the device: the mark follows the fsync, before
// deactivate (run after the mark), so what the mark acknowledges is what
// the device's flush made durable.
func (pc *powercut) deviceWrite(v string, cur, next *pcState) (bool, func() error, error) {
	out, err := pc.ob(pc.root, "activate", v, "--json")
	if err != nil {
		return false, nil, fmt.Errorf("FINDING: step %d: obdvol refused a valid command: %w", len(pc.steps), err)
	}
	var a struct {
		Device string `json:"device"`
	}
	if err := json.Unmarshal(out, &a); err != nil || a.Device == "" {
		return false, nil, fmt.Errorf("activate %s --json: %v: %s", v, err, out)
	}
	deactivate := func() error {
		if _, err := pc.ob(pc.root, "deactivate", v); err != nil {
			return fmt.Errorf("deactivate after the device writes: %w", err)
		}
		return nil
	}
	nv := bytes.Clone(cur.Objs[v])
	f, err := os.OpenFile(a.Device, os.O_WRONLY, 0)
	if err != nil {
		deactivate()
		return false, nil, err
	}
	var desc []string
	for i := 0; i < 1+pc.r.Intn(4); i++ {
		off := pc.r.Int63n(int64(len(nv))/pcBlock) * pcBlock
		n := min(int64(1+pc.r.Intn(16))*pcBlock, int64(len(nv))-off)
		buf := make([]byte, n)
		pc.r.Read(buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			f.Close()
			deactivate()
			return false, nil, fmt.Errorf("write %s at %d: %w", a.Device, off, err)
		}
		copy(nv[off:], buf)
		desc = append(desc, fmt.Sprintf("%d+%d", off, n))
	}
	if err := f.Sync(); err != nil {
		f.Close()
		deactivate()
		return false, nil, fmt.Errorf("fsync %s: %w", a.Device, err)
	}
	f.Close()
	next.Objs[v] = nv
	cmd := fmt.Sprintf("device writes to %s via %s at %s, fsync", v, a.Device, strings.Join(desc, ","))
	if pc.verbose {
		fmt.Println("powercut: step", len(pc.steps), cmd)
	}
	pc.steps = append(pc.steps, pcStep{Cmd: cmd, Blockish: true, After: next})
	return true, deactivate, nil
}

// check mounts the replayed image and compares what obdvol reads with the
// model: exactly steps[mark] if exact, else steps[mark] or steps[mark+1].
func (pc *powercut) check(img []byte, scratch string, mark int, exact, fsck, probe bool) error {
	f, err := os.OpenFile(scratch, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(img, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	f.Close()
	mnt := "/mnt/chk"
	os.MkdirAll(mnt, 0o755)
	if err := unix.Mount(scratch, mnt, "ext4", 0, ""); err != nil {
		return fmt.Errorf("the filesystem does not mount: %w", err)
	}
	cerr := pc.compare(mnt+"/r", mark, exact)
	if cerr == nil && probe {
		cerr = pc.probe(mnt + "/r")
	}
	if err := unix.Unmount(mnt, 0); err != nil && cerr == nil {
		cerr = fmt.Errorf("umount: %w", err)
	}
	if cerr == nil && fsck {
		if err := run("/usr/local/bin/e2fsck", "-fn", scratch); err != nil {
			cerr = fmt.Errorf("e2fsck after the checks: %w", err)
		}
	}
	return cerr
}

type pcList struct {
	Volumes []struct {
		Name      string   `json:"name"`
		Size      int64    `json:"size"`
		Snapshots []string `json:"snapshots"`
	} `json:"volumes"`
}

func (pc *powercut) compare(root string, mark int, exact bool) error {
	old := pc.steps[mark].After
	var nw *pcState
	blockish := false
	if !exact && mark+1 < len(pc.steps) {
		nw, blockish = pc.steps[mark+1].After, pc.steps[mark+1].Blockish
	}
	out, err := pc.ob(root, "list", "--json")
	if err != nil {
		return fmt.Errorf("the catalogue does not open: %w", err)
	}
	var l pcList
	if err := json.Unmarshal(out, &l); err != nil {
		return fmt.Errorf("list --json: %w: %s", err, out)
	}
	present := map[string]bool{}
	for _, v := range l.Volumes {
		present[v.Name] = true
		for _, s := range v.Snapshots {
			present[v.Name+"@"+s] = true
		}
	}
	names := map[string]bool{}
	for k := range present {
		names[k] = true
	}
	for k := range old.Objs {
		names[k] = true
	}
	if nw != nil {
		for k := range nw.Objs {
			names[k] = true
		}
	}
	sorted := make([]string, 0, len(names))
	for k := range names {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	// A command other than a write is atomic: every object it changes
	// is as before it, or every one as after it.
	var onlyOld, onlyNew []string
	for _, name := range sorted {
		o, inOld := old.Objs[name]
		var n []byte
		inNew := false
		if nw != nil {
			n, inNew = nw.Objs[name]
		}
		var asOld, asNew bool
		if !present[name] {
			asOld, asNew = !inOld, nw != nil && !inNew
			if !asOld && !asNew {
				return fmt.Errorf("%s is gone (it held %d bytes, sha256 %x)", name, len(o), sha256.Sum256(o))
			}
		} else {
			if !inOld && !inNew {
				return fmt.Errorf("%s exists but the model has no such object", name)
			}
			got, err := pc.ob(root, "export", name, "-")
			if err != nil {
				return fmt.Errorf("%s does not export: %w", name, err)
			}
			asOld, asNew = inOld && bytes.Equal(got, o), inNew && bytes.Equal(got, n)
			if !asOld && !asNew {
				if !blockish || !inOld || !inNew || len(o) != len(n) || len(got) != len(o) {
					return fmt.Errorf("%s differs from the model: %s", name, describeDiff(got, o, inOld, n, inNew))
				}
				if b := mixedBlocks(got, o, n); b >= 0 {
					return fmt.Errorf("%s: block %d is neither its content before nor after the write in flight", name, b)
				}
			}
		}
		if asOld && !asNew {
			onlyOld = append(onlyOld, name)
		}
		if asNew && !asOld {
			onlyNew = append(onlyNew, name)
		}
	}
	if !blockish && len(onlyOld) > 0 && len(onlyNew) > 0 {
		return fmt.Errorf("the command in flight was half done: %v as before it, %v as after it", onlyOld, onlyNew)
	}
	return nil
}

// mixedBlocks returns -1 if every block of got equals that of a or of b,
// else the first block that equals neither.
func mixedBlocks(got, a, b []byte) int {
	for off := 0; off < len(got); off += pcBlock {
		end := min(off+pcBlock, len(got))
		if !bytes.Equal(got[off:end], a[off:end]) && !bytes.Equal(got[off:end], b[off:end]) {
			return off / pcBlock
		}
	}
	return -1
}

func describeDiff(got, o []byte, inOld bool, n []byte, inNew bool) string {
	want := o
	if !inOld {
		want = n
	}
	if len(got) != len(want) {
		return fmt.Sprintf("%d bytes, the model %d", len(got), len(want))
	}
	first, count := -1, 0
	for off := 0; off < len(got); off += pcBlock {
		end := min(off+pcBlock, len(got))
		if !bytes.Equal(got[off:end], want[off:end]) {
			if first < 0 {
				first = off
			}
			count++
		}
	}
	zero := first >= 0 && bytes.Count(got[first:min(first+pcBlock, len(got))], []byte{0}) == min(pcBlock, len(got)-first)
	return fmt.Sprintf("%d blocks differ, the first at byte %d (reads as zeros: %v)", count, first, zero)
}

// probe checks that obdvol goes on working after the recovery: a write
// into the first volume, a snapshot of it, and the snapshot reads back as
// the volume read before with the write.
func (pc *powercut) probe(root string) error {
	out, err := pc.ob(root, "list", "--json")
	if err != nil {
		return err
	}
	var l pcList
	if err := json.Unmarshal(out, &l); err != nil || len(l.Volumes) == 0 {
		return err // nothing to probe
	}
	v := l.Volumes[0].Name
	before, err := pc.ob(root, "export", v, "-")
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	buf := bytes.Repeat([]byte("probe after a power cut "), 200)[:4000]
	if err := os.WriteFile("/tmp/pc-probe", buf, 0o600); err != nil {
		return err
	}
	if _, err := pc.ob(root, "import", v, "/tmp/pc-probe", "--offset", "100"); err != nil {
		return fmt.Errorf("probe: a write after the recovery: %w", err)
	}
	if _, err := pc.ob(root, "snapshot", v+"@probe"); err != nil {
		return fmt.Errorf("probe: a snapshot after the recovery: %w", err)
	}
	got, err := pc.ob(root, "export", v+"@probe", "-")
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	copy(before[100:], buf)
	if !bytes.Equal(got, before) {
		return fmt.Errorf("probe: %s@probe differs from what was written: %s", v, describeDiff(got, before, true, nil, false))
	}
	return nil
}

// stopDaemon stops the host daemon that obdvol activate started on root
// (it keeps files open under root/run: the filesystem would not unmount)
// and waits until it has exited: its lock on root/run/daemon.lock is
// free (a zombie nobody reaps still answers kill(pid, 0)).
func stopDaemon(root string) error {
	path := root + "/run/daemon.lock"
	b, err := os.ReadFile(path)
	if err != nil {
		return nil // none was ever started
	}
	var pid int
	fmt.Sscanf(string(b), "%d", &pid)
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for i := 0; i < 1200; i++ {
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			return nil
		}
		if i == 0 && pid > 0 {
			unix.Kill(pid, unix.SIGTERM)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the obdvol daemon (pid %d) did not stop in 60s", pid)
}
