package daemon

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obdvol/obdvol/device"
	"github.com/obdvol/obdvol/metrics"
	"github.com/obdvol/obdvol/volume"
	dto "github.com/prometheus/client_model/go"
)

// With Config.Metrics, what the frontends serve is instrumented and still
// a device.Mapper: nbdinfo --map (NBD BLOCK_STATUS) reports the holes of
// an export; deactivate forgets the volume's series.
func TestMetricsKeepBlockStatus(t *testing.T) {
	needTool(t, "qemu-io", "nbdinfo")
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	if _, err := m.Create("v", 4<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := metrics.New()
	h, err := Open(Config{Root: root, Manager: m, Logf: t.Logf, Metrics: c})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	defer h.Stop()
	st, err := h.ServeNBD(&Request{Op: OpServeNBD, Volumes: []string{"v"}, Listen: "unix:" + filepath.Join(t.TempDir(), "s")})
	if err != nil {
		t.Fatal(err)
	}
	a := h.get("v")
	if _, ok := h.backend(a.v).(device.Mapper); !ok {
		t.Fatal("the instrumented backend lost device.Mapper")
	}
	qemuIO(t, st[0].Device, "write -P 0x11 1M 64k", "flush")
	out, err := exec.Command("nbdinfo", "--map", st[0].Device).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo --map: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "hole") || !strings.Contains(string(out), "data") {
		t.Fatalf("nbdinfo --map through the instrumented export shows no holes and data:\n%s", out)
	}
	mfs, err := c.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if !hasVolumeSeries(mfs, "v") {
		t.Fatal("no series of v while exported")
	}
	if _, err := h.Deactivate("v"); err != nil {
		t.Fatal(err)
	}
	if mfs, _ = c.Gather(); hasVolumeSeries(mfs, "v") {
		t.Fatal("v's series stay after deactivate")
	}
}

func hasVolumeSeries(mfs []*dto.MetricFamily, vol string) bool {
	for _, mf := range mfs {
		if mf.GetName() != "obdvol_volume_ops_total" {
			continue
		}
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if l.GetName() == "volume" && l.GetValue() == vol {
					return true
				}
			}
		}
	}
	return false
}
