package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
)

type pushOptions struct {
	transferFlags
	MountFrom []string
	Prefetch  string
	ChunkSize string // --chunk-size: upload blobs in chunks of this size (upload)
}

func newPushCommand(g *globalOptions) *cobra.Command {
	o := &pushOptions{}
	cmd := &cobra.Command{
		Use:   "push VOL@SNAP REF",
		Short: "Push a snapshot to an OCI registry or layout (only the layers it lacks)",
		Long: `Push snapshot VOL@SNAP as an OCI artifact: REF is host[:port]/repo:tag,
host/repo@sha256:..., or oci:DIR[:tag]. Layers the target already has are skipped,
layers in other repositories of the same registry (--mount-from) are cross-mounted,
the rest are uploaded in parallel. Run it again to resume an interrupted push.
Blobs go up whole; --chunk-size uploads them in chunks of that size (for
registries or proxies that limit a request's size), and a whole upload
refused with 413 switches the push to chunks of 16M, halved while refused.
Credentials come from the docker config (obdvol login). TLS is verified;
--plain-http talks plain HTTP (loopback or a trusted network only).`,
		Example: "  obdvol push golden@v1 registry.example.com/disks/golden:v1\n  obdvol push golden@v1 oci:/srv/disks:v1",
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPush(cmd.Context(), cmd.OutOrStdout(), g, o, args[0], args[1])
		},
	}
	f := cmd.Flags()
	o.transferFlags.register(f)
	f.StringVar(&o.Prefetch, "prefetch", "", "attach a prefetch list (from serve --record-prefetch) that lazy pulls fetch first")
	f.StringSliceVar(&o.MountFrom, "mount-from", nil, "repositories of the same registry to cross-mount layers from")
	f.StringVar(&o.ChunkSize, "chunk-size", "", "upload blobs in chunks (PATCH) of this size, e.g. 64M; default: whole, in 16M chunks after a 413")
	return cmd
}

func runPush(ctx context.Context, out io.Writer, g *globalOptions, o *pushOptions, src, ref string) error {
	vol, snap, err := parseRef(src, snapRequired)
	if err != nil {
		return err
	}
	chunk, err := chunkSizeFlag(o.ChunkSize)
	if err != nil {
		return err
	}
	t, err := openTarget(ref, &o.transferFlags)
	if err != nil {
		return err
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	cfg := &repo.ChainConfig{Version: 1, Volume: vol, Snapshot: snap}
	err = e.cat.View(func(tx *metadata.Tx) error {
		v, err := tx.Volume(vol)
		if err != nil {
			return err
		}
		s, err := tx.Snapshot(vol, snap)
		if err != nil {
			return err
		}
		cfg.VirtualSize, cfg.BlockSize, cfg.Codec, cfg.ChunkSize, cfg.Created = s.Size, v.BlockSize, v.Codec, v.ChunkSize, s.Created
		cfg.Labels = s.Labels
		for _, d := range s.Layers {
			l, err := tx.Layer(d)
			if err != nil {
				return err
			}
			cfg.Layers = append(cfg.Layers, repo.LayerInfo{Digest: d, Size: int64(l.StoredBytes),
				VirtualSize: l.VirtualSize, DataBytes: l.DataBytes, Extents: l.Extents})
		}
		return nil
	})
	if err != nil {
		return err
	}
	if o.Prefetch != "" {
		if cfg.Prefetch, err = loadPrefetch(o.Prefetch, vol); err != nil {
			return err
		}
	}
	p := newBarProgress(g, "push")
	// A lazily pulled layer the target lacks streams from its source.
	open := func(d string) (io.ReadCloser, error) {
		l, err := e.mgr.Layer(d)
		if err != nil {
			return nil, err
		}
		return io.NopCloser(io.NewSectionReader(l.Source(), 0, l.Source().Size())), nil
	}
	res, err := repo.Push(ctx, e.store, t, cfg, repo.PushOptions{Concurrency: o.Concurrency, MountFrom: o.MountFrom, Progress: p, Open: open,
		ChunkSize: chunk})
	finishBar(p)
	if err != nil {
		return err
	}
	// Remember where the layers live now (for mounts and lazy pulls).
	org := origin(t, &o.transferFlags)
	e.cat.Update(func(tx *metadata.Tx) error {
		for _, li := range cfg.Layers {
			if l, err := tx.Layer(li.Digest); err == nil && !slices.Contains(l.Origins, org) {
				l.Origins = append(l.Origins, org)
				tx.PutLayer(l)
			}
		}
		return nil
	})
	if g.JSON {
		return printJSON(out, map[string]any{"source": src, "reference": t.Ref.String(), "result": res,
			"seconds": res.Duration.Seconds()})
	}
	fmt.Fprintf(out, "pushed %s to %s (%s)\n  sent %s in %d blob(s), skipped %s in %d, mounted %d, %.2fs, %s\n",
		src, t.Ref, res.Manifest, formatSize(uint64(res.BytesMoved)), res.BlobsMoved, formatSize(uint64(res.BytesSkipped)),
		res.BlobsSkipped, res.BlobsMounted, res.Duration.Seconds(), rate(res.BytesMoved, res.Duration))
	if res.BlobsChunked > 0 {
		fmt.Fprintf(out, "  %d blob(s) uploaded in chunks\n", res.BlobsChunked)
	}
	return nil
}

// chunkSizeFlag reads --chunk-size: empty is 0 (whole blobs, chunks
// after a 413), else a size from 64K to 1G.
func chunkSizeFlag(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := parseSize(s)
	if err != nil {
		return 0, err
	}
	if v < 64<<10 || v > 1<<30 {
		return 0, usagef("--chunk-size %s: want 64K to 1G (one chunk per blob in flight is held in memory)", s)
	}
	return int64(v), nil
}

// loadPrefetch reads the list of volume vol from a --record-prefetch file.
func loadPrefetch(path, vol string) ([]repo.PrefetchRange, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var lists map[string][]repo.PrefetchRange
	if err := json.Unmarshal(b, &lists); err != nil {
		return nil, fmt.Errorf("prefetch list %s: %w", path, err)
	}
	l, ok := lists[vol]
	if !ok {
		return nil, fmt.Errorf("prefetch list %s has no ranges for volume %s", path, vol)
	}
	return l, nil
}
