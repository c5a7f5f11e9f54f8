package repo

import (
	"fmt"
	"strconv"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// A layer larger than a registry accepts in one blob (Quay's 20 GB PUT,
// a CDN's 100 MB request, ECR's 52,000 MiB layer) is pushed in parts
// (docs/artifact.md, "Layers in parts"): byte ranges of the layer, in
// order, each its own blob in the manifest (PartMediaType). The config
// keeps the layer's own digest and size and lists its parts; a pull
// fetches the parts, concatenates them and checks the layer's digest, and
// a lazy pull maps a range of the layer onto ranges of its parts
// (NewPartRanges). The layer is the unit everywhere else: the content
// store, the catalogue, LazyBlob, the trailer check.

// Media type and annotations of a part's manifest descriptor.
const (
	PartMediaType = "application/vnd.obdvol.layer.part.v1"

	AnnotationPartOf     = "org.obdvol.part.of"     // the layer's digest
	AnnotationPartIndex  = "org.obdvol.part.index"  // 0, 1, ...
	AnnotationPartOffset = "org.obdvol.part.offset" // the part's first byte in the layer

	// ConfigVersionParts is the config version of an artifact with at
	// least one layer in parts: an obdvol that reads only version 1 then
	// refuses the artifact by its version rather than misread it.
	ConfigVersionParts = 2

	// maxBlobs bounds the manifest's layer descriptors (whole layers
	// and parts): at about 330 bytes each, 8192 fit maxManifestBytes.
	maxBlobs = 8192
)

// Part is one part of a layer pushed in parts: a blob holding the
// layer's bytes [offset, offset+Size), offset being the sum of the sizes
// of the parts before it.
type Part struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// ValidateParts checks that parts can be the parts of the layer with
// digest layer and size bytes: none or at least two, each with a valid
// digest other than the layer's and a positive size, their sizes adding
// up to size; one digest listed twice (two equal ranges of the layer)
// must have one size. Errors wrap ErrArtifact.
func ValidateParts(layer string, size int64, parts []Part) error {
	if len(parts) == 0 {
		return nil
	}
	if len(parts) == 1 || len(parts) > maxBlobs {
		return fmt.Errorf("%w: layer %s in %d parts (2 to %d)", ErrArtifact, layer, len(parts), maxBlobs)
	}
	var sum int64
	sizes := make(map[string]int64, len(parts))
	for i, p := range parts {
		if err := ValidateDigest(p.Digest); err != nil {
			return fmt.Errorf("%w: layer %s part %d: %v", ErrArtifact, layer, i, err)
		}
		if p.Digest == layer {
			return fmt.Errorf("%w: layer %s part %d is the layer itself", ErrArtifact, layer, i)
		}
		if p.Size <= 0 || p.Size > size-sum {
			return fmt.Errorf("%w: layer %s of %d bytes: part %d of %d bytes at offset %d", ErrArtifact, layer, size, i, p.Size, sum)
		}
		if s, ok := sizes[p.Digest]; ok && s != p.Size {
			return fmt.Errorf("%w: layer %s: part %s listed with %d and %d bytes", ErrArtifact, layer, p.Digest, s, p.Size)
		}
		sizes[p.Digest] = p.Size
		sum += p.Size
	}
	if sum != size {
		return fmt.Errorf("%w: layer %s of %d bytes: its parts add up to %d", ErrArtifact, layer, size, sum)
	}
	return nil
}

// validateSplit checks what parts add to a config: the version that
// allows them, each layer's parts, the manifest's descriptor count, and
// that no blob is both a part and a whole layer.
func (c *ChainConfig) validateSplit() error {
	blobs, split := 0, false
	whole := make(map[string]bool, len(c.Layers))
	for _, l := range c.Layers {
		if len(l.Parts) == 0 {
			whole[l.Digest] = true
		}
	}
	for _, l := range c.Layers {
		if err := ValidateParts(l.Digest, l.Size, l.Parts); err != nil {
			return err
		}
		for _, p := range l.Parts {
			if whole[p.Digest] {
				return fmt.Errorf("%w: layer %s: part %s is also a whole layer", ErrArtifact, l.Digest, p.Digest)
			}
		}
		blobs += max(1, len(l.Parts))
		split = split || len(l.Parts) > 0
	}
	if split && c.Version < ConfigVersionParts {
		return fmt.Errorf("%w: config version %d with layers in parts (they need version %d)", ErrArtifact, c.Version, ConfigVersionParts)
	}
	if blobs > maxBlobs {
		return fmt.Errorf("%w: %d layer blobs and parts (at most %d)", ErrArtifact, blobs, maxBlobs)
	}
	return nil
}

// partDescriptors are the manifest descriptors of layer l's parts.
func partDescriptors(l LayerInfo) []ocispec.Descriptor {
	out := make([]ocispec.Descriptor, len(l.Parts))
	var off int64
	for i, p := range l.Parts {
		out[i] = ocispec.Descriptor{MediaType: PartMediaType, Digest: digest.Digest(p.Digest), Size: p.Size,
			Annotations: map[string]string{
				AnnotationPartOf:     l.Digest,
				AnnotationPartIndex:  strconv.Itoa(i),
				AnnotationPartOffset: strconv.FormatInt(off, 10),
			}}
		off += p.Size
	}
	return out
}

// matchPart checks manifest descriptor d against want, the descriptor
// of a part the config lists: same media type, digest and size, and the
// part annotations present and equal (they name the layer and the
// place, so a part of another layer or another place is refused).
func matchPart(i int, d, want ocispec.Descriptor) error {
	if d.MediaType != want.MediaType || d.Digest != want.Digest || d.Size != want.Size {
		return fmt.Errorf("%w: manifest blob %d: %s %s (%d bytes), the config says part %s (%d bytes) of layer %s",
			ErrArtifact, i, d.MediaType, d.Digest, d.Size, want.Digest, want.Size, want.Annotations[AnnotationPartOf])
	}
	for _, k := range []string{AnnotationPartOf, AnnotationPartIndex, AnnotationPartOffset} {
		if v, ok := d.Annotations[k]; !ok || v != want.Annotations[k] {
			return fmt.Errorf("%w: manifest blob %d (part %s): annotation %s is %q, the config says %q",
				ErrArtifact, i, d.Digest, k, v, want.Annotations[k])
		}
	}
	return nil
}

// splitSizes are the part sizes of a layer of size bytes cut every
// maxBlob bytes (nil when it fits in one blob).
func splitSizes(size, maxBlob int64) []int64 {
	if maxBlob <= 0 || size <= maxBlob {
		return nil
	}
	var out []int64
	for off := int64(0); off < size; off += maxBlob {
		out = append(out, min(maxBlob, size-off))
	}
	return out
}
