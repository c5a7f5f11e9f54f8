package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

func newExportCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "export VOL[@SNAP] FILE|-",
		Short: "Write the whole virtual disk (holes as zeros) to a file or stdout",
		Long: `Write the whole virtual disk of a volume or snapshot. Every byte read is verified
against its chunk checksum. A regular output file is written sparse: zero blocks
become holes, so its apparent size is the volume's size.`,
		Example: "  obdvol export golden@v1 golden.img\n  obdvol export web1 - | sha256sum",
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runExport(cmd.Context(), cmd.OutOrStdout(), g, args[0], args[1])
		},
	}
}

type readerAtSize interface {
	ReadAt(p []byte, off int64) (int, error)
}

func runExport(ctx context.Context, out io.Writer, g *globalOptions, ref, file string) error {
	name, snap, err := parseRef(ref, snapOptional)
	if err != nil {
		return err
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	var src readerAtSize
	var size uint64
	if snap != "" {
		s, err := e.mgr.SnapshotChain(name, snap)
		if err != nil {
			return err
		}
		rec, err := volumeRecord(e, name)
		if err != nil {
			return err
		}
		chain, err := e.mgr.Chain(s.Layers, s.Size, rec.BlockSize)
		if err != nil {
			return err
		}
		src, size = chain, s.Size
	} else {
		v, err := e.mgr.Open(name)
		if err != nil {
			return err
		}
		defer v.Close()
		src, size = v, v.Size()
	}
	var dst io.Writer
	var f *os.File
	toStdout := file == "-"
	if toStdout {
		dst = os.Stdout
		if g.JSON {
			return usagef("--json cannot be combined with export to stdout")
		}
	} else {
		f, err = os.Create(file)
		if err != nil {
			return err
		}
		defer f.Close()
		dst = f
	}
	p := startProgress(g, "export", size)
	defer p.finish()
	buf := make([]byte, 4<<20)
	zero := make([]byte, len(buf))
	var dataBytes uint64
	for pos := uint64(0); pos < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(uint64(len(buf)), size-pos)
		if _, err := src.ReadAt(buf[:n], int64(pos)); err != nil {
			return err
		}
		if f != nil && bytes.Equal(buf[:n], zero[:n]) {
			if _, err := f.Seek(int64(n), io.SeekCurrent); err != nil {
				return err
			}
		} else {
			if _, err := dst.Write(buf[:n]); err != nil {
				return err
			}
			dataBytes += n
		}
		pos += n
		p.add(n)
	}
	if f != nil {
		if err := f.Truncate(int64(size)); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	p.finish()
	if toStdout {
		return nil
	}
	if g.JSON {
		return printJSON(out, map[string]any{"source": ref, "file": file, "bytes": size, "data_bytes": dataBytes})
	}
	fmt.Fprintf(out, "exported %s (%s) to %s\n", ref, formatSize(size), file)
	return nil
}
