// Command bench measures obdvol's local data path and prints each figure
// beside a peer's, from one run: `make bench` runs it.
//
//	random 4K reads through chains of depth 1, 16, 64 (same content)
//	seal throughput vs qemu-img convert -c -O qcow2 of the same image
//	merged-index memory per extent
//	chunk-size table (-chunks): compression ratio, random 4K, sequential read
//	NBD read path: obdvol serve --foreground vs qemu-nbd and nbdkit (fio)
//	N clones of one golden served by one obdvol daemon: IOPS and RSS per N
//	push whole vs in chunks (--chunk-size, the 413 fallback)
//	cold lazy reads at 100 ms RTT: pipelined vs one request at a time
//
// Compared configurations are measured in interleaved rounds (rounds.go):
// every figure is a median with its min-max over -rounds rounds.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/volume"
)

var (
	sizeMiB   = flag.Int("size", 256, "image size in MiB")
	readSecs  = flag.Float64("read-seconds", 1, "seconds per read measurement (one round)")
	chunks    = flag.Bool("chunks", false, "print the chunk-size table instead")
	dir       = flag.String("dir", "", "work directory (default: a temp dir)")
	only      = flag.String("only", "", "run these parts (comma-separated): depth, seal, transfer, upload, parts, lazy, lazylat, nbd, clones; ranges, fleet and bigxfer are not in the default run (make bench-ranges, make bench-fleet: fleet,lazylat,bigxfer)")
	cpuprof   = flag.String("cpuprofile", "", "write a CPU profile")
	xferMiB   = flag.Int("transfer-size", 512, "snapshot size for the push/pull bench, MiB")
	lazyMiB   = flag.Int("lazy-size", 4096, "snapshot size for the lazy-pull bench, MiB")
	nbdMiB    = flag.Int("nbd-size", 512, "volume size for the NBD bench, MiB")
	fioSecs   = flag.Int("fio-seconds", 2, "seconds per fio random-read run (one round)")
	obdvolBin = flag.String("obdvol", "bin/obdvol", "the obdvol binary (obdvol serve, obdvol daemon)")
)

const bs = 4096

func main() {
	flag.Parse()
	work := *dir
	if work != "" {
		check(os.MkdirAll(work, 0o700))
	} else {
		var err error
		work, err = os.MkdirTemp("", "obdvol-bench-")
		check(err)
		defer os.RemoveAll(work)
	}
	parts := map[string]bool{}
	for _, p := range strings.Split(*only, ",") {
		if p = strings.TrimSpace(p); p != "" {
			if !slices.Contains(benchParts, p) {
				check(fmt.Errorf("-only %s: no such part (%s)", p, strings.Join(benchParts, ", ")))
			}
			parts[p] = true
		}
	}
	// run: a part of the default run, or one named by -only; named says
	// whether it was named (the parts not in the default run).
	run := func(part string) bool { return len(parts) == 0 || parts[part] }
	named := func(part string) bool { return parts[part] }
	if named("fleet") { // make bench-fleet (fleet.go): its own golden
		fleetBench(work, *obdvolBin)
	}
	if named("fleet") || named("bigxfer") {
		delete(parts, "fleet")
		if named("bigxfer") {
			defer bigTransferBench(work, *obdvolBin) // bigxfer.go: the longest, last
			delete(parts, "bigxfer")
		}
		if len(parts) == 0 {
			return
		}
	}
	size := uint64(*sizeMiB) << 20
	img := filepath.Join(work, "image.raw")
	check(writeHalfCompressible(img, size))
	fmt.Printf("obdvol bench: %d MiB half-compressible image, GOMAXPROCS=%d, %s\n\n", *sizeMiB, runtime.GOMAXPROCS(0), roundsNote())
	if *chunks {
		chunkTable(work, img, size)
		return
	}
	if *cpuprof != "" {
		f, err := os.Create(*cpuprof)
		check(err)
		check(pprof.StartCPUProfile(f))
		defer pprof.StopCPUProfile()
	}
	if run("depth") {
		depthBench(work, img, size)
	}
	if run("seal") {
		sealBench(work, img, size)
	}
	if run("transfer") {
		transferBench(work, uint64(*xferMiB)<<20)
	}
	if run("upload") {
		uploadBench(work, uint64(*uploadMiB)<<20) // tests/bench/upload.go
	}
	if run("parts") {
		partsBench(work, uint64(*partsMiB)<<20) // tests/bench/parts.go
	}
	if run("lazy") {
		lazyBench(work, uint64(*lazyMiB)<<20)
	}
	if run("lazylat") {
		lazyLatencyBench(work) // tests/bench/lazylat.go
	}
	if run("nbd") {
		nbdBench(work, uint64(*nbdMiB)<<20, *obdvolBin, *fioSecs)
	}
	if run("clones") {
		clonesBench(work, *obdvolBin) // tests/bench/clones.go
	}
	if named("ranges") { // not in the default run (about a minute)
		rangesBench(work) // tests/bench/ranges.go
	}
}

