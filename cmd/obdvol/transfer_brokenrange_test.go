package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

// Lazy volumes read through registries that break Range or whose tokens
// expire, end to end (pull --lazy, then export, whose reads find the
// registry through the catalogue as a later process would): byte-exact
// when the registry ignores Range (the layer lands whole) or its token
// expires every few requests; a clear error when it answers another range.
func TestLazyVolumeThroughBrokenRegistries(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a := newHost(t)
	tx := &transferFlags{PlainHTTP: true}
	a.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, a.g, &createOptions{Size: "8M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "g")
	})
	a.run(func(o *bytes.Buffer) error {
		return runImport(ctx, o, a.g, &importOptions{Offset: "0"}, "g", writeImage(t, 8<<20, 4))
	})
	a.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, a.g, "g@v1") })
	a.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, a.g, &pushOptions{transferFlags: *tx}, "g@v1", reg.Addr+"/g:v1")
	})
	want := a.export("g@v1")
	p := faultproxy.Start(t, reg.Addr)
	lazy := func() *host {
		h := newHost(t)
		h.run(func(o *bytes.Buffer) error {
			return runPull(ctx, o, h.g, &pullOptions{transferFlags: *tx, Lazy: true}, p.Addr+"/g:v1", "g")
		})
		return h
	}

	// Range ignored: the layer is streamed whole into the local copy.
	p.Set(faultproxy.Faults{IgnoreRange: true})
	c := lazy()
	if !bytes.Equal(c.export("g"), want) {
		t.Fatal("lazy volume read through a registry ignoring Range differs")
	}
	info := c.run(func(o *bytes.Buffer) error { return runInfo(ctx, o, c.g, "g") })
	for _, l := range info["volume"].(map[string]any)["chain"].([]any) {
		if l := l.(map[string]any); l["local_bytes"] != l["stored_bytes"] {
			t.Fatalf("after reading through a registry ignoring Range: %v", l)
		}
	}

	// Another range: the lazy pull (which reads each layer's trailer)
	// fails and says so.
	p.Set(faultproxy.Faults{ShiftContentRange: 512})
	d := newHost(t)
	err := runPull(ctx, &bytes.Buffer{}, d.g, &pullOptions{transferFlags: *tx, Lazy: true}, p.Addr+"/g:v1", "g")
	if !errors.Is(err, repo.ErrBadRange) || !strings.Contains(err.Error(), "serves other bytes than asked") {
		t.Fatalf("lazy pull through a registry answering other ranges: %v", err)
	}

	// Tokens good for 3 requests, credentials from the docker config.
	p.Set(faultproxy.Faults{})
	p.SetBearer(&faultproxy.Bearer{User: "bob", Password: "pw-e41f", Uses: 3})
	dir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dir)
	conf := `{"auths":{"` + p.Addr + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte("bob:pw-e41f")) + `"}}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	e := lazy()
	if !bytes.Equal(e.export("g"), want) {
		t.Fatal("lazy volume read with expiring tokens differs")
	}
	if st := p.BearerStats(); st.Issued < 3 || st.Unauthorized < 3 {
		t.Fatalf("tokens did not expire during the lazy session: %+v", st)
	}
}
