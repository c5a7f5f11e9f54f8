// Package fleet is a harness that runs a fleet of obdvol hosts (separate
// --root directories and separate obdvol processes, the real CLI binary)
// pulling one golden snapshot at once from an origin registry (a real
// docker-registry, tests/regtest) behind tests/faultproxy, whose counters
// are the origin's egress and whose bandwidth limit is the origin's link.
// Each host then serves its volume (obdvol serve --foreground) and reads a
// working set through NBD with qemu-io. `make bench-fleet` runs it at full
// size (tests/bench); its test runs two hosts on a small golden.
package fleet

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

// Config sizes a fleet.
type Config struct {
	Bin        string  // the obdvol binary (bin/obdvol)
	Work       string  // work directory (roots, registries)
	N          int     // hosts
	GoldenMiB  int     // the golden disk's size
	WorkingPct float64 // the working set, percent of the golden (default 5)
	ReadKiB    int     // one read of the working set (default 256)
	Bandwidth  int64   // the origin's egress limit, bytes/s (0: none)
	Log        io.Writer
}

// Mode is one way the fleet gets the golden.
type Mode struct {
	Name       string
	Lazy       bool     // pull --lazy (the origin tag has a prefetch list)
	ViaMirror  bool     // hosts pull the origin's reference with a cold pull-through mirror configured (OBDVOL_MIRRORS): an eager pull warms it first
	Fill       string   // with Lazy: --fill policy ("": the default)
	FillArgs   []string // more pull flags (--fill-delay, --fill-rate...)
	MirrorFill bool     // a cold mirror is started and given to the hosts as OBDVOL_MIRRORS
	WaitFill   bool     // wait for every host's background fill to finish
	WarmFirst  bool     // host 0 pulls alone first (warming a mirror), then the others at once
}

// HostResult is one host's timeline, from the moment its pull started.
type HostResult struct {
	Ready      time.Duration // pull returned: the volume is usable
	FirstRead  time.Duration // the first read of the working set returned
	WorkingSet time.Duration // the whole working set was read
	Filled     time.Duration // the background fill finished (WaitFill)
}

// Result is what a mode cost.
type Result struct {
	Mode         Mode
	Egress       int64   // bytes the origin sent (faultproxy BytesOut)
	BlobGets     int64   // blob GETs the origin answered
	PeakRate     float64 // the origin's highest egress over one second, bytes/s
	Hosts        []HostResult
	Wall         time.Duration
	StoredBytes  int64 // the snapshot's stored size (its layer blobs)
	WorkingBytes int64 // the working set
}

// Fleet is a golden pushed to an origin registry, behind a proxy.
type Fleet struct {
	cfg          Config
	reg          *regtest.Registry
	Proxy        *faultproxy.Proxy
	Ref          string   // the golden through the proxy: host/golden:v1
	StoredBytes  int64    // layer blob bytes of the snapshot
	WorkingBytes int64    // bytes of the working set
	reads        []string // qemu-io read commands of the working set, first one first
	runs         int
}

func (c *Config) defaults() {
	if c.WorkingPct == 0 {
		c.WorkingPct = 5
	}
	if c.ReadKiB == 0 {
		c.ReadKiB = 256
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
}

// Setup builds the golden (a half-compressible disk) on a builder root,
// records its working set as a prefetch list (serve --record-prefetch
// while qemu-io reads it), pushes it with the list to a fresh origin
// registry, and starts the proxy in front of the origin.
func Setup(ctx context.Context, cfg Config) (*Fleet, error) {
	cfg.defaults()
	for _, tool := range []string{"qemu-io", "docker-registry"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed (make deps)", tool)
		}
	}
	f := &Fleet{cfg: cfg}
	reg, err := regtest.StartIn(mkdir(cfg.Work, "origin"))
	if err != nil {
		return nil, err
	}
	f.reg = reg
	size := int64(cfg.GoldenMiB) << 20
	img := filepath.Join(cfg.Work, "golden.raw")
	if err := writeHalfCompressible(img, size); err != nil {
		f.Close()
		return nil, err
	}
	b := &host{bin: cfg.Bin, root: filepath.Join(cfg.Work, "builder")}
	steps := [][]string{
		{"create", "golden", "--size", fmt.Sprint(size)},
		{"import", "golden", img},
		{"snapshot", "golden@v1"},
	}
	for _, s := range steps {
		if _, err := b.run(ctx, nil, s...); err != nil {
			f.Close()
			return nil, err
		}
	}
	os.Remove(img)
	f.reads = workingSet(size, cfg.WorkingPct, int64(cfg.ReadKiB)<<10)
	f.WorkingBytes = int64(len(f.reads)) * int64(cfg.ReadKiB) << 10
	list := filepath.Join(cfg.Work, "prefetch.json")
	if err := b.serveAndRead(ctx, "golden", []string{"--record-prefetch", list}, f.reads, nil); err != nil {
		f.Close()
		return nil, fmt.Errorf("recording the prefetch list: %w", err)
	}
	out, err := b.run(ctx, nil, "--json", "push", "--plain-http", "--prefetch", list, "golden@v1", reg.Addr+"/golden:v1")
	if err != nil {
		f.Close()
		return nil, err
	}
	var pushed struct {
		Result struct {
			BytesMoved int64 `json:"bytes_moved"`
		} `json:"result"`
	}
	if err := json.Unmarshal(out, &pushed); err != nil {
		f.Close()
		return nil, fmt.Errorf("push output %q: %w", out, err)
	}
	f.StoredBytes = pushed.Result.BytesMoved
	if f.Proxy, err = faultproxy.New(reg.Addr); err != nil {
		f.Close()
		return nil, err
	}
	f.Proxy.Set(faultproxy.Faults{Bandwidth: cfg.Bandwidth})
	f.Ref = f.Proxy.Addr + "/golden:v1"
	os.RemoveAll(b.root)
	return f, nil
}

