package main

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/tests/regtest"
	"github.com/obdvol/obdvol/volume"
	"oras.land/oras-go/v2/registry/remote/credentials"
)

// fillVolume writes size bytes of half-compressible data into a new
// volume and snapshots it; it returns the chain config for a push.
func buildSnapshot(e *env, name string, size uint64) *repo.ChainConfig {
	_, err := e.mgr.Create(name, size, volume.CreateOptions{})
	check(err)
	v, err := e.mgr.Open(name)
	check(err)
	defer v.Close()
	r := rand.New(rand.NewSource(7))
	buf := make([]byte, 4<<20)
	for off := uint64(0); off < size; off += uint64(len(buf)) {
		for b := 0; b < len(buf); b += bs {
			r.Read(buf[b : b+bs/2])
			for i := bs / 2; i < bs; i++ {
				buf[b+i] = byte(i)
			}
		}
		_, err := v.WriteAt(buf, int64(off))
		check(err)
	}
	check(v.Flush())
	_, err = v.Snapshot(context.Background(), "v1")
	check(err)
	return chainConfig(e, name, "v1")
}

func chainConfig(e *env, vol, snap string) *repo.ChainConfig {
	cfg := &repo.ChainConfig{Version: 1, Volume: vol, Snapshot: snap, BlockSize: bs, Codec: "zstd", ChunkSize: snapshot.DefaultChunkSize}
	check(e.mgr.Catalog().View(func(tx *metadata.Tx) error {
		s, err := tx.Snapshot(vol, snap)
		if err != nil {
			return err
		}
		cfg.VirtualSize, cfg.Created = s.Size, s.Created
		for _, d := range s.Layers {
			l, err := tx.Layer(d)
			if err != nil {
				return err
			}
			cfg.Layers = append(cfg.Layers, repo.LayerInfo{Digest: d, Size: int64(l.StoredBytes), VirtualSize: l.VirtualSize, DataBytes: l.DataBytes, Extents: l.Extents})
		}
		return nil
	}))
	return cfg
}

func target(ref string) *repo.Target {
	r, err := repo.ParseRef(ref)
	check(err)
	t, err := repo.OpenTarget(r, repo.TargetOptions{PlainHTTP: true, Credentials: credentials.NewMemoryStore()})
	check(err)
	return t
}

func timeCmd(name string, args ...string) time.Duration {
	start := time.Now()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		check(fmt.Errorf("%s %v: %v\n%s", name, args, err, out))
	}
	return time.Since(start)
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e6 }

// transfers numbers the scratch directories of the transfer benches.
var transfers int

// scratch returns a new directory under work and a func that removes it.
func scratch(work, name string) (string, func()) {
	transfers++
	d := mkdir(work, fmt.Sprintf("%s-%d", name, transfers))
	return d, func() { os.RemoveAll(d) }
}

// freshRegistry starts an empty registry: a push to it moves every blob
// (skopeo's blob-info cache would otherwise mount a blob it has already
// pushed to this registry instead of sending it).
func freshRegistry(work string) (*regtest.Registry, func()) {
	d, rm := scratch(work, "registry")
	reg, err := regtest.StartIn(d)
	check(err)
	return reg, func() { reg.Stop(); rm() }
}

