package vm

import (
	"context"
	"embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// scenarios are the shell scripts run inside the VM; 0-lib.sh holds the
// helpers (the check function t) every other script uses.
//
//go:embed scenarios/*.sh
var scenarios embed.FS

// The harness boots a kernel with ublk and loads the module; a static Go
// program serves a volume as /dev/ublkbN there and checks O_DIRECT writes,
// reads, flushes and discards against a model; then the scenarios drive
// the real obdvol binary (activate, live snapshot, rollback, ext4,
// deactivate under load, kill -9 of the server and recovery).
func TestBootUblkKernel(t *testing.T) {
	h := newHarness(t)
	script, checks := loadScenarios(t, "1-*.sh", "2-*.sh", "3-*.sh")
	out, err := h.boot(t, "/guest preflight\n/guest io\n"+script, BootOptions{Timeout: 5 * time.Minute})
	want := []string{"OBDVOL-VM-UBLK-LOADED", "OBDVOL-VM-preflight OK", "OBDVOL-VM-io OK"}
	for _, c := range checks {
		want = append(want, "OBDVOL-VM-OK "+c)
	}
	want = append(want, "OBDVOL-VM-DONE")
	if problems := checkConsole(out, want); len(problems) > 0 {
		os.WriteFile(filepath.Join(os.TempDir(), "obdvol-vm-console.log"), []byte(out), 0o644)
		t.Fatalf("%s (qemu: %v)\nmarkers:\n%s\nconsole tail:\n%s", strings.Join(problems, "\n"), err, markers(out), tail(out))
	}
	t.Logf("%d checks passed", len(checks))
}

// TestDaemonUblk runs the host daemon's ublk paths on the VM's kernel
// (scenario 4): 8 devices activated through the daemon with ext4 and
// fsync-ing writers, kill -9 of the daemon, `obdvol daemon` started again
// reattaches all of them (no I/O error, every fsynced file intact, e2fsck
// clean); a clean stop leaves the devices for the next daemon too.
func TestDaemonUblk(t *testing.T) {
	h := newHarness(t)
	h.scenarios(t, BootOptions{Timeout: 5 * time.Minute, MemoryMB: 1024}, "4-*.sh")
}

// TestDaemonReboot gives the VM a persistent disk for --root (an NVMe
// drive over a sparse image here) and boots twice (scenario 5): boot 1
// formats it, activates a volume through the daemon (persistent), writes
// and flushes known data and powers off with poweroff -f (no deactivate,
// --root not unmounted); boot 2 mounts it, starts obdvol daemon detached,
// and finds the device, /dev/obdvol/rb pointing at it, and the data.
func TestDaemonReboot(t *testing.T) {
	h := newHarness(t)
	disk := filepath.Join(t.TempDir(), "root.img")
	if err := SparseDisk(disk, 512<<20); err != nil {
		t.Fatal(err)
	}
	o := BootOptions{Timeout: 4 * time.Minute, MemoryMB: 768, Disk: disk}
	h.scenarios(t, o, "5-reboot-a.sh")
	h.scenarios(t, o, "5-reboot-b.sh")
}

// TestDaemonClones serves 16 clones of one golden snapshot as ublk devices
// from one daemon (scenario 6): each reads back byte-exact (sha256 of the
// golden's content), the golden's chunks are decompressed once (the
// daemon's cache counters, from obdvol daemon status), the daemon's
// Prometheus endpoint scraped over HTTP counts the bytes each clone read
// and the same decompressions, and the daemon's RSS with 16 devices is at
// most 1.5 x its RSS with one + 16 x 2 MiB (both printed).
func TestDaemonClones(t *testing.T) {
	h := newHarness(t)
	if help, _ := exec.Command(h.files["bin/obdvol"], "daemon", "--help").Output(); !regexp.MustCompile(`(?m)^\s+status\s`).Match(help) {
		t.Skip("obdvol daemon status (the daemon's cache counters) is not in this tree yet")
	}
	h.scenarios(t, BootOptions{Timeout: 5 * time.Minute, MemoryMB: 1536}, "6-*.sh")
}

// TestDaemonGrow runs obdvol resize on an active volume with ext4 mounted
// on its ublk device (scenario 7): on a kernel with UPDATE_SIZE (6.16+,
// OBDVOL_VM_KERNEL_DIR) the device grows in place and resize2fs grows the
// mounted filesystem; on Debian's 6.12 the grow is refused with a message
// naming UPDATE_SIZE and the kernel, and nothing changes.
func TestDaemonGrow(t *testing.T) {
	h := newHarness(t)
	if help, _ := exec.Command(h.files["bin/obdvol"], "resize", "--help").Output(); !strings.Contains(string(help), "grows online") {
		t.Skip("obdvol resize of an active volume is not in this tree yet")
	}
	libs, err := WithLibs("resize2fs")
	if err != nil {
		t.Fatal(err)
	}
	for g, p := range libs {
		h.files[g] = p
	}
	h.scenarios(t, BootOptions{Timeout: 4 * time.Minute, MemoryMB: 768}, "7-*.sh")
}

// scenarios boots once with the named scenarios and requires every one of
// their checks to pass; lines the scenarios print as "sN: ..." are logged.
func (h *harness) scenarios(t *testing.T, o BootOptions, patterns ...string) string {
	t.Helper()
	script, checks := loadScenarios(t, patterns...)
	out, err := h.boot(t, script, o)
	want := []string{"OBDVOL-VM-UBLK-LOADED"}
	for _, c := range checks {
		want = append(want, "OBDVOL-VM-OK "+c)
	}
	want = append(want, "OBDVOL-VM-DONE")
	for _, l := range strings.Split(out, "\n") {
		if m := scenarioLog.FindString(l); m != "" {
			t.Log(strings.TrimSpace(m))
		}
	}
	log := filepath.Join(os.TempDir(), "obdvol-vm-"+t.Name()+"-"+strings.NewReplacer("*", "", ".sh", "").Replace(patterns[0])+"-console.log")
	os.WriteFile(log, []byte(out), 0o644)
	if problems := checkConsole(out, want); len(problems) > 0 {
		t.Fatalf("%s (qemu: %v; console in %s)\nmarkers:\n%s\nconsole tail:\n%s", strings.Join(problems, "\n"), err, log, markers(out), tail(out))
	}
	t.Logf("%d checks passed", len(checks))
	return out
}

// scenarioLog matches what a scenario prints for the test log.
var scenarioLog = regexp.MustCompile(`\bs[0-9]+: .*`)

// TestPowerCut cuts power at flush points of a workload of real obdvol
// commands and checks that every acknowledged write and snapshot survives
// (guest/powercut.go says how). The short run checks a few points spread
// over one workload; OBDVOL_POWERCUT_LONG=1 (make powercut) boots again
// with new seeds until OBDVOL_POWERCUT_MIN (200) cut points were checked,
// every one of them. OBDVOL_POWERCUT_SEED replays a seed;
// OBDVOL_POWERCUT_FORCE=KIND makes every other command of that kind
// (guest/powercut.go's pcOps: device, pull, rollback...).
func TestPowerCut(t *testing.T) {
	h := newHarness(t)
	seed := time.Now().UnixNano() % 1_000_000
	if s := os.Getenv("OBDVOL_POWERCUT_SEED"); s != "" {
		if _, err := fmt.Sscan(s, &seed); err != nil {
			t.Fatalf("OBDVOL_POWERCUT_SEED=%q: %v", s, err)
		}
	}
	long := os.Getenv("OBDVOL_POWERCUT_LONG") == "1"
	steps, points, probe, subsets, fsck, want, timeout := 10, 8, 4, 1, false, 1, 6*time.Minute
	if long {
		steps, points, probe, subsets, fsck, want, timeout = 24, 0, 5, 1, true, 200, 40*time.Minute
		if s := os.Getenv("OBDVOL_POWERCUT_MIN"); s != "" {
			fmt.Sscan(s, &want)
		}
	}
	script, checks := loadScenarios(t, "powercut.sh")
	total := 0
	for boot := 0; total < want; boot++ {
		vars := fmt.Sprintf("SEED=%d STEPS=%d POINTS=%d PROBE=%d FSCK=%v FORCE=%s SUBSETS=%d\n", seed, steps, points, probe, fsck,
			os.Getenv("OBDVOL_POWERCUT_FORCE"), subsets)
		o := BootOptions{Timeout: timeout, MemoryMB: 1536}
		if long {
			f, err := os.CreateTemp("", fmt.Sprintf("obdvol-powercut-%d-*.log", seed))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("seed %d: console in %s", seed, f.Name())
			o.Console = f
			defer f.Close()
		}
		out, err := h.boot(t, vars+script, o)
		wantLines := []string{"OBDVOL-VM-POWERCUT-EXIT 0", "OBDVOL-VM-DONE"}
		for _, c := range checks {
			wantLines = append(wantLines, "OBDVOL-VM-OK "+c)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "powercut:") {
				t.Log(strings.TrimSpace(l))
			}
		}
		if problems := checkConsole(out, wantLines); len(problems) > 0 {
			t.Fatalf("seed %d (replay: OBDVOL_POWERCUT_SEED=%d): %s (qemu: %v)\nconsole tail:\n%s",
				seed, seed, strings.Join(problems, "\n"), err, tail(out))
		}
		n := 0
		if m := regexp.MustCompile(`OBDVOL-VM-POWERCUT-POINTS (\d+)`).FindStringSubmatch(out); m != nil {
			fmt.Sscan(m[1], &n)
		}
		if n == 0 {
			t.Fatalf("seed %d: no cut point checked:\n%s", seed, tail(out))
		}
		total += n
		t.Logf("seed %d: %d cut points checked (%d in all)", seed, n, total)
		seed++
	}
}

