package repo

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/snapshot"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Media types of the obdvol snapshot artifact (docs/artifact.md).
const (
	ArtifactType    = "application/vnd.obdvol.snapshot.v1"
	ConfigMediaType = "application/vnd.obdvol.snapshot.config.v1+json"
	LayerMediaType  = "application/vnd.obdvol.layer.v1"

	AnnotationVirtualSize = "org.obdvol.layer.virtual-size"
	AnnotationDataBytes   = "org.obdvol.layer.data-bytes"
	AnnotationExtents     = "org.obdvol.layer.extents"

	maxManifestBytes = 4 << 20
	maxConfigBytes   = 4 << 20
	maxLayers        = 4096
)

// ErrArtifact is wrapped by errors about malformed manifests or configs.
var ErrArtifact = errors.New("invalid obdvol artifact")

// LayerInfo describes one layer of a pushed chain.
type LayerInfo struct {
	Digest      string `json:"digest"`
	Size        int64  `json:"size"` // blob bytes
	VirtualSize uint64 `json:"virtual_size"`
	DataBytes   uint64 `json:"data_bytes"`
	Extents     uint64 `json:"extents"`
	// Parts, for a layer pushed in parts, are its parts in order (see
	// Part; none for a layer pushed whole).
	Parts []Part `json:"parts,omitempty"`
}

// ChainConfig is the artifact's config blob: what a pull needs to
// recreate the volume at the snapshot.
type ChainConfig struct {
	Version     int               `json:"version"`
	VirtualSize uint64            `json:"virtual_size"`
	BlockSize   uint32            `json:"block_size"`
	Codec       string            `json:"codec"`
	ChunkSize   uint32            `json:"chunk_size"`
	Volume      string            `json:"volume"`
	Snapshot    string            `json:"snapshot"`
	Created     time.Time         `json:"created"`
	Layers      []LayerInfo       `json:"layers"`
	Labels      map[string]string `json:"labels,omitempty"`
	// Prefetch is an ordered list of byte ranges of the disk that an
	// earlier run read (a boot, a job): a lazy pull fetches them first.
	Prefetch []PrefetchRange `json:"prefetch,omitempty"`
}

// PrefetchRange is one byte range of a prefetch list.
type PrefetchRange struct {
	Off int64 `json:"off"`
	Len int64 `json:"len"`
}