func transferBench(work string, size uint64) {
	ctx := context.Background()
	fmt.Printf("== push and pull of a %d MiB snapshot through a local registry vs skopeo copy of the same artifact (%s)\n", size>>20, roundsNote())
	a := newEnv(filepath.Join(work, "A"), 32<<20)
	defer a.mgr.Close()
	cfg := buildSnapshot(a, "g", size)
	var blob int64
	for _, l := range cfg.Layers {
		blob += l.Size
	}
	st := repoStore(a.root)
	// The pulls read from this registry; skopeo pushes from an OCI layout
	// of the same artifact.
	reg, err := regtest.StartIn(mkdir(work, "registry"))
	check(err)
	defer reg.Stop()
	_, err = repo.Push(ctx, st, target(reg.Addr+"/obdvol/g:v1"), cfg, repo.PushOptions{})
	check(err)
	layout := filepath.Join(work, "layout")
	_, err = repo.Push(ctx, st, target("oci:"+layout+":v1"), cfg, repo.PushOptions{})
	check(err)

	push := measure("obdvol push", "MB/s", func() float64 {
		r, done := freshRegistry(work)
		defer done()
		res, err := repo.Push(ctx, st, target(r.Addr+"/obdvol/g:v1"), cfg, repo.PushOptions{})
		check(err)
		return mbps(res.BytesMoved, res.Duration)
	})
	skopeoPush := measure("skopeo push", "MB/s", func() float64 {
		r, done := freshRegistry(work)
		defer done()
		return mbps(blob, timeCmd("skopeo", "copy", "--dest-tls-verify=false", "oci:"+layout+":v1", "docker://"+r.Addr+"/skopeo/g:v1"))
	})
	pull := measure("obdvol pull", "MB/s", func() float64 {
		d, done := scratch(work, "pull")
		defer done()
		start := time.Now()
		p, err := repo.Pull(ctx, repoStore(d), target(reg.Addr+"/obdvol/g:v1"), repo.PullOptions{})
		check(err)
		return mbps(p.BytesMoved, time.Since(start))
	})
	skopeoPull := measure("skopeo pull", "MB/s", func() float64 {
		d, done := scratch(work, "skopeo-pull")
		defer done()
		return mbps(blob, timeCmd("skopeo", "copy", "--src-tls-verify=false", "docker://"+reg.Addr+"/obdvol/g:v1", "oci:"+filepath.Join(d, "out")+":v1"))
	})
	interleave(push, skopeoPush, pull, skopeoPull)
	printSeries(push, skopeoPush, pull, skopeoPull)
	printRatio(push, skopeoPush, atLeast(1.0))
	printRatio(pull, skopeoPull, atLeast(1.0))

	// Incremental: change 1% of the disk, snapshot, push. Bytes, not
	// time: one run.
	v, err := a.mgr.Open("g")
	check(err)
	chg := make([]byte, size/100/bs*bs)
	rand.New(rand.NewSource(9)).Read(chg)
	_, err = v.WriteAt(chg, int64(size/3))
	check(err)
	sres, err := v.Snapshot(ctx, "v2")
	check(err)
	v.Close()
	cfg2 := chainConfig(a, "g", "v2")
	res, err := repo.Push(ctx, st, target(reg.Addr+"/obdvol/g:v2"), cfg2, repo.PushOptions{})
	check(err)
	layer := int64(sres.Layer.StoredBytes)
	x := float64(res.BytesMoved) / float64(layer)
	fmt.Printf("  incremental push of a 1%% change (%d MiB): sent %d bytes, new layer %d bytes, ratio %.3f%s\n\n",
		len(chg)>>20, res.BytesMoved, layer, x, atMost(1.10).verdict(x))
}

func mkdir(parts ...string) string {
	d := filepath.Join(parts...)
	check(os.MkdirAll(d, 0o700))
	return d
}

func repoStore(root string) *repo.Store {
	s, err := repo.NewStore(root)
	check(err)
	return s
}

