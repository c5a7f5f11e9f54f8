package torture

import (
	"flag"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obdvol/obdvol/tests/regtest"
)

var (
	duration = flag.Duration("torture.duration", 0, "how long to run random operations (0: skip the test; make torture-short sets it)")
	seedFlag = flag.Int64("torture.seed", 0, "seed of the run (0: a new one, printed); a failing seed replays its run")
	binFlag  = flag.String("torture.bin", "", "obdvol binary to drive (default: go build ./cmd/obdvol)")
	tmpfsMB  = flag.Int("torture.tmpfs", 64, "size in MiB of the tmpfs root used to inject ENOSPC (0: no tmpfs, no ENOSPC)")
	keepFlag = flag.Bool("torture.keep", false, "keep the work directory even when the run passes")
	maxFind  = flag.Int("torture.max-findings", 12, "stop the run after this many findings")
)

// TestTorture drives real obdvol processes on one root with random
// operations and faults, drawn from one seed, and checks every volume and
// snapshot against the model of what was acknowledged. See doc.go.
func TestTorture(t *testing.T) {
	if *duration <= 0 {
		t.Skip("no -torture.duration: run make torture-short or make torture DURATION=30m")
	}
	seed := *seedFlag
	if seed == 0 {
		seed = time.Now().UnixNano() % 1_000_000_000
	}
	t.Logf("torture seed %d, duration %s (replay: go test ./tests/torture -run TestTorture -torture.duration=%s -torture.seed=%d)",
		seed, *duration, *duration, seed)
	dir, err := os.MkdirTemp("", "obdvol-torture-")
	if err != nil {
		t.Fatal(err)
	}
	w := &world{
		t: t, seed: seed, rng: rand.New(rand.NewSource(seed)), dir: dir,
		vols: map[string]*vol{}, tags: map[string]*tag{}, seen: map[string]bool{},
		cmdTimeout: 30 * time.Second, maxVols: 10, exportDir: filepath.Join(dir, "export"),
	}
	for _, d := range []string{"s", "export", "reg", "mnt"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	w.bin = *binFlag
	if w.bin == "" {
		w.bin = filepath.Join(dir, "obdvol")
		build := exec.Command("go", "build", "-o", w.bin, "./cmd/obdvol")
		build.Dir = "../.."
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}
	if _, err := exec.LookPath("strace"); err == nil {
		w.strace = true
	} else {
		t.Logf("strace not installed (apt-get install strace): no kills at exact syscalls, no catalogue stalls, no slowed pulls")
	}
	w.reg, err = regtest.StartIn(filepath.Join(dir, "reg"))
	if err != nil {
		t.Fatal(err)
	}
	w.root = filepath.Join(dir, "root")
	w.origin = filepath.Join(dir, "origin")
	if *tmpfsMB > 0 {
		mnt := filepath.Join(dir, "mnt")
		out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm", *tmpfsMB), "torture", mnt).CombinedOutput()
		if err != nil {
			t.Logf("no tmpfs root (%v: %s): running without ENOSPC", err, strings.TrimSpace(string(out)))
		} else {
			w.mnt, w.root, w.ballast = mnt, filepath.Join(mnt, "root"), filepath.Join(mnt, "ballast")
		}
	}
	old := syscall.Umask(0) // serve must create its socket 0600 whatever the umask
	defer func() {
		for _, p := range w.procs {
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		w.reg.Stop()
		syscall.Umask(old)
		if w.mnt != "" {
			exec.Command("umount", w.mnt).Run()
		}
		if !t.Failed() && !*keepFlag {
			os.RemoveAll(dir)
		} else {
			t.Logf("work directory kept: %s", dir)
		}
	}()

	start := time.Now()
	w.deadline = start.Add(*duration)
	counts := map[string]int{}
	for time.Since(start) < *duration && len(w.findings) < *maxFind {
		w.step++
		w.reap(false)
		if w.enospc > 0 {
			w.enospc--
			if w.enospc == 0 {
				w.freeDisk()
				w.logf("ENOSPC over: space given back")
			}
		}
		for _, v := range w.sortedVols(func(v *vol) bool { return v.check && v.srv == nil && v.busy == nil }) {
			w.checkVol(v, false)
		}
		before := len(w.log)
		w.pickOp()
		if len(w.log) > before {
			counts[strings.Fields(w.log[before][6:])[0]]++
		}
	}
	w.finish()

	var names []string
	for n, c := range counts {
		names = append(names, fmt.Sprintf("%s %d", n, c))
	}
	sort.Strings(names)
	t.Logf("seed %d: %d steps in %s (%s); %d findings", seed, w.step, time.Since(start).Round(time.Second), strings.Join(names, ", "), len(w.findings))
	os.WriteFile(filepath.Join(dir, "oplog.txt"), []byte(strings.Join(w.log, "\n")+"\n"), 0o644)
	if len(w.findings) > 0 {
		var b strings.Builder
		fmt.Fprintf(&b, "torture seed %d: %d findings (replay: make torture DURATION=%s SEED=%d)\n", seed, len(w.findings), *duration, seed)
		for _, f := range w.findings {
			fmt.Fprintf(&b, "step %d [%s] %s\n", f.step, f.kind, f.msg)
		}
		log := w.log
		if len(log) > 400 {
			fmt.Fprintf(&b, "op log (last 400 of %d lines; all in %s):\n", len(log), filepath.Join(dir, "oplog.txt"))
			log = log[len(log)-400:]
		} else {
			b.WriteString("op log:\n")
		}
		b.WriteString(strings.Join(log, "\n"))
		t.Error(b.String())
	}
}

// finish stops every process, gives the space back, checks every volume
// and snapshot, verifies every volume, then deletes everything and checks
// that gc left nothing behind.
func (w *world) finish() {
	w.step++
	w.logf("finish: stop servers, wait for commands, check everything")
	w.inject = ""
	if w.enospc > 0 {
		w.enospc = 0
		w.freeDisk()
	}
	for _, v := range w.sortedVols(served) {
		w.stopServer(v, false)
	}
	w.reap(true)
	for _, v := range w.sortedVols(func(*vol) bool { return true }) {
		w.checkVol(v, true)
	}
	for _, v := range w.sortedVols(idle) {
		if p := w.run("verify", v.name); !p.ok() {
			w.find("verify", "verify %s: %s", v.name, p.short())
		}
	}
	l, err := w.list()
	if err != nil {
		w.find("unreadable", "list: %v", err)
	}
	var names []string
	for n := range l {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := w.run("delete", n, "--force")
		if !p.ok() && strings.Contains(p.out.String(), "is active on") {
			// Reported already (stale): a clean serve and stop clears it.
			sock := filepath.Join(w.dir, "s", "final.sock")
			if q, err := w.start("obdvol serve "+n+" (to clear it)", "", "serve", "--foreground", n, "--nbd", "unix:"+sock); err == nil {
				time.Sleep(300 * time.Millisecond)
				q.cmd.Process.Signal(syscall.SIGTERM)
				w.wait(q, w.cmdTimeout)
			}
			p = w.run("delete", n, "--force")
		}
		if !p.ok() {
			if !strings.Contains(p.out.String(), "is active on") {
				w.find("leak", "delete %s --force after the run: %s", n, p.short())
			}
			w.logf("  no leak check: volume %s remains", n)
			return
		}
	}
	w.run("gc")
	var left []string
	for _, d := range []string{"blobs", "partial", "tmp", "volumes"} {
		filepath.WalkDir(filepath.Join(w.root, d), func(path string, e fs.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				rel, _ := filepath.Rel(w.root, path)
				left = append(left, rel)
			}
			return nil
		})
	}
	if len(left) > 0 {
		if len(left) > 20 {
			left = append(left[:20], fmt.Sprintf("... %d more", len(left)-20))
		}
		w.find("leak", "after deleting every volume and gc, %d files remain under the root: %s", len(left), strings.Join(left, " "))
	}
}
