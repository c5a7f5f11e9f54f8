package vm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUblkQueues checks the non-blocking ublk queues on the VM's kernel
// (guest/ublkq.go): the volume model check (guest io) through the async
// queues; on one queue, served by a shared ring thread (ublk.RingGroup,
// as in the daemon) that also serves a second device, a backend read held
// in the backend does not hold back 128 reads of other blocks of either
// device (an ordering check: every one of them returns while the slow
// read is still in the backend), and the ring thread exits once both
// devices stopped; the same with
// Serial, printed for comparison; and what the kernel offers for online
// grow (Debian's 6.12 has no UPDATE_SIZE: Resize must refuse with
// errors.ErrUnsupported; a kernel with it, OBDVOL_VM_KERNEL_DIR=an unpacked
// 6.16+ kernel, must grow the device, and ext4 mounted on it online).
func TestUblkQueues(t *testing.T) {
	h := newHarness(t)
	libs, err := WithLibs("resize2fs") // the online grow, on kernels that have it
	if err != nil {
		t.Fatal(err)
	}
	for g, p := range libs {
		h.files[g] = p
	}
	out, err := h.boot(t, "/guest io\n/guest slowread\n/guest slowread-serial\n/guest resize\n",
		BootOptions{Timeout: 5 * time.Minute, MemoryMB: 768})
	want := []string{"OBDVOL-VM-UBLK-LOADED", "OBDVOL-VM-io OK", "OBDVOL-VM-slowread OK",
		"OBDVOL-VM-slowread-serial OK", "OBDVOL-VM-resize OK", "OBDVOL-VM-DONE"}
	logPrefixed(t, out, "ublkq:")
	if problems := checkConsole(out, want); len(problems) > 0 {
		os.WriteFile(filepath.Join(os.TempDir(), "obdvol-vm-ublkq-console.log"), []byte(out), 0o644)
		t.Fatalf("%s (qemu: %v)\nmarkers:\n%s\nconsole tail:\n%s", strings.Join(problems, "\n"), err, markers(out), tail(out))
	}
}

// TestUblkBenchVM (make bench-vm; skipped otherwise) measures the queues
// in the VM: 4K random reads with 32 in flight and a 1 ms backend delay,
// async queues vs Serial (target >= 10x), and ublk vs a loop device over
// the same raw file, in interleaved rounds; it prints the median ratio
// with its min-max. The figures are TCG's (no KVM here): ratios only.
func TestUblkBenchVM(t *testing.T) {
	if os.Getenv("OBDVOL_VM_BENCH") != "1" {
		t.Skip("a benchmark: make bench-vm (OBDVOL_VM_BENCH=1)")
	}
	rounds, secs := os.Getenv("OBDVOL_VM_BENCH_ROUNDS"), os.Getenv("OBDVOL_VM_BENCH_SECONDS")
	if rounds == "" {
		rounds = "5"
	}
	if secs == "" {
		secs = "2"
	}
	h := newHarness(t)
	out, err := h.boot(t, "insmod /lib/modules/loop.ko\n/guest bench "+rounds+" "+secs+"\n",
		BootOptions{Timeout: 15 * time.Minute, MemoryMB: 1024})
	logPrefixed(t, out, "ublkq-bench:")
	if problems := checkConsole(out, []string{"OBDVOL-VM-UBLK-LOADED", "OBDVOL-VM-bench OK", "OBDVOL-VM-DONE"}); len(problems) > 0 {
		t.Fatalf("%s (qemu: %v)\nconsole tail:\n%s", strings.Join(problems, "\n"), err, tail(out))
	}
}

func logPrefixed(t *testing.T, out, prefix string) {
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, prefix); i >= 0 {
			t.Log(strings.TrimSpace(l[i:]))
		}
	}
}