// Close stops the proxy and the origin.
func (f *Fleet) Close() {
	if f.Proxy != nil {
		f.Proxy.Close()
	}
	if f.reg != nil {
		f.reg.Stop()
	}
}

// Run runs every host of the fleet in mode at once and returns what the
// origin sent and each host's timeline. The hosts' roots are removed after.
func (f *Fleet) Run(ctx context.Context, m Mode) (Result, error) {
	f.runs++
	dir := mkdir(f.cfg.Work, fmt.Sprintf("run%d-%s", f.runs, m.Name))
	defer os.RemoveAll(dir)
	ref := f.Ref
	var env []string
	if m.ViaMirror || m.MirrorFill {
		mir, err := regtest.StartMirrorIn(mkdir(dir, "mirror"), f.Proxy.Addr)
		if err != nil {
			return Result{}, err
		}
		defer mir.Stop()
		env = append(env, "OBDVOL_MIRRORS=http://"+mir.Addr)
	}
	args := []string{"--json", "pull", "--plain-http"}
	if m.Lazy {
		args = append(args, "--lazy")
		if m.Fill != "" { // "": pull's default
			args = append(args, "--fill="+m.Fill)
		}
		args = append(args, m.FillArgs...)
	}
	args = append(args, ref, "golden")
	f.Proxy.ResetStats()
	peak := make(chan float64, 1)
	stop := make(chan struct{})
	go func() { peak <- f.samplePeak(stop) }()
	res := Result{Mode: m, Hosts: make([]HostResult, f.cfg.N), StoredBytes: f.StoredBytes, WorkingBytes: f.WorkingBytes}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, f.cfg.N)
	for i := range f.cfg.N {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := &host{bin: f.cfg.Bin, root: filepath.Join(dir, fmt.Sprintf("h%03d", i)), env: env}
			res.Hosts[i], errs[i] = h.live(ctx, args, f.reads, m.WaitFill)
		}()
		if i == 0 && m.WarmFirst {
			wg.Wait()
		}
	}
	wg.Wait()
	res.Wall = time.Since(start)
	close(stop)
	res.PeakRate = <-peak
	st := f.Proxy.Stats()
	res.Egress, res.BlobGets = st.BytesOut, st.BlobGets
	for i, err := range errs {
		if err != nil {
			return res, fmt.Errorf("host %d: %w", i, err)
		}
	}
	return res, nil
}

// samplePeak samples the origin's egress every second until stop.
func (f *Fleet) samplePeak(stop chan struct{}) float64 {
	var best float64
	last, t0 := f.Proxy.Stats().BytesOut, time.Now()
	tk := time.NewTicker(time.Second)
	defer tk.Stop()
	for {
		select {
		case <-stop:
			return best
		case now := <-tk.C:
			cur := f.Proxy.Stats().BytesOut
			best = max(best, float64(cur-last)/now.Sub(t0).Seconds())
			last, t0 = cur, now
		}
	}
}

// host is one obdvol root driven through the binary.
type host struct {
	bin  string
	root string
	env  []string
}

func (h *host) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, h.bin, append([]string{"--root", h.root, "--no-progress"}, args...)...)
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "OBDVOL_") }), h.env...)
	return cmd
}

