package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"time"

	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

var (
	rangesMiB = flag.Int("ranges-size", 128, "volume size for the range-download bench, MiB (its layer is about half)")
	connMBps  = flag.Int("ranges-conn-mbps", 8, "range-download bench: bytes a second each connection gets (a TCP stream's window over its RTT), MB/s")
)

// rangesBench pulls one large layer through tests/faultproxy limiting
// each connection (what one TCP stream gets far from the registry): as
// one stream, and as 4 range requests at once (the default).
func rangesBench(work string) {
	ctx := context.Background()
	a := newEnv(filepath.Join(work, "ranges-A"), 32<<20)
	defer a.mgr.Close()
	cfg := buildSnapshot(a, "g", uint64(*rangesMiB)<<20)
	reg, err := regtest.StartIn(mkdir(work, "ranges-registry"))
	check(err)
	defer reg.Stop()
	_, err = repo.Push(ctx, repoStore(a.root), target(reg.Addr+"/obdvol/g:v1"), cfg, repo.PushOptions{})
	check(err)
	p, err := faultproxy.New(reg.Addr)
	check(err)
	defer p.Close()
	p.Set(faultproxy.Faults{ConnBandwidth: int64(*connMBps) * 1e6})
	fmt.Printf("== pull of one %d MiB layer through a proxy giving each connection %d MB/s: one stream vs 4 range requests at once (%s)\n",
		cfg.Layers[0].Size>>20, *connMBps, roundsNote())
	pull := func(conc int) float64 {
		d, done := scratch(work, "ranges-pull")
		defer done()
		start := time.Now()
		res, err := repo.Pull(ctx, repoStore(d), target(p.Addr+"/obdvol/g:v1"), repo.PullOptions{RangeConcurrency: conc})
		check(err)
		return mbps(res.BytesMoved, time.Since(start))
	}
	one := measure("one stream", "MB/s", func() float64 { return pull(1) })
	four := measure("4 range requests", "MB/s", func() float64 { return pull(4) })
	interleave(one, four)
	printSeries(one, four)
	printRatio(four, one, atLeast(3.0))
	fmt.Println()
}
