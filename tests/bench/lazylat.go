package main

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"time"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
	"github.com/obdvol/obdvol/volume"
)

// Cold lazy reads at 100 ms from the registry (issue 11, item 5): a real
// docker-registry behind tests/faultproxy, which adds the latency to
// every request. Measured, each in interleaved rounds on a fresh root
// (nothing local but the layer's trailer and index):
//
//   - a 64 MiB sequential read of a lazily pulled volume, pipelined
//     (the defaults: concurrent range requests, background read-ahead)
//     vs one request at a time (LazyOptions{Concurrency: 1}: the
//     read-ahead, at most 1 MiB, fetched inside the read, as before
//     pipelining); the most requests the proxy held at once;
//   - the replay of a recorded boot-like prefetch list (volume.Prefetch)
//     at 100 ms vs 0 ms.

var (
	lazyLatMiB = flag.Int("lazylat-size", 64, "volume size for the cold lazy read bench, MiB (read whole, sequentially)")
	lazyLatRTT = flag.Duration("lazylat-rtt", 100*time.Millisecond, "latency the fault proxy adds to every request")
)

func lazyLatencyBench(work string) {
	ctx := context.Background()
	size := uint64(*lazyLatMiB) << 20
	rtt := *lazyLatRTT
	fmt.Printf("== cold lazy reads through a registry %v away (faultproxy): %d MiB sequential read, boot-like prefetch list (%s)\n",
		rtt, size>>20, roundsNote())
	reg, err := regtest.StartIn(mkdir(work, "latregistry"))
	check(err)
	defer reg.Stop()
	px, err := faultproxy.New(reg.Addr)
	check(err)
	defer px.Close()

	// An incompressible disk: the bytes read are the bytes fetched.
	a := newEnv(filepath.Join(work, "LL"), 32<<20)
	_, err = a.mgr.Create("g", size, volume.CreateOptions{})
	check(err)
	v, err := a.mgr.Open("g")
	check(err)
	buf := make([]byte, 4<<20)
	r := rand.New(rand.NewSource(11))
	for off := uint64(0); off < size; off += uint64(len(buf)) {
		r.Read(buf)
		_, err := v.WriteAt(buf, int64(off))
		check(err)
	}
	check(v.Flush())
	// The prefetch list: a boot-like run recorded on the full volume.
	v.RecordReads(1 << 16)
	bootLike(v, size)
	list := v.Recorded()
	_, err = v.Snapshot(ctx, "v1")
	check(err)
	v.Close()
	cfg := chainConfig(a, "g", "v1")
	a.mgr.Close()
	_, err = repo.Push(ctx, repoStore(a.root), target(reg.Addr+"/lat/g:v1"), cfg, repo.PushOptions{})
	check(err)
	var listBytes int64
	for _, x := range list {
		listBytes += x.Len
	}
	ref := px.Addr + "/lat/g:v1"

	// cold opens a fresh lazy root through the proxy with no latency
	// (the manifest, the layer's trailer and index), then sets it.
	cold := func(opts repo.LazyOptions, lat time.Duration) (*lazyVolume, func()) {
		px.Set(faultproxy.Faults{})
		d, done := scratch(work, "lat")
		l := lazyOpenWith(d, ref, cfg, opts)
		px.Set(faultproxy.Faults{Latency: lat})
		px.ResetStats()
		return l, func() { l.close(); done() }
	}
	seqRead := func(l *lazyVolume) time.Duration {
		p := make([]byte, 1<<20)
		start := time.Now()
		for off := int64(0); off < int64(size); off += int64(len(p)) {
			_, err := l.v.ReadAt(p, off)
			check(err)
		}
		return time.Since(start)
	}
	var inFlight, serialInFlight []float64
	var requests, serialRequests []float64
	pipe := measure("pipelined", "MB/s", func() float64 {
		l, done := cold(repo.LazyOptions{}, rtt)
		defer done()
		d := seqRead(l)
		st := px.Stats()
		inFlight, requests = append(inFlight, float64(st.MaxInFlight)), append(requests, float64(st.RangeRequests))
		return mbps(int64(size), d)
	})
	serial := measure("one request at a time", "MB/s", func() float64 {
		l, done := cold(repo.LazyOptions{Concurrency: 1}, rtt)
		defer done()
		d := seqRead(l)
		st := px.Stats()
		serialInFlight, serialRequests = append(serialInFlight, float64(st.MaxInFlight)), append(serialRequests, float64(st.RangeRequests))
		return mbps(int64(size), d)
	})
	pipe0 := measure("pipelined at 0 ms", "MB/s", func() float64 {
		l, done := cold(repo.LazyOptions{}, 0)
		defer done()
		return mbps(int64(size), seqRead(l))
	})
	serial0 := measure("one at a time at 0 ms", "MB/s", func() float64 {
		l, done := cold(repo.LazyOptions{Concurrency: 1}, 0)
		defer done()
		return mbps(int64(size), seqRead(l))
	})
	interleave(pipe, serial, pipe0, serial0)
	fmt.Printf("  sequential read of %d MiB, cold, at %v:\n", size>>20, rtt)
	printSeries(pipe, serial, pipe0, serial0)
	printRatio(pipe, serial, atLeast(10))
	// What the latency adds to each, round by round: on a machine whose
	// own registry and disk bound the 0 ms figure, the part of the time
	// the pipelining is about.
	mb := float64(size) / 1e6
	addP, addS := &series{name: "pipelined", unit: "s"}, &series{name: "one at a time", unit: "s"}
	for i := range pipe.v {
		addP.v = append(addP.v, mb/pipe.v[i]-mb/pipe0.v[i])
		addS.v = append(addS.v, mb/serial.v[i]-mb/serial0.v[i])
	}
	fmt.Printf("  time the %v adds to the read (at %v minus at 0 ms):\n", rtt, rtt)
	printSeries(addP, addS)
	// A difference of two noisy times can be near 0 (or below) in one
	// round: the ratio of the medians, not the median of the ratios.
	fmt.Printf("  one at a time / pipelined, medians: %s\n", num(addS.spread().med/addP.spread().med))
	fmt.Printf("  requests in flight at most: pipelined %s%s; one at a time %s\n",
		spreadOf(inFlight), atLeast(8).verdict(spreadOf(inFlight).med), spreadOf(serialInFlight))
	fmt.Printf("  range requests: pipelined %s, one at a time %s\n", spreadOf(requests), spreadOf(serialRequests))
	memoryRemote(work, size, rtt)

	var replayReqs, replayInFlight, replayEgress []float64
	replay := func(lat time.Duration) func() float64 {
		return func() float64 {
			l, done := cold(repo.LazyOptions{}, lat)
			defer done()
			start := time.Now()
			n, err := l.v.Prefetch(list)
			check(err)
			d := time.Since(start)
			if n != listBytes {
				check(fmt.Errorf("prefetch read %d bytes of %d", n, listBytes))
			}
			if lat > 0 {
				st := px.Stats()
				replayReqs, replayInFlight = append(replayReqs, float64(st.RangeRequests)), append(replayInFlight, float64(st.MaxInFlight))
				replayEgress = append(replayEgress, float64(st.BytesOut)/float64(listBytes))
			}
			return d.Seconds()
		}
	}
	slow := measure(fmt.Sprintf("replay at %v", rtt), "s", replay(rtt))
	fast := measure("replay at 0 ms", "s", replay(0))
	interleave(slow, fast)
	fmt.Printf("  prefetch list replay: %d ranges, %d MiB (a boot-like run recorded on the volume):\n", len(list), listBytes>>20)
	printSeries(slow, fast)
	printRatio(slow, fast, atMost(3))
	fmt.Printf("  replay at %v: range requests %s, in flight at most %s, bytes fetched / list bytes %s\n\n",
		rtt, spreadOf(replayReqs), spreadOf(replayInFlight), spreadOf(replayEgress))
}