// benchParts are the parts -only may name.
var benchParts = []string{"depth", "seal", "transfer", "upload", "parts", "lazy", "lazylat", "nbd", "clones", "ranges", "fleet", "bigxfer"}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// writeHalfCompressible writes blocks that are half random, half a
// repeating pattern: zstd stores them at about half their size.
func writeHalfCompressible(path string, size uint64) error {
	if fi, err := os.Stat(path); err == nil && uint64(fi.Size()) == size {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := rand.New(rand.NewSource(42))
	buf := make([]byte, 1<<20)
	for off := uint64(0); off < size; off += uint64(len(buf)) {
		for b := 0; b < len(buf); b += bs {
			r.Read(buf[b : b+bs/2])
			for i := bs / 2; i < bs; i++ {
				buf[b+i] = byte("obdvol half-compressible text "[i%30])
			}
		}
		if _, err := f.Write(buf); err != nil {
			return err
		}
	}
	return f.Sync()
}

type env struct {
	root string
	mgr  *volume.Manager
}

func newEnv(root string, cache int) *env {
	check(os.MkdirAll(root, 0o700))
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	check(err)
	st, err := repo.NewStore(root)
	check(err)
	return &env{root: root, mgr: volume.NewManager(root, cat, repo.Blobs{Store: st}, volume.Options{CacheBytes: cache})}
}

// buildStriped makes a volume whose content is the image, spread over
// depth layers: block b goes to layer (b/16) % depth. Every depth gives
// the same disk, so reads compare like with like.
func buildStriped(e *env, name, img string, size uint64, depth int, chunk uint32) (*volume.Volume, time.Duration) {
	_, err := e.mgr.Create(name, size, volume.CreateOptions{ChunkSize: chunk})
	check(err)
	v, err := e.mgr.Open(name)
	check(err)
	f, err := os.Open(img)
	check(err)
	defer f.Close()
	stripe := uint64(16 * bs)
	buf := make([]byte, stripe)
	var sealed time.Duration
	for k := 0; k < depth; k++ {
		for off := uint64(k) * stripe; off < size; off += stripe * uint64(depth) {
			_, err := f.ReadAt(buf, int64(off))
			check(err)
			_, err = v.WriteAt(buf, int64(off))
			check(err)
		}
		check(v.Flush())
		res, err := v.Snapshot(context.Background(), fmt.Sprintf("l%d", k))
		check(err)
		sealed = res.Duration
	}
	return v, sealed
}

// readSeed makes every random-read run read its own blocks, so a round
// does not replay the blocks the last one left in the chunk cache.
var readSeed int64

// randRead4K reads random 4K blocks for the given time and returns IOPS.
func randRead4K(v *volume.Volume, size uint64, secs float64) float64 {
	iops, _ := randRead4KCPU(v, size, secs)
	return iops
}

// randRead4KCPU is randRead4K that also returns reads per second of this
// process's CPU time: on a machine that other work keeps busy, wall-clock
// IOPS count the time the reader waited for a core, reads per CPU-second
// do not.
func randRead4KCPU(v *volume.Volume, size uint64, secs float64) (iops, perCPU float64) {
	readSeed++
	r := rand.New(rand.NewSource(readSeed))
	p := make([]byte, bs)
	blocks := int64(size / bs)
	n := 0
	start, cpu0 := time.Now(), cpuTime()
	for time.Since(start).Seconds() < secs {
		for i := 0; i < 256; i++ {
			if _, err := v.ReadAt(p, r.Int63n(blocks)*bs); err != nil {
				check(err)
			}
		}
		n += 256
	}
	return float64(n) / time.Since(start).Seconds(), float64(n) / (cpuTime() - cpu0).Seconds()
}

func seqRead(v *volume.Volume, size uint64) float64 {
	p := make([]byte, 1<<20)
	start := time.Now()
	for off := uint64(0); off < size; off += uint64(len(p)) {
		_, err := v.ReadAt(p, int64(off))
		check(err)
	}
	return float64(size) / time.Since(start).Seconds() / 1e6
}

func depthBench(work, img string, size uint64) {
	fmt.Printf("== random 4K reads through chains of depth 1, 16, 64 (same content; chunk cache 32 MiB, cold chunks decompress; %s)\n", roundsNote())
	var ss, cpu []*series
	for _, depth := range []int{1, 16, 64} {
		e := newEnv(filepath.Join(work, fmt.Sprintf("depth%d", depth)), 32<<20)
		defer e.mgr.Close()
		v, _ := buildStriped(e, "d", img, size, depth, snapshot.DefaultChunkSize)
		defer v.Close()
		extents, perExtent := indexMemory(e, v)
		if extents > 1 { // one extent's bytes drown in the heap's noise
			fmt.Printf("  depth %2d merged index: %d extents, %.1f bytes/extent\n", depth, extents, perExtent)
		} else {
			fmt.Printf("  depth %2d merged index: %d extent\n", depth, extents)
		}
		randRead4K(v, size, 0.5) // warm up
		name := fmt.Sprintf("depth %d", depth)
		wall, c := measure2(name, "IOPS", name, "reads/CPU-s", func() (float64, float64) { return randRead4KCPU(v, size, *readSecs) })
		ss, cpu = append(ss, wall), append(cpu, c)
	}
	interleave(ss...)
	fmt.Println("  wall clock:")
	printSeries(ss...)
	printRatio(ss[1], ss[0], nil)
	printRatio(ss[2], ss[0], atLeast(0.9))
	fmt.Println("  per CPU-second of this process (the same reads; counts only the time the reader ran, not its wait for a core):")
	printSeries(cpu...)
	printRatio(cpu[1], cpu[0], nil)
	printRatio(cpu[2], cpu[0], atLeast(0.9))
	fmt.Println()
}

// indexMemory opens the volume's chain afresh, copies times, and
// measures the heap the merged indexes take per extent.
func indexMemory(e *env, v *volume.Volume) (int, float64) {
	rec := v.Record()
	// Open the layers first so only the merge is measured.
	_, err := e.mgr.Chain(rec.Layers, rec.Size, rec.BlockSize)
	check(err)
	const copies = 64
	chains := make([]*snapshot.Chain, copies)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.GC() // a second cycle empties sync.Pool victim caches
	runtime.ReadMemStats(&m0)
	for i := range chains {
		chains[i], err = e.mgr.Chain(rec.Layers, rec.Size, rec.BlockSize)
		check(err)
	}
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m1)
	n := len(chains[0].Index())
	runtime.KeepAlive(chains)
	return n, float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)) / float64(max(n, 1)*copies)
}

