package daemon

import (
	"os"
	"runtime/debug"
	"testing"
)

// The daemon's soft memory limit is its cache plus headroom, unless the
// operator set GOMEMLIMIT.
func TestLimitMemory(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(prev)
	t.Setenv("GOMEMLIMIT", "")
	os.Unsetenv("GOMEMLIMIT")
	if got := LimitMemory(256 << 20); got != 256<<20+MemoryHeadroom || debug.SetMemoryLimit(-1) != got {
		t.Fatalf("LimitMemory(256M) = %d, runtime limit %d", got, debug.SetMemoryLimit(-1))
	}
	t.Setenv("GOMEMLIMIT", "1GiB")
	debug.SetMemoryLimit(prev)
	if got := LimitMemory(256 << 20); got != 0 || debug.SetMemoryLimit(-1) != prev {
		t.Fatalf("with GOMEMLIMIT set: LimitMemory = %d, runtime limit %d", got, debug.SetMemoryLimit(-1))
	}
}
