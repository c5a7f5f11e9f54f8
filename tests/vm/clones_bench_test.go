package vm

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestUblkClonesBenchVM (make bench-vm; skipped otherwise) is the ublk
// half of the clones bench (the NBD half: tests/bench/clones.go): N
// clones of one golden activated at once through one obdvol daemon in
// the VM (N = 1, 16, 64; activate --queues 1), 64 4K random reads in
// flight over the N devices; aggregate IOPS and the daemon's RSS per N
// in interleaved rounds, medians with min-max, and the targets
// (guest/clonesbench.go). TCG figures.
//
// OBDVOL_VM_BENCH_ROUNDS (default 5) and OBDVOL_VM_BENCH_SECONDS (default
// 2) as TestUblkBenchVM; OBDVOL_VM_CLONES_N (default "1 16 64") the N.
func TestUblkClonesBenchVM(t *testing.T) {
	if os.Getenv("OBDVOL_VM_BENCH") != "1" {
		t.Skip("a benchmark: make bench-vm (OBDVOL_VM_BENCH=1)")
	}
	rounds, secs, ns := os.Getenv("OBDVOL_VM_BENCH_ROUNDS"), os.Getenv("OBDVOL_VM_BENCH_SECONDS"), os.Getenv("OBDVOL_VM_CLONES_N")
	if rounds == "" {
		rounds = "5"
	}
	if secs == "" {
		secs = "2"
	}
	if ns == "" {
		ns = "1 16 64"
	}
	for _, f := range strings.Fields(rounds + " " + secs + " " + ns) {
		if strings.Trim(f, "0123456789.") != "" {
			t.Fatalf("OBDVOL_VM_BENCH_ROUNDS/SECONDS/CLONES_N: %q is not a number", f)
		}
	}
	h := newHarness(t)
	out, err := h.boot(t, "insmod /lib/modules/loop.ko\n/guest clonesbench "+rounds+" "+secs+" "+ns+"\n",
		BootOptions{Timeout: 40 * time.Minute, MemoryMB: 1536})
	logPrefixed(t, out, "clones-bench:")
	if problems := checkConsole(out, []string{"OBDVOL-VM-UBLK-LOADED", "OBDVOL-VM-clonesbench OK", "OBDVOL-VM-DONE"}); len(problems) > 0 {
		t.Fatalf("%s (qemu: %v)\nconsole tail:\n%s", strings.Join(problems, "\n"), err, tail(out))
	}
}
