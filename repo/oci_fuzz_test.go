package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
)

// A manifest and config that agree with each other but lie about a
// layer's size give a clear error and store nothing.
func TestPullLyingManifest(t *testing.T) {
	ctx := context.Background()
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 9, 100000)
	dir := t.TempDir()
	tg := target(t, "oci:"+dir+":v1", nil)
	f, _ := a.Open(cfg.Layers[0].Digest)
	ld := ocispec.Descriptor{MediaType: LayerMediaType, Digest: digest.Digest(cfg.Layers[0].Digest), Size: cfg.Layers[0].Size}
	if err := tg.Push(ctx, ld, f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cfg.Layers[0].Size /= 2 // the lie, in both config and manifest
	cb, _ := json.Marshal(cfg)
	cd := ocispec.Descriptor{MediaType: ConfigMediaType, Digest: digest.FromBytes(cb), Size: int64(len(cb))}
	tg.Push(ctx, cd, bytes.NewReader(cb))
	md, err := oras.PackManifest(ctx, tg, oras.PackManifestVersion1_1, ArtifactType,
		oras.PackManifestOptions{Layers: layerDescriptors(cfg), ConfigDescriptor: &cd})
	if err != nil {
		t.Fatal(err)
	}
	tg.Tag(ctx, md, "v1")
	_, err = Pull(ctx, b, target(t, "oci:"+dir+":v1", nil), PullOptions{})
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("pull of a lying manifest: %v", err)
	}
	if l, _ := b.List(); len(l) != 0 {
		t.Fatalf("store holds %v", l)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"version":1,"virtual_size":4096,"block_size":4096,"layers":[{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1}]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"version":2,"virtual_size":4096,"block_size":4096,"layers":[{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":3,"virtual_size":4096,` +
		`"parts":[{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000001","size":2},{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000002","size":1}]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err == nil && (c.Version != 1 && c.Version != ConfigVersionParts || len(c.Layers) > maxLayers) {
			t.Fatalf("accepted invalid config %+v", c)
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	m := ocispec.Manifest{ArtifactType: ArtifactType, Config: ocispec.Descriptor{MediaType: ConfigMediaType,
		Digest: digest.FromString("x"), Size: 1}}
	b, _ := json.Marshal(m)
	f.Add(b)
	m.Layers = partDescriptors(LayerInfo{Digest: digest.FromString("l").String(), Size: 3,
		Parts: []Part{{digest.FromString("a").String(), 2}, {digest.FromString("b").String(), 1}}})
	b, _ = json.Marshal(m)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		if m, err := ParseManifest(b); err == nil && len(m.Layers) > maxBlobs {
			t.Fatal("accepted too many layers")
		}
	})
}

func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"localhost:5000/a/b:v1", "oci:/tmp/x:v1", "oci:dir", "host/repo@sha256:" + string(bytes.Repeat([]byte("a"), 64)), "http://x/y:z", ""} {
		f.Add(s)
	}
	f.Add("alice:pw@host:5000/a:v1")
	f.Add("oci:/d@sha256:" + strings.Repeat("a", 64))
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRef(s)
		if err != nil {
			// An error never shows the user-info part of a reference.
			ui := userinfo(s)
			if len(ui) >= 6 && !strings.HasPrefix(s, "oci:") && !strings.Contains(fmt.Sprintf("%q", redactRef(s)), ui) &&
				strings.Contains(err.Error(), ui) {
				t.Fatalf("error for %q shows %q: %v", s, ui, err)
			}
			return
		}
		if r.Reference == "" {
			t.Fatalf("%q parsed without a tag or digest", s)
		}
		again, err := ParseRef(r.String())
		if err != nil || again.Dir != r.Dir || again.Reference != r.Reference || again.Remote != r.Remote {
			t.Fatalf("%q -> %q does not parse back: %+v, %v", s, r.String(), again, err)
		}
	})
}

func TestParseRef(t *testing.T) {
	for _, c := range []struct {
		in, repo, ref string
		ok            bool
	}{
		{"127.0.0.1:5000/golden:v1", "127.0.0.1:5000/golden", "v1", true},
		{"oci:/tmp/lay:v2", "oci:/tmp/lay", "v2", true},
		{"oci:/tmp/lay", "oci:/tmp/lay", "latest", true},
		{"127.0.0.1:5000/golden", "", "", false},
		{"https://x/y:z", "", "", false},
		{"oci::v1", "", "", false},
	} {
		r, err := ParseRef(c.in)
		if (err == nil) != c.ok || (c.ok && (r.Repository() != c.repo || r.Reference != c.ref)) {
			t.Errorf("ParseRef(%q) = %+v, %v", c.in, r, err)
		}
	}
}

// userinfo is the part of a registry reference before the @ of its host.
func userinfo(s string) string {
	if i := strings.Index(s, "://"); i >= 0 {
		s = s[i+3:]
	}
	host := s
	if i := strings.IndexByte(s, '/'); i >= 0 {
		host = s[:i]
	}
	if j := strings.LastIndexByte(host, '@'); j >= 0 {
		return host[:j]
	}
	return ""
}