// Validate checks the config's own limits.
func (c *ChainConfig) Validate() error {
	switch {
	case c.Version != 1 && c.Version != ConfigVersionParts:
		return fmt.Errorf("%w: config version %d (this obdvol reads 1 and %d)", ErrArtifact, c.Version, ConfigVersionParts)
	case c.BlockSize < 512 || c.BlockSize > 65536 || c.BlockSize&(c.BlockSize-1) != 0:
		return fmt.Errorf("%w: block size %d", ErrArtifact, c.BlockSize)
	case c.VirtualSize == 0 || c.VirtualSize%uint64(c.BlockSize) != 0 || c.VirtualSize > 1<<60:
		return fmt.Errorf("%w: virtual size %d", ErrArtifact, c.VirtualSize)
	case len(c.Layers) > maxLayers:
		return fmt.Errorf("%w: %d layers (at most %d)", ErrArtifact, len(c.Layers), maxLayers)
	}
	codec, err := snapshot.ParseCodec(c.Codec)
	if err == nil {
		err = snapshot.ValidateParams(c.BlockSize, c.ChunkSize, codec)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	if err := metadata.ValidateName("snapshot", c.Snapshot); err != nil {
		return fmt.Errorf("%w: %v", ErrArtifact, err)
	}
	if len(c.Prefetch) > 1<<16 {
		return fmt.Errorf("%w: prefetch list of %d ranges", ErrArtifact, len(c.Prefetch))
	}
	for _, r := range c.Prefetch {
		if r.Off < 0 || r.Len <= 0 || uint64(r.Off)+uint64(r.Len) > c.VirtualSize {
			return fmt.Errorf("%w: prefetch range [%d,+%d) outside the disk", ErrArtifact, r.Off, r.Len)
		}
	}
	for i, l := range c.Layers {
		if err := ValidateDigest(l.Digest); err != nil {
			return fmt.Errorf("%w: layer %d: %v", ErrArtifact, i, err)
		}
		if l.Size <= 0 || l.Size > 1<<50 {
			return fmt.Errorf("%w: layer %d size %d", ErrArtifact, i, l.Size)
		}
		bs := uint64(c.BlockSize)
		if l.VirtualSize == 0 || l.VirtualSize%bs != 0 || l.VirtualSize > snapshot.MaxVirtualSize ||
			l.DataBytes%bs != 0 || l.DataBytes > l.VirtualSize || l.Extents > l.VirtualSize/bs {
			return fmt.Errorf("%w: layer %s: virtual size %d, data bytes %d, extents %d do not fit block size %d",
				ErrArtifact, l.Digest, l.VirtualSize, l.DataBytes, l.Extents, c.BlockSize)
		}
	}
	if err := c.validateSplit(); err != nil {
		return err
	}
	// The chain's size is the config's: the top layer's trailer keeps the
	// size the volume had when it was sealed, which a shrink without
	// writes since leaves larger, and a grow always records a zero extent,
	// so a new layer, so it is never smaller (docs/format.md).
	if n := len(c.Layers); n > 0 && c.VirtualSize > c.Layers[n-1].VirtualSize {
		return fmt.Errorf("%w: virtual size %d exceeds the top layer's %d", ErrArtifact, c.VirtualSize, c.Layers[n-1].VirtualSize)
	}
	return nil
}

// CheckTrailer checks what config c says of layer i (its virtual size,
// data bytes, extent count and block size) against the layer's own
// trailer t, the authority: a pull refuses a config that contradicts its
// layers rather than record (and show) its numbers.
func (c *ChainConfig) CheckTrailer(i int, t *snapshot.Trailer) error {
	l := c.Layers[i]
	if t.BlockSize != c.BlockSize || t.VirtualSize != l.VirtualSize || t.DataBytes != l.DataBytes || uint64(t.ExtentCount) != l.Extents {
		return fmt.Errorf("%w: layer %s: config says block size %d, virtual size %d, data bytes %d, %d extents; its trailer says %d, %d, %d, %d",
			ErrArtifact, l.Digest, c.BlockSize, l.VirtualSize, l.DataBytes, l.Extents,
			t.BlockSize, t.VirtualSize, t.DataBytes, t.ExtentCount)
	}
	return nil
}

// ParseConfig decodes and validates a config blob.
func ParseConfig(b []byte) (*ChainConfig, error) {
	var c ChainConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%w: config: %v", ErrArtifact, err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// layerDescriptors are the manifest's layers for c, base first: one
// descriptor per layer, or its parts' for a layer in parts.
func layerDescriptors(c *ChainConfig) []ocispec.Descriptor {
	out := make([]ocispec.Descriptor, 0, len(c.Layers))
	for _, l := range c.Layers {
		if len(l.Parts) > 0 {
			out = append(out, partDescriptors(l)...)
			continue
		}
		out = append(out, ocispec.Descriptor{MediaType: LayerMediaType, Digest: digest.Digest(l.Digest), Size: l.Size,
			Annotations: map[string]string{
				AnnotationVirtualSize: strconv.FormatUint(l.VirtualSize, 10),
				AnnotationDataBytes:   strconv.FormatUint(l.DataBytes, 10),
				AnnotationExtents:     strconv.FormatUint(l.Extents, 10),
			}})
	}
	return out
}

// ParseManifest decodes a manifest and checks that it is an obdvol
// snapshot whose layers match config c (pass nil to check the manifest
// alone).
func ParseManifest(b []byte) (*ocispec.Manifest, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrArtifact, err)
	}
	if m.ArtifactType != ArtifactType || m.Config.MediaType != ConfigMediaType {
		return nil, fmt.Errorf("%w: artifact type %q, config %q: not an obdvol snapshot", ErrArtifact, m.ArtifactType, m.Config.MediaType)
	}
	if m.Config.Size <= 0 || m.Config.Size > maxConfigBytes || m.Config.Digest.Validate() != nil {
		return nil, fmt.Errorf("%w: config descriptor", ErrArtifact)
	}
	if len(m.Layers) > maxBlobs {
		return nil, fmt.Errorf("%w: %d layers", ErrArtifact, len(m.Layers))
	}
	if len(m.Layers) == 1 && isEmptyLayer(m.Layers[0]) {
		m.Layers = nil // a chain with no layers (see isEmptyLayer)
	}
	return &m, nil
}

// isEmptyLayer reports whether d is OCI 1.1's empty "{}" descriptor,
// which a manifest lists as its only layer when the artifact has none:
// the manifest of a snapshot whose chain has no layers (a volume never
// written).
func isEmptyLayer(d ocispec.Descriptor) bool {
	e := ocispec.DescriptorEmptyJSON
	return d.MediaType == e.MediaType && d.Digest == e.Digest && d.Size == e.Size
}

// matchLayers checks that the manifest's layers are exactly the config's
// (layerDescriptors: a layer in parts is its parts, in order).
func matchLayers(m *ocispec.Manifest, c *ChainConfig) error {
	want := layerDescriptors(c)
	if len(m.Layers) != len(want) {
		return fmt.Errorf("%w: manifest has %d layer blobs, config %d", ErrArtifact, len(m.Layers), len(want))
	}
	li, pi := 0, 0 // config layer and part of want[i]
	for i, d := range m.Layers {
		l := c.Layers[li]
		if len(l.Parts) > 0 {
			if err := matchPart(i, d, want[i]); err != nil {
				return err
			}
			if pi++; pi == len(l.Parts) {
				li, pi = li+1, 0
			}
			continue
		}
		li++
		if d.MediaType != LayerMediaType || d.Digest.String() != l.Digest || d.Size != l.Size {
			return fmt.Errorf("%w: layer %d: manifest says %s (%d bytes), config %s (%d bytes)",
				ErrArtifact, i, d.Digest, d.Size, l.Digest, l.Size)
		}
		// The annotations repeat the config's numbers for tools that
		// read only manifests: where present they must agree.
		for k, want := range map[string]uint64{AnnotationVirtualSize: l.VirtualSize, AnnotationDataBytes: l.DataBytes, AnnotationExtents: l.Extents} {
			v, ok := d.Annotations[k]
			if !ok {
				continue
			}
			if got, err := strconv.ParseUint(v, 10, 64); err != nil || got != want {
				return fmt.Errorf("%w: layer %s: annotation %s is %q, config says %d", ErrArtifact, l.Digest, k, v, want)
			}
		}
	}
	return nil
}
