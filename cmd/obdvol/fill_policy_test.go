package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

// fillGolden pushes an 8 MiB snapshot g@v1 to reg as repository g:v1 and
// returns its content.
func fillGolden(t *testing.T, reg *regtest.Registry) []byte {
	t.Helper()
	ctx := context.Background()
	a := newHost(t)
	a.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, a.g, &createOptions{Size: "8M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "g")
	})
	a.run(func(o *bytes.Buffer) error {
		return runImport(ctx, o, a.g, &importOptions{Offset: "0"}, "g", writeImage(t, 8<<20, 11))
	})
	a.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, a.g, "g@v1") })
	a.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, a.g, &pushOptions{transferFlags: transferFlags{PlainHTTP: true}}, "g@v1", reg.Addr+"/g:v1")
	})
	return a.export("g@v1")
}

// runEnv runs obdvol --json args with extra environment variables (cliHost
// clears every OBDVOL_ one) and decodes its one JSON object.
func (h *cliHost) runEnv(env []string, args ...string) map[string]any {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := h.command(ctx, append([]string{"--json"}, args...)...)
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := cliResult{args: args, stdout: out.String(), stderr: errb.String()}
	if err != nil {
		h.t.Fatalf("obdvol %s: %v\n%s", strings.Join(args, " "), err, r)
	}
	return decodeOne(h.t, r)
}

// layerStates are the states of vol's chain (info --json).
func (h *cliHost) layerStates(vol string) []string {
	h.t.Helper()
	m := h.json("info", vol)
	var out []string
	for i := range m["volume"].(map[string]any)["chain"].([]any) {
		out = append(out, jstr(h.t, m, "volume", "chain", i, "state"))
	}
	return out
}

// waitFillLog polls a background fill's log until it says the volume is
// complete (or fails the test on an error or after a minute: a bound on a
// hang, not a timed assertion).
func waitFillLog(t *testing.T, log string) string {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(log)
		s := string(b)
		if strings.Contains(s, "is complete on this host") {
			return s
		}
		if strings.Contains(s, "obdvol: ") || time.Now().After(deadline) {
			t.Fatalf("background fill did not complete; log %s:\n%s", log, s)
		}
	}
}

// The default fill policy is mirror-only, as pull --help, README and
// docs/fleet.md say: with no mirror configured a lazy pull starts no
// background fill, says why, the layers stay remote and no fill log is
// written (TestFillPolicyMirrorOnly has the mirror).
func TestFillPolicyDefault(t *testing.T) {
	reg := regtest.Start(t)
	fillGolden(t, reg)
	h := newCLI(t)
	m := h.json("pull", "--lazy", "--plain-http", reg.Addr+"/g:v1", "g")
	if p := jstr(t, m, "fill_policy"); p != fillMirrorOnly || defaultFillPolicy != fillMirrorOnly {
		t.Fatalf("default fill policy %q, want mirror-only", p)
	}
	if l := jstr(t, m, "fill_log"); l != "" {
		t.Fatalf("a fill started (log %s) with no mirror configured", l)
	}
	time.Sleep(500 * time.Millisecond) // what a started fill would have had to begin
	if _, err := os.Stat(filepath.Join(h.root, "run", "fill-g.log")); !os.IsNotExist(err) {
		t.Fatalf("fill log exists: %v", err)
	}
	if st := h.layerStates("g"); len(st) != 1 || st[0] != metadata.LayerRemote {
		t.Fatalf("layer states %v, want [remote]", st)
	}
	h2 := newCLI(t)
	r := h2.ok("pull", "--lazy", "--plain-http", reg.Addr+"/g:v1", "g")
	if !strings.Contains(r.stdout, "no background fill (fill policy mirror-only and no mirror configured)") {
		t.Fatalf("pull does not say why no fill started:\n%s", r)
	}
	// --fill=true and --fill=false, the old boolean flag, still parse.
	h3 := newCLI(t)
	if p := jstr(t, h3.json("pull", "--lazy", "--fill=false", "--plain-http", reg.Addr+"/g:v1", "g"), "fill_policy"); p != fillNone {
		t.Fatalf("--fill=false is policy %q", p)
	}
	m = h3.json("pull", "--lazy", "--fill=true", "--fill-rate=0", "--plain-http", reg.Addr+"/g:v1", "g2")
	if p := jstr(t, m, "fill_policy"); p != fillNow {
		t.Fatalf("--fill=true is policy %q", p)
	}
	waitFillLog(t, jstr(t, m, "fill_log"))
	h.fails(2, []string{`--fill "sometimes"`}, "pull", "--lazy", "--fill=sometimes", "--plain-http", reg.Addr+"/g:v1", "g4")
	h.fails(2, []string{"--fill-delay and --fill-jitter need --fill=delayed or --fill=mirror-only"}, "pull", "--lazy", "--fill=now", "--fill-delay=1s", "--plain-http", reg.Addr+"/g:v1", "g4")
}

