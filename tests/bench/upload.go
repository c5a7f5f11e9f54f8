package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"

	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/tests/faultproxy"
)

var uploadMiB = flag.Int("upload-size", 256, "snapshot size for the chunked-upload bench, MiB")

// uploadBench pushes one snapshot to an empty registry whole (one PUT a
// blob) and in chunks of 16 MiB and 4 MiB (--chunk-size), and whole
// through a proxy that refuses requests over 32 MiB (the 413 fallback to
// chunks), in interleaved rounds: the cost of chunking on loopback,
// where each PATCH is a round trip and a registry-side commit.
func uploadBench(work string, size uint64) {
	ctx := context.Background()
	fmt.Printf("== push of a %d MiB snapshot, whole vs in chunks (%s)\n", size>>20, roundsNote())
	a := newEnv(filepath.Join(work, "U"), 32<<20)
	defer a.mgr.Close()
	cfg := buildSnapshot(a, "u", size)
	st := repoStore(a.root)
	push := func(chunk int64, limit int64) func() float64 {
		return func() float64 {
			r, done := freshRegistry(work)
			defer done()
			addr := r.Addr
			if limit > 0 {
				px, err := faultproxy.New(r.Addr)
				check(err)
				defer px.Close()
				px.Set(faultproxy.Faults{MaxRequestBody: limit})
				addr = px.Addr
			}
			res, err := repo.Push(ctx, st, target(addr+"/obdvol/u:v1"), cfg, repo.PushOptions{ChunkSize: chunk})
			check(err)
			if (chunk > 0 || limit > 0) && res.BlobsChunked == 0 {
				check(fmt.Errorf("no blob went up in chunks: %+v", res))
			}
			return mbps(res.BytesMoved, res.Duration)
		}
	}
	whole := measure("push whole", "MB/s", push(0, 0))
	c16 := measure("push --chunk-size 16M", "MB/s", push(16<<20, 0))
	c4 := measure("push --chunk-size 4M", "MB/s", push(4<<20, 0))
	fb := measure("push whole, 413 over 32 MiB", "MB/s", push(0, 32<<20))
	interleave(whole, c16, c4, fb)
	printSeries(whole, c16, c4, fb)
	printRatio(c16, whole, nil)
	printRatio(c4, whole, nil)
	printRatio(fb, whole, nil)
	fmt.Println()
}
