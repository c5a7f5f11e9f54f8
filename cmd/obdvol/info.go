package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/metadata"
)

func newInfoCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "info VOL",
		Short: "Show a volume: size, chain of layers, writable layer, snapshots, clones",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runInfo(cmd.Context(), cmd.OutOrStdout(), g, args[0])
		},
	}
}

type layerInfo struct {
	Digest      string `json:"digest"`
	VirtualSize uint64 `json:"logical_bytes"`
	DataBytes   uint64 `json:"data_bytes"`
	StoredBytes uint64 `json:"stored_bytes"`
	Extents     uint64 `json:"extents"`
	State       string `json:"state"`
	LocalBytes  uint64 `json:"local_bytes"` // how much of the blob is on this host
	// Origins are the repositories the layer was pulled from (a remote
	// layer's reads go there); Parts, how many blobs the layer is in
	// there when it was pushed in parts (push --max-blob), else 0.
	Origins []string `json:"origins,omitempty"`
	Parts   int      `json:"parts,omitempty"`
}

type snapInfo struct {
	Name    string    `json:"name"`
	Layers  int       `json:"layers"`
	Size    uint64    `json:"size"`
	Created time.Time `json:"created"`
}

type volumeInfo struct {
	Name          string      `json:"name"`
	Size          uint64      `json:"size"`
	BlockSize     uint32      `json:"block_size"`
	Codec         string      `json:"codec"`
	ChunkSize     uint32      `json:"chunk_size"`
	Origin        string      `json:"origin,omitempty"`
	Created       time.Time   `json:"created"`
	Chain         []layerInfo `json:"chain"`
	WritableBytes uint64      `json:"writable_bytes"`
	// PendingSnapshot is a snapshot whose seal was interrupted (a full
	// disk, a crash): its frozen layer is read through until the next
	// open for writing or snapshot finishes it.
	PendingSnapshot string           `json:"pending_snapshot,omitempty"`
	Snapshots       []snapInfo       `json:"snapshots"`
	Clones          []string         `json:"clones"`
	Device          *metadata.Device `json:"device,omitempty"`
	Active          bool             `json:"active"` // the device's server is alive
	// Activation is how the daemon activates the volume whenever it
	// starts (a persistent activate or serve), nil when it does not.
	Activation *metadata.Activation `json:"activation,omitempty"`
}

func runInfo(ctx context.Context, out io.Writer, g *globalOptions, ref string) error {
	name, _, err := parseRef(ref, snapForbidden)
	if err != nil {
		return err
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	var vi volumeInfo
	err = e.cat.View(func(tx *metadata.Tx) error {
		v, err := tx.Volume(name)
		if err != nil {
			return err
		}
		vi = volumeInfo{Name: v.Name, Size: v.Size, BlockSize: v.BlockSize, Codec: v.Codec, ChunkSize: v.ChunkSize,
			Origin: v.Origin, Created: v.Created, Chain: []layerInfo{}, Snapshots: []snapInfo{}, Device: v.Device, Activation: v.Activation,
			WritableBytes: e.mgr.WritableUsage(v)}
		if v.Frozen != 0 {
			vi.PendingSnapshot = v.FrozenSnapshot
		}
		for _, d := range v.Layers {
			li := layerInfo{Digest: d, State: "missing"}
			if l, err := tx.Layer(d); err == nil {
				li = layerInfo{Digest: d, VirtualSize: l.VirtualSize, DataBytes: l.DataBytes, StoredBytes: l.StoredBytes, Extents: l.Extents, State: l.State,
					Origins: l.Origins}
				for _, o := range l.Origins {
					if n := len(l.Parts[o]); n > 0 {
						li.Parts = n
						break
					}
				}
			}
			li.LocalBytes = uint64(e.store.LocalBytes(d))
			vi.Chain = append(vi.Chain, li)
		}
		snaps, err := tx.Snapshots(name)
		if err != nil {
			return err
		}
		for _, s := range snaps {
			vi.Snapshots = append(vi.Snapshots, snapInfo{Name: s.Name, Layers: len(s.Layers), Size: s.Size, Created: s.Created})
		}
		vi.Clones, err = tx.ClonesOf(name, "")
		if vi.Clones == nil {
			vi.Clones = []string{}
		}
		return err
	})
	if err != nil {
		return err
	}
	vi.Active = deviceLive(e, name, vi.Device)
	if g.JSON {
		return printJSON(out, map[string]any{"volume": vi})
	}
	fmt.Fprintf(out, "volume:     %s\nsize:       %s (%d bytes)\nblock size: %d\ncodec:      %s, chunks of %s\n",
		vi.Name, formatSize(vi.Size), vi.Size, vi.BlockSize, vi.Codec, formatSize(uint64(vi.ChunkSize)))
	if vi.Origin != "" {
		fmt.Fprintf(out, "origin:     %s\n", vi.Origin)
	}
	if vi.Device != nil && (vi.Active || vi.Device.Kind == "ublk") {
		fmt.Fprintf(out, "device:     %s (%s, pid %d)\n", deviceColumn(vi.Device, vi.Active), vi.Device.Kind, vi.Device.PID)
	}
	if a := vi.Activation; a != nil {
		how := a.Kind
		if a.Listen != "" {
			how += " on " + a.Listen
		}
		if a.ReadOnly {
			how += ", read-only"
		}
		fmt.Fprintf(out, "activation: persistent (%s): the daemon activates it whenever it starts\n", how)
	}
	fmt.Fprintf(out, "writable:   %s on disk\n", formatSize(vi.WritableBytes))
	if vi.PendingSnapshot != "" {
		fmt.Fprintf(out, "pending:    snapshot %s is not finished (its seal was interrupted; the next snapshot or open for writing finishes it)\n", vi.PendingSnapshot)
	}
	fmt.Fprintf(out, "chain:      %d layer(s), base first\n", len(vi.Chain))
	t := newTable(out)
	fmt.Fprintln(t, "  #\tDIGEST\tLOGICAL\tDATA\tSTORED\tLOCAL\tEXTENTS\tSTATE")
	for i, l := range vi.Chain {
		state := l.State
		if l.Parts > 0 {
			state += fmt.Sprintf(" (%d parts)", l.Parts)
		}
		fmt.Fprintf(t, "  %d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", i, l.Digest, formatSize(l.VirtualSize), formatSize(l.DataBytes), formatSize(l.StoredBytes), formatSize(l.LocalBytes), l.Extents, state)
	}
	t.Flush()
	fmt.Fprintf(out, "snapshots:  %d\n", len(vi.Snapshots))
	for _, s := range vi.Snapshots {
		fmt.Fprintf(out, "  %s@%s  %d layer(s)  %s  %s\n", vi.Name, s.Name, s.Layers, formatSize(s.Size), s.Created.Format(time.RFC3339))
	}
	if len(vi.Clones) > 0 {
		fmt.Fprintf(out, "clones:     %v\n", vi.Clones)
	}
	return nil
}
