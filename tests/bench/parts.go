package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"time"

	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/tests/regtest"
)

var (
	partsMiB    = flag.Int("parts-size", 1024, "snapshot size for the layers-in-parts bench, MiB")
	partsMaxMiB = flag.Int("parts-max-blob", 64, "--max-blob of the layers-in-parts bench, MiB")
)

// partsBench pushes and pulls one snapshot through a local registry as
// one blob and in parts of -parts-max-blob (repo.PushOptions.MaxBlob),
// interleaved: what splitting costs or gains when nothing caps a blob
// (parts move in parallel, --concurrency 4; push reads a split layer
// twice, pull writes it twice).
func partsBench(work string, size uint64) {
	ctx := context.Background()
	maxBlob := int64(*partsMaxMiB) << 20
	fmt.Printf("== push and pull of a %d MiB snapshot as one blob vs in parts of %d MiB (%s)\n", size>>20, maxBlob>>20, roundsNote())
	a := newEnv(filepath.Join(work, "PA"), 32<<20)
	defer a.mgr.Close()
	cfg := buildSnapshot(a, "g", size)
	st := repoStore(a.root)
	reg, err := regtest.StartIn(mkdir(work, "pregistry"))
	check(err)
	defer reg.Stop()
	_, err = repo.Push(ctx, st, target(reg.Addr+"/whole/g:v1"), cfg, repo.PushOptions{})
	check(err)
	res, err := repo.Push(ctx, st, target(reg.Addr+"/parts/g:v1"), cfg, repo.PushOptions{MaxBlob: maxBlob})
	check(err)
	var parts int
	for _, p := range res.Split {
		parts += len(p)
	}
	fmt.Printf("  %d layer(s), %d in %d parts\n", len(cfg.Layers), res.LayersSplit, parts)
	push := func(mb int64) func() float64 {
		return func() float64 {
			r, done := freshRegistry(work)
			defer done()
			res, err := repo.Push(ctx, st, target(r.Addr+"/obdvol/g:v1"), cfg, repo.PushOptions{MaxBlob: mb})
			check(err)
			return mbps(res.BytesMoved, res.Duration)
		}
	}
	pull := func(ref string) func() float64 {
		return func() float64 {
			d, done := scratch(work, "ppull")
			defer done()
			start := time.Now()
			p, err := repo.Pull(ctx, repoStore(d), target(ref), repo.PullOptions{})
			check(err)
			return mbps(p.BytesMoved, time.Since(start))
		}
	}
	pushWhole := measure("push, one blob", "MB/s", push(0))
	pushParts := measure("push, in parts", "MB/s", push(maxBlob))
	pullWhole := measure("pull, one blob", "MB/s", pull(reg.Addr+"/whole/g:v1"))
	pullParts := measure("pull, in parts", "MB/s", pull(reg.Addr+"/parts/g:v1"))
	interleave(pushWhole, pushParts, pullWhole, pullParts)
	printSeries(pushWhole, pushParts, pullWhole, pullParts)
	printRatio(pushParts, pushWhole, nil)
	printRatio(pullParts, pullWhole, nil)
	fmt.Println()
}
