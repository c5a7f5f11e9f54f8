package snapshot

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

	"golang.org/x/sys/unix"
)

// Labeled is implemented by blob sources that can name their blob (a
// digest or a path): errors about a layer, a chain read's checksum
// failure for one, then say which blob it is, not only its position in
// the chain.
type Labeled interface {
	Label() string
}

// FileSource is a BlobSource over a local, immutable file. The file is
// mapped into memory when it can be, so a read is a copy, not a system
// call (sealed layers never change, so the mapping stays valid).
type FileSource struct {
	*os.File
	size int64
	mem  []byte
}

// NewFileSource wraps f, taking its size once (blobs are immutable).
func NewFileSource(f *os.File) (*FileSource, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	s := &FileSource{File: f, size: fi.Size()}
	if s.size > 0 && s.size < 1<<40 {
		if m, err := unix.Mmap(int(f.Fd()), 0, int(s.size), unix.PROT_READ, unix.MAP_SHARED); err == nil {
			s.mem = m
		}
	}
	return s, nil
}

// ReadAt implements io.ReaderAt. A blob truncated behind our back (it
// must never be) gives an error instead of killing the process: the
// fault of touching the unmapped tail becomes a recovered panic.
func (s *FileSource) ReadAt(p []byte, off int64) (n int, err error) {
	if s.mem == nil {
		return s.File.ReadAt(p, off)
	}
	if off < 0 || off > s.size {
		return 0, os.ErrInvalid
	}
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			n, err = 0, fmt.Errorf("%w: %s changed while mapped: %v", ErrFormat, s.Name(), r)
		}
	}()
	n = copy(p, s.mem[off:])
	if n < len(p) {
		return n, errShort
	}
	return n, nil
}

// Label names the blob: its digest when the file is named as in a
// content-addressed store (.../sha256/<64 hex>), else its path.
func (s *FileSource) Label() string {
	p := s.File.Name()
	dir, hex := filepath.Split(p)
	if filepath.Base(dir) == "sha256" && len(hex) == 64 && strings.Trim(hex, "0123456789abcdef") == "" {
		return "sha256:" + hex
	}
	return p
}

// Size is the file's size when it was opened.
func (s *FileSource) Size() int64 { return s.size }

// Close unmaps and closes the file.
func (s *FileSource) Close() error {
	if s.mem != nil {
		unix.Munmap(s.mem)
		s.mem = nil
	}
	return s.File.Close()
}

// BytesSource is a BlobSource over a byte slice (tests, small layers).
type BytesSource []byte

// ReadAt implements io.ReaderAt.
func (b BytesSource) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(b)) {
		return 0, os.ErrInvalid
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, errShort
	}
	return n, nil
}

// Size is len(b).
func (b BytesSource) Size() int64 { return int64(len(b)) }
