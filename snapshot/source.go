package snapshot

import (
	"os"
)

// FileSource is a BlobSource over a local file.
type FileSource struct {
	*os.File
	size int64
}

// NewFileSource wraps f, taking its size once (blobs are immutable).
func NewFileSource(f *os.File) (*FileSource, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return &FileSource{File: f, size: fi.Size()}, nil
}

// Size is the file's size when it was opened.
func (s *FileSource) Size() int64 { return s.size }

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
