package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

func newVerifyCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "verify VOL[@SNAP]",
		Short: "Re-read every byte of every layer and check every checksum",
		Long: `Re-read every layer of the volume's (or snapshot's) chain: the whole blob against its
sha256 digest, and every chunk against its crc32c and decompressed length.
Exits 1 if anything fails.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVerify(cmd.Context(), cmd.OutOrStdout(), g, args[0])
		},
	}
}

func runVerify(ctx context.Context, out io.Writer, g *globalOptions, ref string) error {
	name, snap, err := parseRef(ref, snapOptional)
	if err != nil {
		return err
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	rec, err := volumeRecord(e, name)
	if err != nil {
		return err
	}
	layers := rec.Layers
	if snap != "" {
		s, err := e.mgr.SnapshotChain(name, snap)
		if err != nil {
			return err
		}
		layers = s.Layers
	}
	checks, verr := e.mgr.Verify(ctx, layers)
	if g.JSON {
		if verr != nil {
			return verr
		}
		return printJSON(out, map[string]any{"source": ref, "layers": checks, "ok": true})
	}
	for _, c := range checks {
		status := "ok"
		if c.Error != "" {
			status = "FAILED: " + c.Error
		}
		fmt.Fprintf(out, "%s  %d chunks  %s  %s\n", c.Digest, c.Chunks, formatSize(uint64(c.Bytes)), status)
	}
	if verr != nil {
		return verr
	}
	fmt.Fprintf(out, "%s: %d layer(s) verified\n", ref, len(checks))
	return nil
}
