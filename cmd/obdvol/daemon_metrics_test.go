package main

import (
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrapeMetrics GETs http://addr/metrics from the daemon and parses it.
func scrapeMetrics(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s: %s", resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

// metricValue is the value of family name's series with labels lbl (a
// counter or gauge), and whether it exists.
func metricValue(mfs map[string]*dto.MetricFamily, name string, lbl map[string]string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.Metric {
		if len(m.Label) != len(lbl) {
			continue
		}
		for _, l := range m.Label {
			if lbl[l.GetName()] != l.GetValue() {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// The daemon with --metrics 127.0.0.1:0: the bound address is in daemon
// status; a clone of a golden exported over NBD gets known I/O from
// qemu-io, and /metrics reports exactly that I/O for the volume, and the
// shared chunk cache's counters move with the reads (daemon status says
// the same without Prometheus). Deactivated, the volume's series go.
func TestDaemonMetricsScrape(t *testing.T) {
	needTool(t, "qemu-io")
	h := newCLI(t)
	rng := rand.New(rand.NewSource(7))
	img := randomImage(rng, 4<<20, func(int) bool { return false })
	h.ok("create", "golden", "--size", "4M")
	h.ok("import", "golden", writeFile(t, "golden.img", img))
	h.ok("snapshot", "golden@g")
	h.ok("create", "vm1", "--from", "golden@g")
	h.startDaemon("--metrics", "127.0.0.1:0")

	st := h.json("daemon", "status")
	addr := jstr(t, st, "daemon", "metrics_addr")
	if !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
		t.Fatalf("daemon status metrics_addr %q: want the bound loopback address", addr)
	}
	if jint(t, st, "daemon", "rss_bytes") <= 0 {
		t.Errorf("daemon status rss_bytes: %v", st)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	uri := jstrs(t, h.json("serve", "vm1", "--nbd", "unix:"+sock), "serving")[0]
	lbl := func(op string) map[string]string { return map[string]string{"volume": "vm1", "op": op} }

	mfs := scrapeMetrics(t, addr)
	for _, op := range []string{"read", "write", "flush"} {
		if v, ok := metricValue(mfs, "obdvol_volume_ops_total", lbl(op)); !ok || v != 0 {
			t.Fatalf("precondition: vm1 %s ops before any I/O: %v %v", op, v, ok)
		}
	}
	hits0, _ := metricValue(mfs, "obdvol_chunk_cache_hits_total", nil)
	miss0, _ := metricValue(mfs, "obdvol_chunk_cache_misses_total", nil)
	dec0, _ := metricValue(mfs, "obdvol_chunk_cache_decompressions_total", nil)

	// 5 writes of 64 KiB (the second 2 MiB: the reads below, of the
	// first, come from the golden's layer), 3 reads of 64 KiB, 1 flush,
	// one qemu-io connection in writeback mode (its default,
	// writethrough, flushes after every write).
	args := []string{"-f", "raw", "-t", "writeback"}
	for i := 0; i < 5; i++ {
		args = append(args, "-c", fmt.Sprintf("write -P 0x6b %d 64k", 2<<20+i*(64<<10)))
	}
	args = append(args, "-c", "read 0 64k", "-c", "read 1M 64k", "-c", "read 0 64k", "-c", "flush")
	out, err := exec.Command("qemu-io", append(args, uri)...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed") {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}

	mfs = scrapeMetrics(t, addr)
	exact := []struct {
		name, op string
		want     float64
	}{
		{"obdvol_volume_ops_total", "write", 5},
		{"obdvol_volume_bytes_total", "write", 5 * 64 << 10},
		{"obdvol_volume_ops_total", "read", 3},
		{"obdvol_volume_bytes_total", "read", 3 * 64 << 10},
		{"obdvol_volume_op_duration_seconds", "write", 5},
		{"obdvol_volume_op_duration_seconds", "read", 3},
		{"obdvol_volume_errors_total", "write", 0},
		{"obdvol_volume_errors_total", "read", 0},
		{"obdvol_volume_errors_total", "flush", 0},
	}
	for _, e := range exact {
		if v, ok := metricValue(mfs, e.name, lbl(e.op)); !ok || v != e.want {
			t.Errorf("%s{volume=vm1,op=%s} = %v (present %v), want %v", e.name, e.op, v, ok, e.want)
		}
	}
	// Not exact: qemu's block layer flushes a writable image again when
	// it closes it (bdrv_close; qemu 8-9 do, and this one counts 2), a
	// detail of the client, not of the daemon: the explicit flush plus
	// at most that one.
	if v, _ := metricValue(mfs, "obdvol_volume_ops_total", lbl("flush")); v < 1 || v > 2 {
		t.Errorf("flush ops %v, want 1 (the explicit flush) or 2 (plus qemu's flush at close)", v)
	}
	// The reads of the golden's data: at least one chunk missed and was
	// decompressed; the third read (the first again) hit the cache.
	hits, _ := metricValue(mfs, "obdvol_chunk_cache_hits_total", nil)
	miss, _ := metricValue(mfs, "obdvol_chunk_cache_misses_total", nil)
	dec, _ := metricValue(mfs, "obdvol_chunk_cache_decompressions_total", nil)
	if miss <= miss0 || dec <= dec0 || hits <= hits0 {
		t.Errorf("chunk cache after the reads: hits %v->%v misses %v->%v decompressions %v->%v, want all to grow",
			hits0, hits, miss0, miss, dec0, dec)
	}
	// daemon status reports the same cache counters (read after the
	// scrape: they can only have grown, and nothing reads now).
	st = h.json("daemon", "status")
	if got := float64(jint(t, st, "daemon", "cache", "hits")); got != hits {
		t.Errorf("daemon status cache hits %v, /metrics %v", got, hits)
	}
	if got := float64(jint(t, st, "daemon", "cache", "chunks_decompressed")); got != dec {
		t.Errorf("daemon status chunks decompressed %v, /metrics %v", got, dec)
	}
	if jint(t, st, "daemon", "active") != 1 {
		t.Errorf("daemon status active: %v", st)
	}

	h.ok("deactivate", "vm1")
	mfs = scrapeMetrics(t, addr)
	if _, ok := metricValue(mfs, "obdvol_volume_ops_total", lbl("write")); ok {
		t.Error("vm1's series stay after deactivate")
	}
}

// --metrics on an address that is not loopback is refused (usage, exit
// 2) before anything is served, unless --metrics-allow-remote.
func TestDaemonMetricsRefusesRemote(t *testing.T) {
	h := newCLI(t)
	h.fails(2, []string{"not loopback"}, "daemon", "--metrics", "0.0.0.0:0")
	h.fails(2, []string{"--metrics"}, "daemon", "--metrics", "127.0.0.1")
	h.fails(2, []string{"--metrics-allow-remote needs --metrics"}, "daemon", "--metrics-allow-remote")
}
