package repo

import (
	"io"

	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/volume"
)

// Blobs adapts the Store to the volume package's view of a content store.
type Blobs struct{ *Store }

var _ volume.Blobs = Blobs{}

// OpenLayer opens a complete local blob as a layer source.
func (b Blobs) OpenLayer(digest string) (snapshot.BlobSource, io.Closer, error) {
	f, err := b.Open(digest)
	if err != nil {
		return nil, nil, err
	}
	src, err := snapshot.NewFileSource(f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return src, f, nil
}

// NewBlob starts a new blob.
func (b Blobs) NewBlob() (volume.BlobWriter, error) {
	w, err := b.Create()
	if err != nil {
		return nil, err
	}
	return w, nil
}
