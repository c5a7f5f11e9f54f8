package repo

import (
	"errors"
	"io"

	"github.com/obdvol/obdvol/snapshot"
	"github.com/obdvol/obdvol/volume"
)

// Blobs adapts the Store to the volume package's view of a content store.
// A layer that is not complete locally is opened lazily when Remote can
// say where to fetch it from: its bytes then come on demand by range
// requests and stay in the store (see LazyBlob).
type Blobs struct {
	*Store
	// Remote, if set, resolves a digest missing locally to a fetcher and
	// the blob's size. It returns an error wrapping ErrNotFound when the
	// layer has no remote origin.
	Remote func(digest string) (RangeFetcher, int64, error)
	// Lazy tunes lazily opened layers.
	Lazy LazyOptions
}

var _ volume.Blobs = Blobs{}

// OpenLayer opens a complete local blob, or a lazy one.
func (b Blobs) OpenLayer(digest string) (snapshot.BlobSource, io.Closer, error) {
	f, err := b.Open(digest)
	if errors.Is(err, ErrNotFound) && b.Remote != nil {
		fetch, size, rerr := b.Remote(digest)
		if rerr != nil {
			return nil, nil, rerr
		}
		lb, lerr := b.OpenLazy(digest, size, fetch, b.Lazy)
		if lerr != nil {
			return nil, nil, lerr
		}
		if hasMirrors(fetch) {
			checkMirroredIndex(lb)
		}
		return lb, lb, nil
	}
	if err != nil {
		return nil, nil, err
	}
	src, err := snapshot.NewFileSource(f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return src, src, nil
}

// NewBlob starts a new blob.
func (b Blobs) NewBlob() (volume.BlobWriter, error) {
	w, err := b.Create()
	if err != nil {
		return nil, err
	}
	return w, nil
}
