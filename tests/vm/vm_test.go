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
	files, err := WithLibs("mke2fs", "e2fsck")
	if err != nil {
		t.Fatal(err)
	}
	files["guest"], files["bin/obdvol"] = guest, obdvol
	initrd, err := Initramfs(dir, k, files, "/guest preflight\n/guest io\n"+cliScenario+fsScenario+recoveryScenario)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Boot(context.Background(), k, initrd, 3*time.Minute)
	t.Log(markers(out))
	for _, m := range []string{"OBDVOL-VM-UBLK-LOADED", "OBDVOL-VM-preflight OK", "OBDVOL-VM-io OK",
		"OBDVOL-VM-ACTIVE-AGAIN-REFUSED", "OBDVOL-VM-LIVE-SNAPSHOT", "OBDVOL-VM-ROLLBACK-REFUSED-WHILE-ACTIVE",
		"OBDVOL-VM-ROLLBACK-EXACT", "OBDVOL-VM-DEACTIVATED-CLEAN",
		"OBDVOL-VM-FS-MOUNTED", "OBDVOL-VM-FS-SNAPSHOT-FILES-EXACT", "OBDVOL-VM-FS-NEWER-FILE-GONE", "OBDVOL-VM-FSCK-CLEAN",
		"OBDVOL-VM-DEACTIVATE-UNDER-LOAD", "OBDVOL-VM-DATA-INTACT-AFTER-LOAD",
		"OBDVOL-VM-SERVER-KILLED", "OBDVOL-VM-RECOVERED", "OBDVOL-VM-NO-IO-ERRORS-AFTER-RECOVERY",
		"OBDVOL-VM-RECOVERY-DATA-INTACT", "OBDVOL-VM-RECOVERY-FSCK-CLEAN", "OBDVOL-VM-DONE"} {
		if !strings.Contains(out, m) {
			t.Fatalf("no %q in the console output (%v):\n%s", m, err, tail(out))
		}
	}
	if strings.Contains(out, "OBDVOL-VM-WRITER-ERROR") {
		t.Fatalf("the writer saw an I/O error across the server's crash and recovery:\n%s", markers(out))
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

// fsScenario: ext4 on the device, files, live snapshot, more files,
// rollback: the snapshot's files are there byte-exact, the newer one is
// gone, e2fsck is clean; then deactivate while a writer is busy, activate
// again, and what was flushed before is intact.
const fsScenario = `
O="obdvol --root /tmp/f --no-progress"
$O create fs --size 128M
$O activate fs
/usr/local/bin/mke2fs -q -F -t ext4 /dev/ublkb0 || echo OBDVOL-VM-MKFS-FAILED
mkdir -p /mnt && mount -t ext4 /dev/ublkb0 /mnt || echo OBDVOL-VM-MOUNT-FAILED
dd if=/dev/urandom of=/tmp/f1 bs=1M count=3 2>/dev/null
cp /tmp/f1 /mnt/f1 && echo hello > /mnt/hello && sync
$O snapshot fs@s1
dd if=/dev/urandom of=/mnt/newer bs=1M count=2 2>/dev/null && sync
umount /mnt
$O deactivate fs
$O rollback fs@s1
$O activate fs
mount -t ext4 /dev/ublkb0 /mnt && grep -q " /mnt " /proc/mounts && echo OBDVOL-VM-FS-MOUNTED
cmp /tmp/f1 /mnt/f1 && grep -q hello /mnt/hello && echo OBDVOL-VM-FS-SNAPSHOT-FILES-EXACT
[ ! -e /mnt/newer ] && echo OBDVOL-VM-FS-NEWER-FILE-GONE
umount /mnt
/usr/local/bin/e2fsck -fn /dev/ublkb0 >/dev/null 2>&1 && echo OBDVOL-VM-FSCK-CLEAN
dd if=/dev/urandom of=/tmp/g bs=1M count=4 2>/dev/null
dd if=/tmp/g of=/dev/ublkb0 bs=1M seek=64 conv=fsync 2>/dev/null
(while true; do dd if=/dev/urandom of=/dev/ublkb0 bs=64k count=16 seek=2000 conv=fsync 2>/dev/null || break; done) &
W=$!
sleep 1
$O deactivate fs && echo OBDVOL-VM-DEACTIVATE-UNDER-LOAD
kill $W 2>/dev/null; wait $W 2>/dev/null
$O activate fs
dd if=/dev/ublkb0 of=/tmp/h bs=1M skip=64 count=4 2>/dev/null
cmp /tmp/g /tmp/h && echo OBDVOL-VM-DATA-INTACT-AFTER-LOAD
$O deactivate fs
`

// recoveryScenario: ext4 mounted on the device, a writer busy, the server
// killed with SIGKILL; activate reattaches a new server to the same
// /dev/ublkbN (ublk user recovery): the writer and the mount go on without
// I/O errors, flushed data is intact, and the filesystem checks clean.
const recoveryScenario = `
O="obdvol --root /tmp/rc --no-progress"
dmesg -c >/dev/null
$O create rv --size 128M
$O activate rv
/usr/local/bin/mke2fs -q -F -t ext4 /dev/ublkb0
mount -t ext4 /dev/ublkb0 /mnt
dd if=/dev/urandom of=/tmp/k1 bs=1M count=4 2>/dev/null
cp /tmp/k1 /mnt/k1 && sync
(i=0; while [ $i -lt 200 ]; do dd if=/dev/urandom of=/mnt/busy bs=64k count=4 conv=fsync 2>/dev/null || echo OBDVOL-VM-WRITER-ERROR; i=$((i+1)); done) &
W=$!
sleep 1
P=$($O info rv | sed -n 's/.*pid \([0-9]*\)).*/\1/p')
kill -9 $P && echo OBDVOL-VM-SERVER-KILLED
sleep 1
$O activate rv && echo OBDVOL-VM-RECOVERED
wait $W
dmesg | grep -q "I/O error, dev ublkb0" || echo OBDVOL-VM-NO-IO-ERRORS-AFTER-RECOVERY
cmp /tmp/k1 /mnt/k1 && echo OBDVOL-VM-RECOVERY-DATA-INTACT
umount /mnt
/usr/local/bin/e2fsck -fn /dev/ublkb0 >/dev/null 2>&1 && echo OBDVOL-VM-RECOVERY-FSCK-CLEAN
$O deactivate rv
`
