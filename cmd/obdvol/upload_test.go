package main

import (
	"math/rand"
	"testing"

	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

// obdvol push through a proxy that refuses requests over 1 MiB: with
// --chunk-size under the limit the layer goes up in chunks and nothing is
// refused; without it the whole-blob upload is refused (413) and the push
// goes on in chunks; both pull back byte-exact on another root. A bad
// --chunk-size is a usage error.
func TestCLIPushChunked(t *testing.T) {
	t.Parallel()
	reg := regtest.Start(t)
	px := faultproxy.Start(t, reg.Addr)
	px.Set(faultproxy.Faults{MaxRequestBody: mib})
	a := newCLI(t)
	a.ok("create", "v", "--size", "8M")
	img := randomImage(rand.New(rand.NewSource(11)), 3*mib+4096, func(b int) bool { return b%9 == 0 })
	a.ok("import", "v", writeFile(t, "img", img))
	a.ok("snapshot", "v@s")
	want := make([]byte, 8*mib)
	copy(want, img)

	a.fails(2, []string{"--chunk-size"}, "push", "--plain-http", "--chunk-size", "1K", "v@s", px.Addr+"/disks/v:s")
	a.fails(2, []string{"invalid size"}, "push", "--plain-http", "--chunk-size", "lots", "v@s", px.Addr+"/disks/v:s")

	m := a.json("push", "--plain-http", "--chunk-size", "256K", "v@s", px.Addr+"/disks/v:s")
	if moved, chunked := jint(t, m, "result", "blobs_moved"), jint(t, m, "result", "blobs_chunked"); moved < 2 || chunked != moved {
		t.Fatalf("push --chunk-size: %d blobs moved, %d chunked", moved, chunked)
	}
	if s := px.Stats(); s.TooLarge != 0 {
		t.Fatalf("requests refused with --chunk-size 256K: %+v", s)
	}
	b := newCLI(t)
	b.ok("pull", "--plain-http", px.Addr+"/disks/v:s", "w")
	b.wantDisk("w", want)

	px.ResetStats()
	r := a.ok("push", "--plain-http", "v@s", px.Addr+"/other/v:s")
	if s := px.Stats(); s.TooLarge == 0 {
		t.Fatalf("no 413 without --chunk-size: %+v\n%s", s, r)
	}
	c := newCLI(t)
	c.ok("pull", "--plain-http", px.Addr+"/other/v:s", "w")
	c.wantDisk("w", want)
}
