package vm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The harness boots a kernel with ublk and loads the module; a static Go
// program serves a volume as /dev/ublkbN there and checks O_DIRECT writes,
// reads, flushes and discards against a model.
func TestBootUblkKernel(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 not installed: run make deps")
	}
	cache, _ := filepath.Abs("../../.cache/vm")
	k, err := FetchKernel(cache)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	guest := filepath.Join(dir, "guest")
	build := exec.Command("go", "build", "-o", guest, "./guest")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build guest: %v\n%s", err, out)
	}
	obdvol := filepath.Join(dir, "obdvol")
	build = exec.Command("go", "build", "-o", obdvol, "../../cmd/obdvol")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build obdvol: %v\n%s", err, out)
	}
	initrd, err := Initramfs(dir, k, map[string]string{"guest": guest, "bin/obdvol": obdvol},
		"/guest preflight\n/guest io\n"+cliScenario)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Boot(context.Background(), k, initrd, 3*time.Minute)
	t.Log(markers(out))
	for _, m := range []string{"OBDVOL-VM-UBLK-LOADED", "OBDVOL-VM-preflight OK", "OBDVOL-VM-io OK",
		"OBDVOL-VM-ACTIVE-AGAIN-REFUSED", "OBDVOL-VM-LIVE-SNAPSHOT", "OBDVOL-VM-ROLLBACK-REFUSED-WHILE-ACTIVE",
		"OBDVOL-VM-ROLLBACK-EXACT", "OBDVOL-VM-DEACTIVATED-CLEAN", "OBDVOL-VM-DONE"} {
		if !strings.Contains(out, m) {
			t.Fatalf("no %q in the console output (%v):\n%s", m, err, tail(out))
		}
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

// cliScenario drives the real obdvol binary: activate (detached), write,
// live snapshot, more writes, refusals while active, deactivate, rollback,
// activate again: the device holds exactly the snapshot's data.
const cliScenario = `
O="obdvol --root /tmp/r --no-progress"
$O create v --size 64M
$O activate v || echo OBDVOL-VM-ACTIVATE-FAILED
$O activate v 2>&1 | grep -q "already active" && echo OBDVOL-VM-ACTIVE-AGAIN-REFUSED
dd if=/dev/urandom of=/tmp/a bs=1M count=8 2>/dev/null
dd if=/tmp/a of=/dev/ublkb0 bs=1M conv=fsync 2>/dev/null
$O snapshot v@s1 && echo OBDVOL-VM-LIVE-SNAPSHOT
dd if=/dev/urandom of=/dev/ublkb0 bs=1M count=8 conv=fsync 2>/dev/null
$O rollback v@s1 2>&1 | grep -qi "active\|in use" && echo OBDVOL-VM-ROLLBACK-REFUSED-WHILE-ACTIVE
$O deactivate v
$O list | grep -q " - *$" && echo OBDVOL-VM-DEACTIVATED-CLEAN
$O rollback v@s1
$O activate v
dd if=/dev/ublkb0 of=/tmp/b bs=1M count=8 2>/dev/null
cmp /tmp/a /tmp/b && echo OBDVOL-VM-ROLLBACK-EXACT
$O deactivate v
`