// A delayed fill logs that it waits, then fills: the log says so in that
// order and the layer ends full, read with the registry gone.
func TestFillPolicyDelayed(t *testing.T) {
	reg := regtest.Start(t)
	want := fillGolden(t, reg)
	h := newCLI(t)
	m := h.json("pull", "--lazy", "--plain-http", "--fill=delayed", "--fill-delay=1s", "--fill-jitter=0s", reg.Addr+"/g:v1", "g")
	if p, d := jstr(t, m, "fill_policy"), m["fill_delay_seconds"]; p != fillDelayed || d != json.Number("1") {
		t.Fatalf("policy %q delay %v, want delayed 1", p, d)
	}
	log := jstr(t, m, "fill_log")
	s := waitFillLog(t, log)
	w, o, c := strings.Index(s, "waiting 1s before starting"), strings.Index(s, "delay over, starting"), strings.Index(s, "is complete on this host")
	if w < 0 || o < w || c < o {
		t.Fatalf("fill log out of order:\n%s", s)
	}
	if st := h.layerStates("g"); st[0] != metadata.LayerFull {
		t.Fatalf("layer state %v after the fill", st)
	}
	reg.Stop()
	if got := h.ok("export", "g", "-").stdout; got != string(want) {
		t.Fatal("filled volume differs from the pushed snapshot")
	}
	// Jitter: a delay drawn in [delay, delay+jitter) (on a new host: this
	// one has the layer now, and a pull with nothing remote starts no fill).
	reg.Restart()
	h = newCLI(t)
	m = h.json("pull", "--lazy", "--plain-http", "--fill=delayed", "--fill-delay=1h", "--fill-jitter=1h", reg.Addr+"/g:v1", "g2")
	if v, err := m["fill_delay_seconds"].(json.Number).Float64(); err != nil || v < 3600 || v >= 7200 {
		t.Fatalf("delay %v s (%v), want in [3600, 7200)", v, err)
	}
	log = jstr(t, m, "fill_log")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(log)
		var pid int
		if i := strings.Index(string(b), "(delayed fill, pid "); i >= 0 {
			fmt.Sscanf(string(b[i:]), "(delayed fill, pid %d)", &pid)
		}
		if pid > 0 {
			// The waiting fill started by this test ends with it.
			p, _ := os.FindProcess(pid)
			p.Kill()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the delayed fill never logged its wait: %q", b)
		}
	}
	if st := h.layerStates("g2"); st[0] != metadata.LayerRemote {
		t.Fatalf("layer state %v while the fill waits", st)
	}
}

// A mirror-only fill never asks the origin for blob data: the host reaches
// the origin through a fault proxy whose counters see every request, and
// the mirror (a real pull-through docker-registry) through another. The
// fill first waits for the cold mirror to store the layer (one fetch from
// the origin) instead of asking it for ranges, each of which a cold mirror
// would answer by streaming the blob from the origin. The mirror is
// configured by OBDVOL_MIRRORS (the fill gets --only-from) or by the
// registry's hosts.toml only (the fill gets --mirrors-only and routes
// through the registry's configured mirrors, the origin refused).
func TestFillPolicyMirrorOnly(t *testing.T) {
	for _, how := range []string{"env", "hosts.toml"} {
		t.Run(how, func(t *testing.T) { testFillMirrorOnly(t, how) })
	}
}

