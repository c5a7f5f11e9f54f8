package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"

	"github.com/obdvol/obdvol/tests/regtest"
)

// pushRaw pushes cfg with its layers from store a to tg as is, without
// Push's validation, with the manifest annotations edit makes.
func pushRaw(t *testing.T, a *Store, tg *Target, cfg *ChainConfig, tag string, edit func([]ocispec.Descriptor)) {
	t.Helper()
	ctx := context.Background()
	for _, l := range cfg.Layers {
		f, err := a.Open(l.Digest)
		if err != nil {
			t.Fatal(err)
		}
		ld := ocispec.Descriptor{MediaType: LayerMediaType, Digest: digest.Digest(l.Digest), Size: l.Size}
		if ok, _ := tg.Exists(ctx, ld); !ok {
			if err := tg.Push(ctx, ld, f); err != nil {
				t.Fatal(err)
			}
		}
		f.Close()
	}
	cb, _ := json.Marshal(cfg)
	cd := ocispec.Descriptor{MediaType: ConfigMediaType, Digest: digest.FromBytes(cb), Size: int64(len(cb))}
	if err := tg.Push(ctx, cd, bytes.NewReader(cb)); err != nil {
		t.Fatal(err)
	}
	layers := layerDescriptors(cfg)
	if edit != nil {
		edit(layers)
	}
	md, err := oras.PackManifest(ctx, tg, oras.PackManifestVersion1_1, ArtifactType,
		oras.PackManifestOptions{Layers: layers, ConfigDescriptor: &cd})
	if err != nil {
		t.Fatal(err)
	}
	if err := tg.Tag(ctx, md, tag); err != nil {
		t.Fatal(err)
	}
}

// A config (and manifest annotations) whose numbers contradict the
// layers' trailers is refused, whole pulls and manifest-only (lazy) pulls
// alike, before the caller records anything: in particular a virtual size
// of 2^60 over layers of 1 GiB.
func TestPullConfigContradictsTrailers(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a := newStore(t)
	good := chainOf(t, a, 41, 100000, 50000)
	cases := []struct {
		name  string
		edit  func(c *ChainConfig)
		annot func([]ocispec.Descriptor)
		want  string
	}{
		{"data bytes", func(c *ChainConfig) { c.Layers[0].DataBytes += 4096 }, nil, "trailer says"},
		{"extents", func(c *ChainConfig) { c.Layers[1].Extents = 7 }, nil, "trailer says"},
		{"block size", func(c *ChainConfig) { c.BlockSize = 512 }, nil, "trailer says"},
		{"virtual size 2^60", func(c *ChainConfig) {
			c.VirtualSize = 1 << 60
			for i := range c.Layers {
				c.Layers[i].VirtualSize = 1 << 60
			}
		}, nil, "trailer says"},
		{"config larger than its top layer", func(c *ChainConfig) { c.VirtualSize = 2 << 30 }, nil, "exceeds the top layer"},
		{"annotation", nil, func(ds []ocispec.Descriptor) { ds[0].Annotations[AnnotationDataBytes] = "12345" }, "annotation"},
	}
	for _, c := range cases {
		cfg := *good
		cfg.Layers = append([]LayerInfo(nil), good.Layers...)
		if c.edit != nil {
			c.edit(&cfg)
		}
		name := strings.ReplaceAll(c.name, " ", "-")
		pushRaw(t, a, target(t, reg.Addr+"/lie:"+strings.ReplaceAll(name, "^", ""), nil), &cfg, strings.ReplaceAll(name, "^", ""), c.annot)
		for _, manifestOnly := range []bool{false, true} {
			b := newStore(t)
			_, err := Pull(ctx, b, target(t, reg.Addr+"/lie:"+strings.ReplaceAll(name, "^", ""), nil), PullOptions{ManifestOnly: manifestOnly})
			if !errors.Is(err, ErrArtifact) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s (manifest only %v): pull = %v, want ErrArtifact: %s", c.name, manifestOnly, err, c.want)
			}
		}
	}
	// The honest config pulls, both ways.
	pushRaw(t, a, target(t, reg.Addr+"/lie:good", nil), good, "good", nil)
	for _, manifestOnly := range []bool{false, true} {
		if _, err := Pull(ctx, newStore(t), target(t, reg.Addr+"/lie:good", nil), PullOptions{ManifestOnly: manifestOnly}); err != nil {
			t.Errorf("honest config (manifest only %v): %v", manifestOnly, err)
		}
	}
}

// The config's required fields are checked before anything is fetched.
func TestParseConfigRequiredFields(t *testing.T) {
	const d = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	good := `{"version":1,"virtual_size":1048576,"block_size":4096,"codec":"zstd","chunk_size":65536,"snapshot":"s",` +
		`"layers":[{"digest":"` + d + `","size":100,"virtual_size":1048576,"data_bytes":4096,"extents":1}]}`
	if _, err := ParseConfig([]byte(good)); err != nil {
		t.Fatalf("precondition: the good config is refused: %v", err)
	}
	for _, c := range []struct{ old, new string }{
		{`"chunk_size":65536`, `"chunk_size":0`},
		{`"chunk_size":65536`, `"chunk_size":1000`},
		{`"codec":"zstd"`, `"codec":"lzma"`},
		{`"snapshot":"s"`, `"snapshot":""`},
		{`"snapshot":"s"`, `"snapshot":"../x"`},
		{`"virtual_size":1048576,"data_bytes"`, `"virtual_size":0,"data_bytes"`},
		{`"data_bytes":4096`, `"data_bytes":4095`},
		{`"data_bytes":4096`, `"data_bytes":2097152`},
		{`"extents":1`, `"extents":257`},
		{`"version":1,"virtual_size":1048576`, `"version":1,"virtual_size":2097152`},
	} {
		bad := strings.Replace(good, c.old, c.new, 1)
		if bad == good {
			t.Fatalf("edit %q did not apply", c.old)
		}
		if _, err := ParseConfig([]byte(bad)); !errors.Is(err, ErrArtifact) {
			t.Errorf("%s: ParseConfig = %v, want ErrArtifact", c.new, err)
		}
	}
}
