package daemon

import (
	"os"
	"runtime/debug"

	"golang.org/x/sys/unix"
)

// prSetIOFlusher is PR_SET_IO_FLUSHER (Linux 5.6): the process's memory
// allocations behave as if in an I/O flusher (no reclaim recursion into
// the block devices it serves itself).
const prSetIOFlusher = 57

// OOMScoreAdj is the daemon's /proc/self/oom_score_adj: the OOM killer
// takes almost anything else first (killing the server of a mounted
// filesystem's device would stall that filesystem until a restart).
const OOMScoreAdj = "-900"

// Harden sets what a userspace block server needs so as not to deadlock
// in memory reclaim: PR_SET_IO_FLUSHER and a low OOM score. Both need
// root (CAP_SYS_RESOURCE); failures are warnings through logf.
func Harden(logf func(string, ...any)) {
	if os.Geteuid() != 0 {
		logf("warning: not root: PR_SET_IO_FLUSHER and oom_score_adj not set")
		return
	}
	if err := unix.Prctl(prSetIOFlusher, 1, 0, 0, 0); err != nil {
		logf("warning: PR_SET_IO_FLUSHER: %v (memory reclaim may wait on this daemon's own devices)", err)
	}
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(OOMScoreAdj), 0); err != nil {
		logf("warning: oom_score_adj: %v", err)
	}
}

// MemoryHeadroom is what the daemon's soft memory limit allows beyond its
// chunk cache: indexes of open chains live in mapped files, so the Go heap
// is the cache, per-volume state and request buffers in flight.
const MemoryHeadroom = 192 << 20

// LimitMemory sets the Go runtime's soft memory limit to the cache size
// plus MemoryHeadroom, unless GOMEMLIMIT is set (the operator's word
// wins). Without it the collector lets the heap grow to twice the live
// heap, so a full cache could cost twice its size; the limit only makes
// the collector run sooner, it never fails an allocation. (Measured with
// tests/bench -only clones: a full 256 MiB cache, 64 clones, about 500
// MiB RSS of which about 140 MiB file-backed, mapped layers and indexes;
// the limit is not reached there.) It returns the limit set, or 0.
func LimitMemory(cacheBytes int) int64 {
	if os.Getenv("GOMEMLIMIT") != "" || cacheBytes <= 0 {
		return 0
	}
	limit := int64(cacheBytes) + MemoryHeadroom
	debug.SetMemoryLimit(limit)
	return limit
}