// bootLike reads v as a booting system might: 400 files at random
// places, each after a 4K metadata read near the start of the disk, read
// whole in 16 KiB pieces, 4 KiB to 256 KiB long (most small).
func bootLike(v *volume.Volume, size uint64) {
	r := rand.New(rand.NewSource(21))
	p := make([]byte, 16<<10)
	meta := min(int64(size), 4<<20)
	for i := 0; i < 400; i++ {
		_, err := v.ReadAt(p[:4096], r.Int63n(meta/4096)*4096)
		check(err)
		n := int64(4096) << r.Intn(7) // 4 KiB .. 256 KiB
		off := r.Int63n((int64(size)-n)/4096) * 4096
		for end := off + n; off < end; off += int64(len(p)) {
			_, err := v.ReadAt(p[:min(int64(len(p)), end-off)], off)
			check(err)
		}
	}
}

// lazyOpenWith is lazyOpen (transfer.go) with the lazy layers' options.
func lazyOpenWith(root, ref string, cfg *repo.ChainConfig, opts repo.LazyOptions) *lazyVolume {
	ctx := context.Background()
	check(os.MkdirAll(root, 0o700))
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	check(err)
	st := repoStore(root)
	e := &lenv{store: st, pending: map[string]pendingLayer{}}
	remote := func(d string) (repo.RangeFetcher, int64, error) {
		p := e.pending[d]
		return p.fetch, p.size, nil
	}
	e.mgr = volume.NewManager(root, cat, repo.Blobs{Store: st, Remote: remote, Lazy: opts}, volume.Options{CacheBytes: 32 << 20})
	start := time.Now()
	t := target(ref)
	p, err := repo.Pull(ctx, st, t, repo.PullOptions{ManifestOnly: true})
	check(err)
	spec := volume.ChainSpec{Size: cfg.VirtualSize, BlockSize: bs, ChunkSize: cfg.ChunkSize, Codec: "zstd", Snapshot: "v1"}
	for _, l := range p.Config.Layers {
		e.pending[l.Digest] = pendingLayer{repo.RegistryRanges{Repo: t.Repo}, l.Size}
		spec.Layers = append(spec.Layers, metadata.Layer{Digest: l.Digest, StoredBytes: uint64(l.Size), State: metadata.LayerRemote})
	}
	_, err = e.mgr.AdoptChain("g", spec)
	check(err)
	v, err := e.mgr.Open("g")
	check(err)
	return &lazyVolume{v: v, env: e, fetched: func() int64 { return 0 }, first: time.Since(start)}
}

