package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/obdvol/obdvol/tests/fleet"
)

// The fleet bench (`make bench-fleet`, -only fleet): N hosts, each its
// own --root and its own obdvol processes (bin/obdvol), pull one golden at
// once from an origin docker-registry behind tests/faultproxy, which
// limits the origin's egress to -fleet-bandwidth and counts it, then read
// a working set through obdvol serve --foreground and qemu-io. One run of
// each mode (a fleet run takes minutes): the figures are the origin's
// egress, which does not vary from run to run, and p50/p99 across hosts.

var (
	fleetN         = flag.Int("fleet-n", envInt("FLEET_N", 32), "fleet bench: hosts (default from $FLEET_N, else 32)")
	fleetMiB       = flag.Int("fleet-golden", envInt("FLEET_GOLDEN_MIB", 1024), "fleet bench: golden size in MiB (default from $FLEET_GOLDEN_MIB, else 1024)")
	fleetBandwidth = flag.Int64("fleet-bandwidth", 125e6, "fleet bench: the origin's egress limit, bytes/s (1 Gbit/s)")
	fleetModes     = flag.String("fleet-modes", envStr("FLEET_MODES", "eager,mirror,mirror-warm,lazy,fill-now,fill-delayed,fill-mirror-only,fill-mirror-jitter,fill-mirror-warm"), "fleet bench: modes to run, comma-separated")
	fleetDelay     = flag.String("fleet-fill-delay", "5s", "fleet bench: --fill-delay of the delayed fill")
	fleetJitter    = flag.String("fleet-fill-jitter", "30s", "fleet bench: --fill-jitter of the delayed fill")
	fleetRate      = flag.String("fleet-fill-rate", "100M", "fleet bench: --fill-rate of every fill (pull's default)")
	fleetTimeout   = flag.Duration("fleet-timeout", 15*time.Minute, "fleet bench: a mode still running after this fails")
)

func envStr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func fleetModeList() []fleet.Mode {
	fill := func(name, policy string, extra ...string) fleet.Mode {
		return fleet.Mode{Name: name, Lazy: true, Fill: policy, WaitFill: true, MirrorFill: policy == "mirror-only",
			FillArgs: append([]string{"--fill-rate", *fleetRate}, extra...)}
	}
	all := map[string]fleet.Mode{
		"eager":              {Name: "eager"},
		"mirror":             {Name: "mirror", ViaMirror: true},
		"mirror-warm":        {Name: "mirror-warm", ViaMirror: true, WarmFirst: true},
		"lazy":               {Name: "lazy", Lazy: true}, // pull's default policy, mirror-only, and no mirror: no fill
		"fill-now":           fill("fill-now", "now"),
		"fill-delayed":       fill("fill-delayed", "delayed", "--fill-delay", *fleetDelay, "--fill-jitter", *fleetJitter),
		"fill-mirror-only":   fill("fill-mirror-only", "mirror-only"),
		"fill-mirror-jitter": fill("fill-mirror-jitter", "mirror-only", "--fill-delay", "0s", "--fill-jitter", *fleetJitter),
		"fill-mirror-warm": func() fleet.Mode {
			m := fill("fill-mirror-warm", "mirror-only")
			m.WarmFirst = true
			return m
		}(),
	}
	var out []fleet.Mode
	for _, n := range strings.Split(*fleetModes, ",") {
		m, ok := all[strings.TrimSpace(n)]
		if !ok {
			check(fmt.Errorf("-fleet-modes: unknown mode %q", n))
		}
		out = append(out, m)
	}
	return out
}

var fleetNotes = map[string]string{
	"eager":              "(a) eager pull from the origin",
	"mirror":             "(b) eager pull of the origin's reference with a cold pull-through mirror configured (OBDVOL_MIRRORS), every host at once",
	"mirror-warm":        "(b') the same, one host first (warming the mirror), then the rest",
	"lazy":               "(c) lazy pull with the recorded prefetch list, the default --fill (mirror-only) and no mirror: no fill",
	"fill-now":           "lazy + --fill=now: every host fills from the origin at once",
	"fill-delayed":       "lazy + --fill=delayed: fills from the origin after a delay with jitter",
	"fill-mirror-only":   "lazy + --fill=mirror-only, a cold pull-through mirror configured",
	"fill-mirror-jitter": "the same with --fill-jitter: the first fills warm the mirror for the rest",
	"fill-mirror-warm":   "the same, one host (pull and fill) first, then the rest",
}