func lazyBench(work string, size uint64) {
	ctx := context.Background()
	fmt.Printf("== lazy pull of a %d MiB snapshot: time to first 4K read (%s), bytes to read a 5%% working set\n", size>>20, roundsNote())
	reg, err := regtest.StartIn(mkdir(work, "lregistry"))
	check(err)
	defer reg.Stop()
	a := newEnv(filepath.Join(work, "LA"), 32<<20)
	cfg := buildSnapshot(a, "g", size)
	_, err = repo.Push(ctx, repoStore(a.root), target(reg.Addr+"/lazy/g:v1"), cfg, repo.PushOptions{})
	check(err)
	a.mgr.Close()
	var stored int64
	for _, l := range cfg.Layers {
		stored += l.Size
	}
	ref := reg.Addr + "/lazy/g:v1"
	var openBytes int64
	first := measure("pull --lazy to first 4K read", "s", func() float64 {
		d, done := scratch(work, "lazy")
		defer done()
		l := lazyOpen(d, ref, cfg, size)
		defer l.close()
		openBytes = l.fetched()
		return l.first.Seconds()
	})
	interleave(first)
	printValue(first, atMost(1))
	fmt.Printf("    fetched %d bytes to open: manifest, config, trailer+index (target: independent of size)\n", openBytes)
	// A full pull of the same for comparison: one run, it is the slow
	// side and has no target.
	d, done := scratch(work, "full")
	start := time.Now()
	_, err = repo.Pull(ctx, repoStore(d), target(ref), repo.PullOptions{})
	check(err)
	fmt.Printf("  full pull (one run): %ss\n", num(time.Since(start).Seconds()))
	done()
	// A 5% working set in 256 KiB runs at random places.
	d, done = scratch(work, "lazy")
	defer done()
	l := lazyOpen(d, ref, cfg, size)
	defer l.close()
	r := rand.New(rand.NewSource(3))
	run := make([]byte, 256<<10)
	want := size / 20
	var read uint64
	before := l.fetched()
	for read < want {
		off := uint64(r.Int63n(int64(size-uint64(len(run))))) &^ (bs - 1)
		_, err := l.v.ReadAt(run, int64(off))
		check(err)
		read += uint64(len(run))
	}
	ws := l.fetched() - before
	x := float64(ws) / float64(read)
	fmt.Printf("  5%% working set (%d MiB in 256K runs): fetched %d bytes, %.2fx of the working set%s (stored/raw %.2f)\n\n",
		read>>20, ws, x, atMost(2).verdict(x), float64(stored)/float64(size))
}

// lazyVolume is a volume adopted from a manifest-only pull, its blobs
// fetched as read.
type lazyVolume struct {
	v       *volume.Volume
	env     *lenv
	fetched func() int64
	first   time.Duration // from the pull to the first 4K read's end
}

func (l *lazyVolume) close() {
	l.v.Close()
	l.env.mgr.Close()
}

// lazyOpen pulls the manifest of ref into a new root, adopts the chain
// and reads one 4K block from the middle.
func lazyOpen(root, ref string, cfg *repo.ChainConfig, size uint64) *lazyVolume {
	ctx := context.Background()
	c, fetched := lazyEnv(root)
	start := time.Now()
	t := target(ref)
	p, err := repo.Pull(ctx, c.store, t, repo.PullOptions{ManifestOnly: true})
	check(err)
	spec := volume.ChainSpec{Size: cfg.VirtualSize, BlockSize: bs, ChunkSize: cfg.ChunkSize, Codec: "zstd", Snapshot: "v1"}
	for _, l := range p.Config.Layers {
		fetch, err := repo.LayerRanges(t.Repo, l.Digest, l.Size, l.Parts)
		check(err)
		c.pending[l.Digest] = pendingLayer{fetch, l.Size}
		spec.Layers = append(spec.Layers, metadata.Layer{Digest: l.Digest, StoredBytes: uint64(l.Size), State: "remote"})
	}
	_, err = c.mgr.AdoptChain("g", spec)
	check(err)
	v, err := c.mgr.Open("g")
	check(err)
	blk := make([]byte, bs)
	_, err = v.ReadAt(blk, int64(size/2))
	check(err)
	return &lazyVolume{v: v, env: c, fetched: fetched, first: time.Since(start)}
}

// pendingLayer and lazyEnv mirror the CLI's lazy wiring.
type pendingLayer struct {
	fetch repo.RangeFetcher
	size  int64
}

type lenv struct {
	mgr     *volume.Manager
	store   *repo.Store
	pending map[string]pendingLayer
}

func lazyEnv(root string) (*lenv, func() int64) {
	check(os.MkdirAll(root, 0o700))
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	check(err)
	st := repoStore(root)
	e := &lenv{store: st, pending: map[string]pendingLayer{}}
	var blobs []*repo.LazyBlob
	counting := func(d string) (repo.RangeFetcher, int64, error) {
		p := e.pending[d]
		return p.fetch, p.size, nil
	}
	b := repo.Blobs{Store: st, Remote: counting}
	e.mgr = volume.NewManager(root, cat, b, volume.Options{CacheBytes: 32 << 20})
	fetched := func() int64 {
		blobs = blobs[:0]
		var n int64
		for d := range e.pending {
			if l, err := e.mgr.Layer(d); err == nil {
				if lb, ok := l.Source().(*repo.LazyBlob); ok {
					n += lb.Fetched()
				}
			}
		}
		return n
	}
	return e, fetched
}
