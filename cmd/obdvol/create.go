package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/volume"
)

type createOptions struct {
	Size      string
	From      string
	Codec     string
	BlockSize uint32
	ChunkSize string
	// layoutSet: --codec, --block-size or --chunk-size was given (a
	// clone takes all three from its snapshot).
	layoutSet []string
}

func newCreateCommand(g *globalOptions) *cobra.Command {
	o := &createOptions{}
	cmd := &cobra.Command{
		Use:   "create VOL (--size SIZE | --from VOL@SNAP)",
		Short: "Create an empty volume, or a clone of a snapshot that shares its layers",
		Example: `  obdvol create golden --size 10G
  obdvol create web1 --from golden@v1`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, f := range []string{"codec", "block-size", "chunk-size"} {
				if cmd.Flags().Changed(f) {
					o.layoutSet = append(o.layoutSet, "--"+f)
				}
			}
			return runCreate(cmd.Context(), cmd.OutOrStdout(), g, o, args[0])
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Size, "size", "", "virtual size (e.g. 10G)")
	f.StringVar(&o.From, "from", "", "clone snapshot VOL@SNAP (no data is copied)")
	f.StringVar(&o.Codec, "codec", "zstd", "compression of sealed layers: zstd, s2 or none")
	f.Uint32Var(&o.BlockSize, "block-size", 4096, "block size in bytes")
	f.StringVar(&o.ChunkSize, "chunk-size", "64K", "compression chunk size of sealed layers")
	return cmd
}

func runCreate(ctx context.Context, out io.Writer, g *globalOptions, o *createOptions, name string) error {
	if (o.Size == "") == (o.From == "") {
		return usagef("create needs exactly one of --size or --from")
	}
	if err := metadata.ValidateName("volume", name); err != nil {
		return usageError{err}
	}
	var size, chunk uint64
	if o.From != "" {
		if len(o.layoutSet) > 0 {
			// Honouring them would need a clone whose new layers differ
			// from its snapshot's; a chain has one block size anyway.
			return usagef("create --from takes the codec, block size and chunk size of the snapshot: %s cannot be combined with --from",
				strings.Join(o.layoutSet, ", "))
		}
	} else {
		var err error
		if size, err = parseSize(o.Size); err != nil {
			return err
		}
		if chunk, err = parseSize(o.ChunkSize); err != nil {
			return err
		}
		codec, err := snapshot.ParseCodec(o.Codec)
		if err != nil {
			return usageError{err}
		}
		if chunk > math.MaxUint32 {
			return usagef("chunk size %s: want at most %s", o.ChunkSize, formatSize(snapshot.MaxChunkSize))
		}
		if err := snapshot.ValidateParams(o.BlockSize, uint32(chunk), codec); err != nil {
			return usageError{err}
		}
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	var v *metadata.Volume
	if o.From != "" {
		vol, snap, err := parseRef(o.From, snapRequired)
		if err != nil {
			return err
		}
		v, err = e.mgr.Clone(name, vol, snap)
		if err != nil {
			return err
		}
	} else {
		v, err = e.mgr.Create(name, size, volume.CreateOptions{BlockSize: o.BlockSize, Codec: o.Codec, ChunkSize: uint32(chunk)})
		if err != nil {
			return err
		}
	}
	if g.JSON {
		return printJSON(out, map[string]any{"volume": v})
	}
	if v.Origin != "" {
		fmt.Fprintf(out, "created volume %s (%s) from %s, sharing %d layer(s)\n", v.Name, formatSize(v.Size), v.Origin, len(v.Layers))
	} else {
		fmt.Fprintf(out, "created volume %s (%s)\n", v.Name, formatSize(v.Size))
	}
	return nil
}
