package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/volume"
)

type exportOptions struct {
	// Force replaces an existing regular file.
	Force bool
}

func newExportCommand(g *globalOptions) *cobra.Command {
	o := &exportOptions{}
	cmd := &cobra.Command{
		Use:   "export VOL[@SNAP] FILE|-",
		Short: "Write the whole virtual disk (holes as zeros) to a file or stdout",
		Long: `Write the whole virtual disk of a volume or snapshot. Every byte read is verified
against its chunk checksum. A regular output file is written sparse: zero blocks
become holes, so its apparent size is the volume's size. The file is written
under a temporary name beside it and renamed into place once complete and
synced: an existing file is refused unless --force, and a failed export
leaves nothing behind.

Export only reads: it writes nothing under --root, so it works on a full disk.
A volume is opened read-only (an interrupted snapshot's frozen layer is read
through, not finished); a volume in use by another process (serve, activate,
import) is refused, since its writable layer is changing: export one of its
snapshots, or take a snapshot through the server first.`,
		Example: "  obdvol export golden@v1 golden.img\n  obdvol export web1 - | sha256sum",
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runExport(cmd.Context(), cmd.OutOrStdout(), g, o, args[0], args[1])
		},
	}
	cmd.Flags().BoolVar(&o.Force, "force", false, "replace FILE if it exists (a regular file only)")
	return cmd
}

// checkExportTarget refuses, before anything is read, an output path
// that exists, unless force and it is a regular file (never a device or
// anything else a rename would replace).
func checkExportTarget(file string, force bool) error {
	fi, err := os.Lstat(file)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s exists and is not a regular file: %w (export to - and redirect to write a device)", file, volume.ErrRefused)
	case !force:
		return fmt.Errorf("%s exists: %w: pass --force to replace it", file, volume.ErrRefused)
	}
	return nil
}

type readerAtSize interface {
	ReadAt(p []byte, off int64) (int, error)
}

func runExport(ctx context.Context, out io.Writer, g *globalOptions, o *exportOptions, ref, file string) error {
	name, snap, err := parseRef(ref, snapOptional)
	if err != nil {
		return err
	}
	toStdout := file == "-"
	if toStdout && g.JSON {
		return usagef("--json cannot be combined with export to stdout")
	}
	if !toStdout {
		if err := checkExportTarget(file, o.Force); err != nil {
			return err
		}
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
		v, err := openVolumeReadOnly(e, name)
		if err != nil {
			return err
		}
		defer v.Close()
		src, size = v, v.Size()
	}
	var dst io.Writer
	var f *os.File
	if toStdout {
		dst = os.Stdout
	} else {
		f, err = os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".obdvol-export-")
		if err != nil {
			return err
		}
		tmp := f.Name()
		defer func() {
			f.Close()
			os.Remove(tmp) // gone already once renamed
		}()
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
		if err := placeExport(f.Name(), file, o.Force); err != nil {
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

// placeExport moves the complete temporary file tmp to file: with force
// by rename (replacing a regular file, checked again), else by link,
// which fails rather than replace a file created meanwhile. Then it syncs
// the directory.
func placeExport(tmp, file string, force bool) error {
	if err := checkExportTarget(file, force); err != nil {
		return err
	}
	if force {
		if err := os.Rename(tmp, file); err != nil {
			return err
		}
	} else {
		if err := os.Link(tmp, file); err != nil {
			if errors.Is(err, os.ErrExist) {
				return fmt.Errorf("%s was created meanwhile: %w: pass --force to replace it", file, volume.ErrRefused)
			}
			return err
		}
		os.Remove(tmp)
	}
	d, err := os.Open(filepath.Dir(file))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// openVolumeReadOnly opens a volume for reading only (it writes nothing
// under the root: see volume.Manager.OpenReadOnly) and warns about a
// snapshot whose seal is unfinished (its frozen layer is read through).
func openVolumeReadOnly(e *env, name string) (*volume.Volume, error) {
	v, err := e.mgr.OpenReadOnly(name)
	if err != nil {
		return nil, err
	}
	if err := v.SealPending(); err != nil {
		e.warnf("%v", err)
	}
	return v, nil
}