// sleepFetcher is a remote that answers from memory after a latency: the
// pipeline's own figure, without the cost of a registry and a proxy on
// this (shared) machine.
type sleepFetcher struct {
	data []byte
	lat  time.Duration
}

func (f sleepFetcher) FetchRange(ctx context.Context, digest string, off, n int64) ([]byte, error) {
	select {
	case <-time.After(f.lat):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return append([]byte(nil), f.data[off:off+n]...), nil
}

// memoryRemote reads a blob of size bytes sequentially, 32 KiB at a time
// (a layer's chunk reads), through a LazyBlob whose remote is in memory
// rtt away (no registry, no proxy: round trips only, no bandwidth
// limit): as a layer reads it (each 1 MiB read announced with WillRead,
// then read chunk by chunk) and as a blob read alone, chunk by chunk, vs
// one request at a time. No target: the volume read above is the
// issue's; this shows the read-ahead's round trips without the
// registry's costs.
func memoryRemote(work string, size uint64, rtt time.Duration) {
	data := make([]byte, size)
	rand.New(rand.NewSource(13)).Read(data)
	digest := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	const span = 1 << 20
	read := func(opts repo.LazyOptions, hint bool) func() float64 {
		return func() float64 {
			d, done := scratch(work, "mem")
			defer done()
			b, err := repoStore(d).OpenLazy(digest, int64(size), sleepFetcher{data, rtt}, opts)
			check(err)
			defer b.Close()
			p := make([]byte, 32<<10)
			ctx := context.Background()
			start := time.Now()
			for off := int64(0); off < int64(size); off += int64(len(p)) {
				if hint && off%span == 0 {
					b.WillRead(ctx, off, min(off+span, int64(size)))
				}
				_, err := b.ReadAt(p, off)
				check(err)
			}
			return mbps(int64(size), time.Since(start))
		}
	}
	layer := measure("as a layer reads (memory remote)", "MB/s", read(repo.LazyOptions{}, true))
	alone := measure("chunk reads alone (memory remote)", "MB/s", read(repo.LazyOptions{}, false))
	serial := measure("one at a time (memory remote)", "MB/s", read(repo.LazyOptions{Concurrency: 1}, false))
	interleave(layer, alone, serial)
	fmt.Printf("  the same through a LazyBlob alone, remote in memory %v away (no registry, no proxy, no bandwidth limit):\n", rtt)
	printSeries(layer, alone, serial)
	printRatio(layer, serial, nil)
	printRatio(alone, serial, nil)
}
