package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
)

type importOptions struct {
	Offset string
}

func newImportCommand(g *globalOptions) *cobra.Command {
	o := &importOptions{}
	cmd := &cobra.Command{
		Use:   "import VOL FILE",
		Short: "Write a raw image (or a part of one, at --offset) into a volume's writable layer",
		Long: `Write a raw image into the volume's writable layer. All-zero blocks are recorded
as zero extents (no data stored). The write is flushed (durable) before import returns.`,
		Example: "  obdvol import golden disk.img\n  obdvol import golden part.bin --offset 1G",
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runImport(cmd.Context(), cmd.OutOrStdout(), g, o, args[0], args[1])
		},
	}
	cmd.Flags().StringVar(&o.Offset, "offset", "0", "byte offset in the volume")
	return cmd
}

func runImport(ctx context.Context, out io.Writer, g *globalOptions, o *importOptions, ref, file string) error {
	name, _, err := parseRef(ref, snapForbidden)
	if err != nil {
		return err
	}
	off, err := parseSize(o.Offset)
	if err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	e, err := openEnv(g)
	if err != nil {
		return err
	}
	defer e.close()
	v, err := e.openVolume(name)
	if err != nil {
		return err
	}
	defer v.Close()
	if fi.Mode().IsRegular() && (off > v.Size() || uint64(fi.Size()) > v.Size()-off) {
		return fmt.Errorf("%s (%d bytes) at offset %d does not fit volume %s of %d bytes", file, fi.Size(), off, name, v.Size())
	}
	bs := int(v.BlockSize())
	p := startProgress(g, "import", uint64(fi.Size()))
	defer p.finish()
	buf := make([]byte, 4<<20)
	var written, zeroed uint64
	pos := off
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, rerr := io.ReadFull(f, buf)
		if n > 0 {
			if pos+uint64(n) > v.Size() {
				return fmt.Errorf("input is larger than the volume (%d bytes from offset %d)", v.Size()-off, off)
			}
			w, z, err := writeSkippingZeros(v, buf[:n], pos, bs)
			if err != nil {
				return err
			}
			written += w
			zeroed += z
			pos += uint64(n)
			p.add(uint64(n))
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if err := v.Flush(); err != nil {
		return err
	}
	p.finish()
	if g.JSON {
		return printJSON(out, map[string]any{"volume": name, "offset": off, "bytes": pos - off, "data_bytes": written, "zero_bytes": zeroed})
	}
	fmt.Fprintf(out, "imported %s into %s at offset %d: %s data, %s zeros\n", file, name, off, formatSize(written), formatSize(zeroed))
	return nil
}

type volumeWriter interface {
	WriteAt(p []byte, off int64) (int, error)
	WriteZeroes(off, n int64) error
}

// writeSkippingZeros writes p at pos, turning runs of all-zero blocks
// into zero extents.
func writeSkippingZeros(v volumeWriter, p []byte, pos uint64, bs int) (data, zeros uint64, err error) {
	zero := make([]byte, bs)
	for i := 0; i < len(p); {
		j := i
		isZero := len(p)-i >= bs && bytes.Equal(p[i:i+bs], zero)
		for j < len(p) {
			n := min(bs, len(p)-j)
			z := n == bs && bytes.Equal(p[j:j+n], zero)
			if z != isZero {
				break
			}
			j += n
		}
		if isZero {
			err = v.WriteZeroes(int64(pos)+int64(i), int64(j-i))
			zeros += uint64(j - i)
		} else {
			_, err = v.WriteAt(p[i:j], int64(pos)+int64(i))
			data += uint64(j - i)
		}
		if err != nil {
			return data, zeros, err
		}
		i = j
	}
	return data, zeros, nil
}