func testFillMirrorOnly(t *testing.T, how string) {
	reg := regtest.Start(t)
	want := fillGolden(t, reg)
	px := faultproxy.Start(t, reg.Addr)
	upstream := faultproxy.Start(t, reg.Addr) // the mirror's way to the origin
	// A link slower than loopback, so that a request the fill hangs up on
	// stops its stream instead of finding it already sent.
	upstream.Set(faultproxy.Faults{Bandwidth: 2e6})
	mir := regtest.StartMirror(t, upstream.Addr)
	h := newCLI(t)
	env, logged := []string{"OBDVOL_MIRRORS=http://" + mir.Addr}, "from mirrors only: http://"+mir.Addr
	if how == "hosts.toml" {
		dir := t.TempDir()
		os.MkdirAll(filepath.Join(dir, px.Addr), 0o755)
		doc := fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\"]\n", px.Addr, mir.Addr)
		if err := os.WriteFile(filepath.Join(dir, px.Addr, "hosts.toml"), []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		env, logged = []string{"OBDVOL_HOSTS_DIR=" + dir}, "from the registries' configured mirrors only"
	}
	m := h.runEnv(env, "pull", "--lazy", "--plain-http", px.Addr+"/g:v1", "g") // the default policy
	if p := jstr(t, m, "fill_policy"); p != fillMirrorOnly {
		t.Fatalf("policy %q", p)
	}
	before := px.Stats()
	if before.Requests == 0 {
		t.Fatal("the lazy pull sent nothing through the proxy: the origin is not where it pulled from")
	}
	s := waitFillLog(t, jstr(t, m, "fill_log"))
	if !strings.Contains(s, logged) || !strings.Contains(s, "is fetching layer") {
		t.Fatalf("fill log does not say where it fills from (%q), or the wait for the cold mirror:\n%s", logged, s)
	}
	stored := jint(t, h.json("info", "g"), "volume", "chain", 0, "stored_bytes")
	if up := upstream.Stats(); up.BytesOut < stored || up.BytesOut > stored*3/2 {
		t.Fatalf("the mirror fetched %d bytes from the origin for a %d byte layer, want about one copy", up.BytesOut, stored)
	}
	if after := px.Stats(); after.BlobGets != before.BlobGets || after.BytesOut != before.BytesOut {
		t.Fatalf("the mirror-only fill reached the origin: %d blob GETs, %d bytes before, %d, %d after",
			before.BlobGets, before.BytesOut, after.BlobGets, after.BytesOut)
	}
	if st := h.layerStates("g"); st[0] != metadata.LayerFull {
		t.Fatalf("layer state %v after the fill", st)
	}
	reg.Stop()
	mir.Stop()
	if got := h.ok("export", "g", "-").stdout; got != string(want) {
		t.Fatal("volume filled from the mirror differs from the pushed snapshot")
	}
	// The fill itself refuses a mirror that is not an http(s) URL, and
	// both ways of naming mirrors at once.
	h.fails(2, []string{"want http(s)://host[:port]"}, "fill", "g", "--only-from", "ftp://x")
	h.fails(2, []string{"give one"}, "fill", "g", "--only-from", "http://x", "--mirrors-only")
}

func TestParseFillPolicyAndMirror(t *testing.T) {
	for in, want := range map[string]string{"": fillNone, "none": fillNone, "false": fillNone, "NOW": fillNow, "true": fillNow,
		"delayed": fillDelayed, "mirror-only": fillMirrorOnly} {
		if got, err := parseFillPolicy(in); err != nil || got != want {
			t.Errorf("parseFillPolicy(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := parseFillPolicy("later"); err == nil {
		t.Error("parseFillPolicy(later) accepted")
	}
	for in, want := range map[string]string{"http://m:5000": "m:5000 true", "https://m": "m false", "m.example:443": "m.example:443 false", "http://m/": "m true"} {
		h, plain, err := parseMirror(in)
		if got := fmt.Sprint(h, " ", plain); err != nil || got != want {
			t.Errorf("parseMirror(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"ftp://m", "http://", "http://m/v2/x", "http://u:p@m", "http://m?x=1", "://"} {
		if _, _, err := parseMirror(bad); err == nil {
			t.Errorf("parseMirror(%q) accepted", bad)
		}
	}
}
