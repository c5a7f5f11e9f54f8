package fleet

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// buildObdvol builds the CLI the hosts run.
func buildObdvol(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "obdvol")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/obdvol/obdvol/cmd/obdvol")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("building obdvol: %v", err)
	}
	return bin
}

// Two hosts, a 16 MiB golden: the origin's egress is counted per mode.
// Eager pulls from the origin cost each host the snapshot; through a
// mirror the origin sends it about once; lazy pulls without a fill cost
// about the working set per host, and so does the default fill policy
// (mirror-only) without a mirror.
func TestFleetEgress(t *testing.T) {
	if _, err := exec.LookPath("qemu-io"); err != nil {
		t.Skip("qemu-io not installed (make deps)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const n = 2
	f, err := Setup(ctx, Config{Bin: buildObdvol(t), Work: t.TempDir(), N: n, GoldenMiB: 16, WorkingPct: 5, ReadKiB: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.StoredBytes < 4<<20 || f.StoredBytes > 16<<20 {
		t.Fatalf("stored size %d of a 16 MiB half-compressible golden", f.StoredBytes)
	}
	eager, err := f.Run(ctx, Mode{Name: "eager"})
	if err != nil {
		t.Fatal(err)
	}
	if eager.Egress < n*f.StoredBytes || eager.Egress > n*f.StoredBytes*11/10 {
		t.Errorf("eager: origin sent %d bytes, want about %d x %d", eager.Egress, n, f.StoredBytes)
	}
	mirror, err := f.Run(ctx, Mode{Name: "mirror", ViaMirror: true})
	if err != nil {
		t.Fatal(err)
	}
	if mirror.Egress < f.StoredBytes {
		t.Errorf("mirror: origin sent %d bytes, less than the snapshot (%d): the mirror's fetch was not counted", mirror.Egress, f.StoredBytes)
	}
	lazy, err := f.Run(ctx, Mode{Name: "lazy", Lazy: true, Fill: "none"})
	if err != nil {
		t.Fatal(err)
	}
	// The working set is counted in disk bytes; the origin sends them
	// compressed (about half, for this golden), plus what read-ahead
	// fetched around them (make bench-fleet prints the ratio at scale).
	if lazy.Egress < n*f.WorkingBytes/4 || lazy.Egress > eager.Egress/2 {
		t.Errorf("lazy, no fill: origin sent %d bytes, want about the working sets (%d x %d, compressed) and well under eager (%d)", lazy.Egress, n, f.WorkingBytes, eager.Egress)
	}
	for i, h := range lazy.Hosts {
		if h.Ready <= 0 || h.FirstRead < h.Ready || h.WorkingSet < h.FirstRead {
			t.Errorf("host %d timeline out of order: %+v", i, h)
		}
	}
	def, err := f.Run(ctx, Mode{Name: "default", Lazy: true})
	if err != nil {
		t.Fatal(err)
	}
	if def.Egress > lazy.Egress*11/10 {
		t.Errorf("lazy, default fill policy: origin sent %d bytes, more than with no fill (%d)", def.Egress, lazy.Egress)
	}
	for _, r := range []Result{eager, mirror, lazy, def} {
		t.Logf("%-8s origin egress %9d bytes, %d blob GETs", r.Mode.Name, r.Egress, r.BlobGets)
	}
	now, err := f.Run(ctx, Mode{Name: "fill-now", Lazy: true, Fill: "now", FillArgs: []string{"--fill-rate", "0"}, WaitFill: true})
	if err != nil {
		t.Fatal(err)
	}
	if now.Egress < n*f.StoredBytes {
		t.Errorf("lazy, fill now: origin sent %d bytes, less than every host's copy (%d x %d)", now.Egress, n, f.StoredBytes)
	}
}