// sealOnce fills a new volume under root with the image, seals it and
// removes root; it returns the seal's MB/s and the layer's stored bytes.
func sealOnce(root, img string, size uint64, chunk uint32) (float64, uint64) {
	defer os.RemoveAll(root)
	e := newEnv(root, 32<<20)
	defer e.mgr.Close()
	_, err := e.mgr.Create("s", size, volume.CreateOptions{ChunkSize: chunk})
	check(err)
	v, err := e.mgr.Open("s")
	check(err)
	defer v.Close()
	f, err := os.Open(img)
	check(err)
	defer f.Close()
	buf := make([]byte, 4<<20)
	for off := uint64(0); off < size; off += uint64(len(buf)) {
		_, err := f.ReadAt(buf, int64(off))
		check(err)
		_, err = v.WriteAt(buf, int64(off))
		check(err)
	}
	check(v.Flush())
	res, err := v.Snapshot(context.Background(), "sealed")
	check(err)
	return float64(size) / res.Duration.Seconds() / 1e6, res.Layer.StoredBytes
}

// seals numbers sealOnce's roots.
var seals int

func sealSeries(name, work, img string, size uint64, chunk uint32, stored *uint64) *series {
	return measure(name, "MB/s", func() float64 {
		seals++
		mbps, st := sealOnce(filepath.Join(work, fmt.Sprintf("seal-%d", seals)), img, size, chunk)
		*stored = st
		return mbps
	})
}