// harness holds what every VM test boots with: the kernel and an
// initramfs's files (the guest helper, obdvol, e2fsprogs, dmsetup).
type harness struct {
	k     *Kernel
	dir   string
	files map[string]string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 not installed: run make deps")
	}
	cache, _ := filepath.Abs("../../.cache/vm")
	if d := os.Getenv("OBDVOL_VM_KERNEL_DIR"); d != "" {
		// Opt-in: another kernel unpacked there the same way (vmlinuz,
		// modules/NAME.ko), e.g. one with ublk UPDATE_SIZE (6.16+).
		cache = d
	}
	k, err := FetchKernel(cache)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	guest := filepath.Join(dir, "guest")
	obdvol := filepath.Join(dir, "obdvol")
	for out, pkg := range map[string]string{guest: "./guest", obdvol: "../../cmd/obdvol"} {
		build := exec.Command("go", "build", "-o", out, pkg)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
	}
	files, err := WithLibs("mke2fs", "e2fsck", "dmsetup")
	if err != nil {
		t.Fatal(err)
	}
	files["guest"], files["bin/obdvol"] = guest, obdvol
	return &harness{k: k, dir: dir, files: files}
}

func (h *harness) boot(t *testing.T, script string, o BootOptions) (string, error) {
	t.Helper()
	dir, err := os.MkdirTemp(h.dir, "boot-")
	if err != nil {
		t.Fatal(err)
	}
	initrd, err := Initramfs(dir, h.k, h.files, script)
	if err != nil {
		t.Fatal(err)
	}
	// A boot with a persistent disk changes it: a boot again must start
	// from the disk as it was (a sparse copy taken first).
	saved := ""
	if o.Disk != "" {
		saved = filepath.Join(dir, "disk-before.img")
		if b, err := exec.Command("cp", "--sparse=always", o.Disk, saved).CombinedOutput(); err != nil {
			t.Fatalf("save %s: %v: %s", o.Disk, err, b)
		}
		defer os.Remove(saved)
	}
	for attempt := 1; ; attempt++ {
		if attempt > 1 && saved != "" {
			if b, err := exec.Command("cp", "--sparse=always", saved, o.Disk).CombinedOutput(); err != nil {
				t.Fatalf("restore %s: %v: %s", o.Disk, err, b)
			}
		}
		start := time.Now()
		out, err := Boot(context.Background(), h.k, initrd, o)
		t.Logf("the VM ran %v", time.Since(start).Round(time.Second))
		// qemu's TCG occasionally traps a guest kernel's int3-based live
		// text patching on another vCPU (seen once in ~10 runs: "Oops:
		// int3" in get_random_u32, no obdvol code on the stack). That is
		// the emulator, not what is tested: boot once more, the same
		// script and seed, every check again. Any other oops fails.
		if attempt == 1 && strings.Contains(out, "Oops: int3") {
			t.Logf("the guest kernel trapped on int3 under TCG (emulator flake); booting again:\n%s", tail(out))
			continue
		}
		return out, err
	}
}

