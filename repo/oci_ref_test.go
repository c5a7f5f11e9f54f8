package repo

import (
	"context"
	"strings"
	"testing"
)

func TestParseRefForms(t *testing.T) {
	dg := "sha256:" + strings.Repeat("ab", 32)
	for _, c := range []struct {
		in, dir, ref, str string
	}{
		{"oci:/tmp/lay@" + dg, "/tmp/lay", dg, "oci:/tmp/lay@" + dg},
		{"oci:rel/lay:v1", "rel/lay", "v1", "oci:rel/lay:v1"},
		{"oci:/a:b/lay", "/a:b/lay", "latest", "oci:/a:b/lay:latest"},
		{"127.0.0.1:5000/a/b@" + dg, "", dg, "127.0.0.1:5000/a/b@" + dg},
		{"[::1]:5000/a:v1", "", "v1", "[::1]:5000/a:v1"},
	} {
		r, err := ParseRef(c.in)
		if err != nil || r.Dir != c.dir || r.Reference != c.ref || r.String() != c.str {
			t.Errorf("ParseRef(%q) = %+v (%q), %v", c.in, r, r.String(), err)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"oci:/tmp/lay:sha256:" + dg[7:], "oci:DIR@sha256"},
		{"oci:/tmp/lay@sha256:abc", "invalid digest"},
		{"oci:/tmp/lay:b@d", "bad tag"},
		{"127.0.0.1:99999/a:v1", "bad port"},
		{"127.0.0.1:0/a:v1", "bad port"},
		{"alice:s3cret@127.0.0.1:5000/a:v1", "credentials do not belong"},
		{"https://alice:s3cret@127.0.0.1:5000/a:v1", "without a scheme"},
		{"127.0.0.1:5000/Upper:v1", "invalid repository"},
	} {
		_, err := ParseRef(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseRef(%q): %v, want an error about %q", c.in, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("ParseRef(%q): error shows the password: %v", c.in, err)
		}
	}
}

// Layout references by digest: pull by the manifest digest a push
// reported; a push by digest checks the manifest is that one.
func TestLayoutDigestRef(t *testing.T) {
	ctx := context.Background()
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 16, 50000)
	dir := t.TempDir()
	res, err := Push(ctx, a, target(t, "oci:"+dir+":v1", nil), cfg, PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := Pull(ctx, b, target(t, "oci:"+dir+"@"+res.Manifest, nil), PullOptions{})
	if err != nil || p.Manifest != res.Manifest {
		t.Fatalf("pull by digest: %+v, %v", p, err)
	}
	sameBlobs(t, a, b, cfg)
	if _, err := Push(ctx, a, target(t, "oci:"+t.TempDir()+"@"+res.Manifest, nil), cfg, PushOptions{}); err != nil {
		t.Fatalf("push by the right digest: %v", err)
	}
	other := "sha256:" + strings.Repeat("0", 64)
	if _, err := Push(ctx, a, target(t, "oci:"+t.TempDir()+"@"+other, nil), cfg, PushOptions{}); err == nil || !strings.Contains(err.Error(), "asks for") {
		t.Fatalf("push by a wrong digest: %v", err)
	}
}