func sealBench(work, img string, size uint64) {
	fmt.Printf("== seal throughput (half-compressible image) vs qemu-img convert -c -O qcow2 (%s)\n", roundsNote())
	var stored uint64
	seal := sealSeries("obdvol seal", work, img, size, 0, &stored)
	qimg, err := exec.LookPath("qemu-img")
	if err != nil {
		interleave(seal)
		printSeries(seal)
		fmt.Println("  qemu-img not installed (make deps installs qemu-utils): no ratio")
		fmt.Println()
		return
	}
	out := filepath.Join(work, "out.qcow2")
	var qstored int64
	qemu := measure("qemu-img convert", "MB/s", func() float64 {
		os.Remove(out)
		start := time.Now()
		cmd := exec.Command(qimg, "convert", "-c", "-O", "qcow2", img, out)
		cmd.Stderr = os.Stderr
		check(cmd.Run())
		d := time.Since(start)
		fi, err := os.Stat(out)
		check(err)
		qstored = fi.Size()
		return float64(size) / d.Seconds() / 1e6
	})
	interleave(seal, qemu)
	printSeries(seal, qemu)
	fmt.Printf("  stored: obdvol %d bytes (%.3f of %d), qemu-img %d bytes\n", stored, float64(stored)/float64(size), size, qstored)
	printRatio(seal, qemu, atLeast(10))
	fmt.Println()
}

func chunkTable(work, img string, size uint64) {
	fmt.Printf("chunk-size table: %s; the table shows medians, the spread follows it\n\n", roundsNote())
	type row struct {
		cs                    uint32
		stored                uint64
		cold, warm, seq, seal *series
	}
	var rows []*row
	var all []*series
	for _, cs := range []uint32{16 << 10, 64 << 10, 256 << 10, 1 << 20} {
		root := filepath.Join(work, fmt.Sprintf("chunk%d", cs))
		e := newEnv(root, 1<<20)
		v, _ := buildStriped(e, "c", img, size, 1, cs)
		blob := filepath.Join(root, "blobs", "sha256", v.Record().Layers[0][7:])
		v.Close()
		e.mgr.Close()
		// open runs f on the volume through a manager with the given
		// chunk cache, the layer blob in the page cache (the table
		// compares CPU cost).
		open := func(cache int, f func(v *volume.Volume) float64) func() float64 {
			return func() float64 {
				_, err := os.ReadFile(blob)
				check(err)
				e := newEnv(root, cache)
				defer e.mgr.Close()
				v, err := e.mgr.Open("c")
				check(err)
				defer v.Close()
				return f(v)
			}
		}
		name := fmt.Sprintf("%d KiB", cs>>10)
		r := &row{cs: cs}
		r.cold = measure(name+" random 4K, chunk not cached", "IOPS", open(1<<20, func(v *volume.Volume) float64 { return randRead4K(v, size, *readSecs) }))
		r.warm = measure(name+" random 4K, chunk cached", "IOPS", open(2*int(size), func(v *volume.Volume) float64 {
			seqRead(v, size) // fill the chunk cache
			return randRead4K(v, size, *readSecs)
		}))
		r.seq = measure(name+" sequential 1M", "MB/s", open(1<<20, func(v *volume.Volume) float64 { return seqRead(v, size) }))
		r.seal = sealSeries(name+" seal", work, img, size, cs, &r.stored)
		rows = append(rows, r)
		all = append(all, r.cold, r.warm, r.seq, r.seal)
	}
	interleave(all...)
	fmt.Println("| chunk size | stored/raw | random 4K read, chunk not cached (IOPS) | random 4K read, chunk cached (IOPS) | sequential 1M read (MB/s) | seal (MB/s) |")
	fmt.Println("|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		fmt.Printf("| %d KiB | %.3f | %.0f | %.0f | %.0f | %.0f |\n", r.cs>>10, float64(r.stored)/float64(size),
			r.cold.spread().med, r.warm.spread().med, r.seq.spread().med, r.seal.spread().med)
	}
	fmt.Println()
	printSeries(all...)
	var base *row
	for _, r := range rows {
		if r.cs == snapshot.DefaultChunkSize {
			base = r
		}
	}
	for _, r := range rows {
		if r != base {
			printRatio(r.cold, base.cold, nil)
		}
	}
}