func (h *host) run(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	cmd := h.command(ctx, args...)
	var stderr strings.Builder
	cmd.Stdin, cmd.Stderr = stdin, &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("obdvol %s: %v: %s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return out, nil
}

// live is one host's life: pull, serve, read the working set, and wait
// for its fill when asked.
func (h *host) live(ctx context.Context, pull []string, reads []string, waitFill bool) (HostResult, error) {
	var r HostResult
	start := time.Now()
	out, err := h.run(ctx, nil, pull...)
	if err != nil {
		return r, err
	}
	r.Ready = time.Since(start)
	var pulled struct {
		FillLog string `json:"fill_log"`
	}
	if err := json.Unmarshal(out, &pulled); err != nil {
		return r, fmt.Errorf("pull output %q: %w", out, err)
	}
	first := func() { r.FirstRead = time.Since(start) }
	if err := h.serveAndRead(ctx, "golden", []string{"--read-only"}, reads, first); err != nil {
		return r, err
	}
	r.WorkingSet = time.Since(start)
	if waitFill && pulled.FillLog != "" {
		if err := waitForFill(ctx, pulled.FillLog); err != nil {
			return r, err
		}
		r.Filled = time.Since(start)
	}
	return r, nil
}

// waitForFill polls a background fill's log until it says the volume is
// complete, or reports the error it ended with.
func waitForFill(ctx context.Context, log string) error {
	for {
		b, _ := os.ReadFile(log)
		s := string(b)
		switch {
		case strings.Contains(s, "is complete on this host"):
			return nil
		case strings.Contains(s, "obdvol: ") || strings.Contains(s, "Error"):
			return fmt.Errorf("background fill failed: %s", s)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the fill (log %s): %w", log, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// serveAndRead serves vol over an NBD unix socket (obdvol serve
// --foreground), reads reads[0] with one qemu-io (then calls first) and the
// rest with another, and stops the server with SIGTERM.
func (h *host) serveAndRead(ctx context.Context, vol string, serveArgs, reads []string, first func()) (err error) {
	sock := filepath.Join(h.root, "nbd.sock")
	cmd := h.command(ctx, append([]string{"--json", "serve", "--foreground", vol, "--nbd", "unix:" + sock}, serveArgs...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		if werr := cmd.Wait(); werr != nil && err == nil {
			err = fmt.Errorf("obdvol serve: %v: %s", werr, stderr.String())
		}
	}()
	br := bufio.NewReader(stdout)
	var served struct {
		Serving []string `json:"serving"`
	}
	derr := json.NewDecoder(br).Decode(&served)
	go io.Copy(io.Discard, br)
	if derr != nil || len(served.Serving) != 1 {
		return fmt.Errorf("obdvol serve printed %v (%v): %s", served.Serving, derr, stderr.String())
	}
	uri := served.Serving[0]
	if err := qemuRead(ctx, uri, reads[:1]); err != nil {
		return err
	}
	if first != nil {
		first()
	}
	return qemuRead(ctx, uri, reads[1:])
}

func qemuRead(ctx context.Context, uri string, reads []string) error {
	if len(reads) == 0 {
		return nil
	}
	args := []string{"-f", "raw", "-r"}
	for _, r := range reads {
		args = append(args, "-c", r)
	}
	out, err := exec.CommandContext(ctx, "qemu-io", append(args, uri)...).CombinedOutput()
	if err != nil || strings.Contains(string(out), "error") || strings.Contains(string(out), "failed") {
		return fmt.Errorf("qemu-io: %v: %s", err, out)
	}
	return nil
}

// workingSet is a boot-like working set: reads of one size at seeded
// random aligned offsets, pct percent of the disk in all, in the order
// they happen (not sorted).
func workingSet(size int64, pct float64, read int64) []string {
	n := max(2, int(float64(size)*pct/100/float64(read)))
	slots := size / read
	r := rand.New(rand.NewSource(5))
	perm := r.Perm(int(slots))[:min(n, int(slots))]
	out := make([]string, len(perm))
	for i, s := range perm {
		out[i] = fmt.Sprintf("read -q %d %d", int64(s)*read, read)
	}
	return out
}

// writeHalfCompressible writes blocks that are half random, half a
// repeating pattern: zstd stores them at about half their size.
func writeHalfCompressible(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := rand.New(rand.NewSource(42))
	buf := make([]byte, 1<<20)
	const bs = 4096
	for off := int64(0); off < size; off += int64(len(buf)) {
		for b := 0; b < len(buf); b += bs {
			r.Read(buf[b : b+bs/2])
			for i := bs / 2; i < bs; i++ {
				buf[b+i] = byte("obdvol half-compressible text "[i%30])
			}
		}
		if _, err := f.Write(buf[:min(int64(len(buf)), size-off)]); err != nil {
			return err
		}
	}
	return f.Close()
}

func mkdir(parts ...string) string {
	d := filepath.Join(parts...)
	os.MkdirAll(d, 0o700)
	return d
}

// Percentile is the p-th percentile (0-100) of ds, nearest rank.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}
