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
	initrd, err := Initramfs(dir, k, map[string]string{"guest": guest}, "/guest preflight\n/guest io")
	if err != nil {
		t.Fatal(err)
	}
	out, err := Boot(context.Background(), k, initrd, 3*time.Minute)
	t.Log(markers(out))
	for _, m := range []string{"OBDVOL-VM-UBLK-LOADED", "OBDVOL-VM-preflight OK", "OBDVOL-VM-io OK", "OBDVOL-VM-DONE"} {
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