var checkName = regexp.MustCompile(`(?m)^\s*t ([a-z0-9-]+) `)

// loadScenarios returns 0-lib.sh followed by the scripts matching the
// patterns, and the names of the checks they hold (each must print OK).
func loadScenarios(t *testing.T, patterns ...string) (string, []string) {
	t.Helper()
	names := []string{"scenarios/0-lib.sh"}
	for _, p := range patterns {
		m, err := scenarioGlob(p)
		if err != nil || len(m) == 0 {
			t.Fatalf("no scenario matches %s (%v)", p, err)
		}
		names = append(names, m...)
	}
	var script strings.Builder
	var checks []string
	seen := map[string]bool{}
	for _, n := range names {
		b, err := scenarios.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&script, "# %s\n%s\n", n, b)
		for _, m := range checkName.FindAllStringSubmatch(string(b), -1) {
			if seen[m[1]] {
				t.Fatalf("check %s is named twice", m[1])
			}
			seen[m[1]] = true
			checks = append(checks, m[1])
		}
	}
	return script.String(), checks
}

func scenarioGlob(p string) ([]string, error) {
	entries, err := scenarios.ReadDir("scenarios")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if ok, _ := filepath.Match(p, e.Name()); ok {
			out = append(out, "scenarios/"+e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// errorLine matches console lines that betray a failure even when every
// marker is there: a shell command's complaint (mount falling back to a
// loop device over a plain file, cmp, dd), a Go panic, a kernel oops.
var errorLine = regexp.MustCompile(`(?i)can't|cannot|no such file|not a block device|error|fail|differ|panic|oops|BUG:|segfault|killed|not found|permission denied|read-only file system`)

// escape matches the terminal control sequences the firmware prints.
var escape = regexp.MustCompile(`\x1b(\[[0-9;?]*[a-zA-Z]|[a-zA-Z])`)

// checkConsole returns what is wrong with a VM's console output: a wanted
// marker line missing, a FAIL marker, or an error line anywhere.
func checkConsole(out string, want []string) []string {
	var problems []string
	lines := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(escape.ReplaceAllString(l, ""))
		if i := strings.Index(l, "OBDVOL-VM-"); i > 0 {
			l = l[i:] // the firmware's last line may lack its newline
		}
		lines[l] = true
		switch {
		case strings.Contains(l, "FAIL"):
			problems = append(problems, "failed: "+l)
		case strings.HasPrefix(l, "OBDVOL-VM-OK "), strings.HasPrefix(l, "|"), strings.HasPrefix(l, "powercut:"):
			// a passed check; the output of a failed one (reported
			// above); the power-cut run's log (it fails with a FAIL line)
		case errorLine.MatchString(l):
			problems = append(problems, "error line on the console: "+l)
		}
	}
	for _, m := range want {
		if !lines[m] {
			problems = append(problems, "no line "+m)
		}
	}
	return problems
}

// The console checker rejects the output of the flaky run of issue 9 item
// 15: every success marker printed, but mount fell back to a loop device
// because /dev/ublkb0 had become a regular file.
func TestCheckConsoleRejectsErrorLines(t *testing.T) {
	want := []string{"OBDVOL-VM-OK s3-mount", "OBDVOL-VM-DONE"}
	good := "\x1bc\x1b[?7l\x1b[2JOBDVOL-VM-OK s3-mount\r\nOBDVOL-VM-DONE\r\n"
	if p := checkConsole(good, want); len(p) > 0 {
		t.Fatalf("a clean console was rejected: %v", p)
	}
	// As seen: the firmware's "Booting from ROM.." without its newline.
	good = "Booting from ROM..\x1bc\x1b[?7l\x1b[2JOBDVOL-VM-OK s3-mount\r\nOBDVOL-VM-DONE\r\n"
	if p := checkConsole(good, want); len(p) > 0 {
		t.Fatalf("a clean console was rejected: %v", p)
	}
	for _, bad := range []string{
		"mount: mounting /dev/ublkb0 on /mnt failed: Invalid argument\nOBDVOL-VM-OK s3-mount\nOBDVOL-VM-DONE\n",
		"losetup: can't setup loop device: No space left on device\nOBDVOL-VM-OK s3-mount\nOBDVOL-VM-DONE\n",
		"OBDVOL-VM-OK s3-mount\nOBDVOL-VM-FAIL s3-fsck\n  | e2fsck: Bad magic number\nOBDVOL-VM-DONE\n",
		"OBDVOL-VM-io FAIL step 3\nOBDVOL-VM-OK s3-mount\nOBDVOL-VM-DONE\n",
		"OBDVOL-VM-OK s3-mount\n", // no DONE
		"OBDVOL-VM-OK s3-mount-again\nOBDVOL-VM-DONE\n",
	} {
		if p := checkConsole(bad, want); len(p) == 0 {
			t.Errorf("accepted:\n%s", bad)
		}
	}
}

// Every scenario's checks are named once (a name is how the host knows
// which check did not print OK).
func TestScenarioChecksNamed(t *testing.T) {
	_, checks := loadScenarios(t, "[1-9]-*.sh")
	if len(checks) < 20 {
		t.Fatalf("only %d checks in the scenarios", len(checks))
	}
}

func tail(s string) string {
	if len(s) > 4000 {
		return s[len(s)-4000:]
	}
	return s
}

func markers(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "OBDVOL-VM") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, "\n")
}