func fleetBench(work, bin string) {
	ctx := context.Background()
	modes := fleetModeList()
	fmt.Printf("fleet: %d hosts (separate roots, bin/obdvol processes), %d MiB half-compressible golden, origin limited to %.0f MB/s (faultproxy)\n",
		*fleetN, *fleetMiB, float64(*fleetBandwidth)/1e6)
	abs, err := filepath.Abs(bin)
	check(err)
	start := time.Now()
	f, err := fleet.Setup(ctx, fleet.Config{Bin: abs, Work: filepath.Join(work, "fleet"), N: *fleetN, GoldenMiB: *fleetMiB, Bandwidth: *fleetBandwidth, Log: os.Stdout})
	check(err)
	defer f.Close()
	fmt.Printf("  golden stored %s; working set %s (5%%, 256 KiB reads at random offsets, recorded as the prefetch list); setup %.0fs\n\n",
		mib(f.StoredBytes), mib(f.WorkingBytes), time.Since(start).Seconds())
	fmt.Printf("  %-18s %10s %8s %8s %5s %9s  %-13s %-13s %-13s %-13s %6s\n", "mode", "egress", "x stored", "x N*ws", "GETs", "peak MB/s",
		"ready p50/p99", "first p50/99", "ws p50/p99", "filled p50/99", "wall")
	var results []fleet.Result
	for _, m := range modes {
		mctx, cancel := context.WithTimeout(ctx, *fleetTimeout)
		r, err := f.Run(mctx, m)
		cancel()
		if err != nil {
			fmt.Printf("  %-18s FAILED: %v\n", m.Name, err)
			continue
		}
		results = append(results, r)
		pick := func(get func(fleet.HostResult) time.Duration) string {
			var ds []time.Duration
			for _, h := range r.Hosts {
				ds = append(ds, get(h))
			}
			return fmt.Sprintf("%.1f/%.1fs", fleet.Percentile(ds, 50).Seconds(), fleet.Percentile(ds, 99).Seconds())
		}
		filled := "-"
		if m.WaitFill {
			filled = pick(func(h fleet.HostResult) time.Duration { return h.Filled })
		}
		fmt.Printf("  %-18s %10s %8.2f %8.2f %5d %9.1f  %-13s %-13s %-13s %-13s %5.0fs\n", m.Name, mib(r.Egress),
			float64(r.Egress)/float64(r.StoredBytes), float64(r.Egress)/float64(int64(*fleetN)*r.WorkingBytes), r.BlobGets, r.PeakRate/1e6,
			pick(func(h fleet.HostResult) time.Duration { return h.Ready }),
			pick(func(h fleet.HostResult) time.Duration { return h.FirstRead }),
			pick(func(h fleet.HostResult) time.Duration { return h.WorkingSet }), filled, r.Wall.Seconds())
	}
	fmt.Println()
	for _, r := range results {
		fmt.Printf("  %-18s %s\n", r.Mode.Name, fleetNotes[r.Mode.Name])
		switch r.Mode.Name {
		case "mirror", "mirror-warm":
			x := float64(r.Egress) / float64(r.StoredBytes)
			fmt.Printf("  %-18s   origin egress %.2fx the stored size (target <= 1.1x whatever N): %s\n", "", x, met(x <= 1.1))
		case "lazy":
			x := float64(r.Egress) / float64(int64(*fleetN)*r.WorkingBytes)
			fmt.Printf("  %-18s   origin egress %.2fx N x working set (target <= 1.2x without fill): %s\n", "", x, met(x <= 1.2))
		}
	}
	fmt.Println("  (egress: faultproxy BytesOut, every response body the origin sent; x N*ws: over N times the working set's disk bytes)")
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
