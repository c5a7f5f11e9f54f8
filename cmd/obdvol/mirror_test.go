package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/tests/faultproxy"
	"github.com/obdvol/obdvol/tests/regtest"
)

// Pull (eager and lazy), the later reads of a lazy volume in another
// process's env (export here, the daemon alike) and fill all go through a
// pull-through mirror: --mirror for the commands that take it,
// OBDVOL_MIRRORS for the rest. The origin's egress shows it.
func TestPullThroughMirror(t *testing.T) {
	ctx := context.Background()
	origin := regtest.Start(t)
	egress := faultproxy.Start(t, origin.Addr)
	mirror := regtest.StartMirror(t, egress.Addr)
	t.Setenv(repo.EnvHostsDir, t.TempDir())
	t.Setenv(repo.EnvMirrors, "")

	a := newHost(t)
	plain := &transferFlags{PlainHTTP: true}
	a.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, a.g, &createOptions{Size: "8M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "g")
	})
	a.run(func(o *bytes.Buffer) error {
		return runImport(ctx, o, a.g, &importOptions{Offset: "0"}, "g", writeImage(t, 8<<20, 11))
	})
	a.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, a.g, "g@v1") })
	ref := egress.Addr + "/g:v1"
	a.run(func(o *bytes.Buffer) error {
		return runPush(ctx, o, a.g, &pushOptions{transferFlags: *plain}, "g@v1", ref)
	})
	want := a.export("g@v1")
	viaMirror := transferFlags{PlainHTTP: true, Mirror: mirrorFlags{Mirrors: []string{"http://" + mirror.Addr}}}

	// Eager, through the cold mirror.
	b := newHost(t)
	res := b.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, b.g, &pullOptions{transferFlags: viaMirror}, ref, "g")
	})
	if num(res, "hosts", mirror.Addr, "bytes") < float64(num(res, "result", "bytes_moved")) || num(res, "result", "bytes_moved") == 0 {
		t.Fatalf("pull: the mirror did not serve the blobs: %v", res)
	}
	if !bytes.Equal(b.export("g"), want) {
		t.Fatal("eager pull through the mirror differs")
	}
	rec, _ := volumeRecord(mustEnv(t, b.g), "g")
	waitStored(t, mirror, rec.Layers)

	// Lazy: the pull takes --mirror; the export is another env that finds
	// the mirror in OBDVOL_MIRRORS, as the daemon does.
	egress.ResetStats()
	c := newHost(t)
	c.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, c.g, &pullOptions{transferFlags: viaMirror, Lazy: true}, ref, "g")
	})
	t.Setenv(repo.EnvMirrors, "http://"+mirror.Addr)
	if !bytes.Equal(c.export("g"), want) {
		t.Fatal("lazy read through the mirror differs")
	}
	if s := egress.Stats(); s.BlobGets != 0 {
		t.Fatalf("lazy pull and read through the warm mirror reached the origin: %+v", s)
	}

	// Fill with --mirror, in an env whose process has no mirror set.
	t.Setenv(repo.EnvMirrors, "")
	d := newHost(t)
	d.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, d.g, &pullOptions{transferFlags: viaMirror, Lazy: true}, ref, "g")
	})
	e := mustEnv(t, d.g)
	e.mirror = viaMirror.Mirror
	if n, err := fillVolume(ctx, e, d.g, "g"); err != nil || n == 0 {
		t.Fatalf("fill: %d bytes, %v", n, err)
	}
	if s := egress.Stats(); s.BlobGets != 0 {
		t.Fatalf("fill through the warm mirror reached the origin: %+v", s)
	}
	if !bytes.Equal(d.export("g"), want) {
		t.Fatal("filled volume differs")
	}

	// And without any mirror, a later read goes to the origin (what the
	// counts above prove is the mirror's doing).
	f := newHost(t)
	f.run(func(o *bytes.Buffer) error {
		return runPull(ctx, o, f.g, &pullOptions{transferFlags: *plain, Lazy: true}, ref, "g")
	})
	f.export("g")
	if s := egress.Stats(); s.BlobGets == 0 {
		t.Fatalf("a lazy read without mirrors did not reach the origin: %+v", s)
	}
}

// waitStored waits until the mirror has stored the blobs (it stores a
// missed blob in the background, after serving it).
func waitStored(t *testing.T, mirror *regtest.Registry, digests []string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for _, d := range digests {
		for {
			if _, err := os.Stat(mirror.BlobPath(d)); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the mirror never stored %s", d)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// --mirror is checked before anything runs; the background fill gets the
// pull's mirror flags.
func TestMirrorFlags(t *testing.T) {
	m := mirrorFlags{Mirrors: []string{"ftp://x"}}
	if err := m.check(); err == nil || !strings.Contains(err.Error(), "--mirror") {
		t.Fatalf("bad --mirror: %v", err)
	}
	m = mirrorFlags{Mirrors: []string{"", "http://m:5000"}, HostsDir: "/h"}
	if err := m.check(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(m.args(), " "); got != "--mirror http://m:5000 --hosts-dir /h" {
		t.Fatalf("args %q", got)
	}
	m = mirrorFlags{Mirrors: []string{""}}
	if err := m.check(); err != nil || m.Mirrors == nil || len(m.Mirrors) != 0 {
		t.Fatalf("--mirror \"\": %v %q", err, m.Mirrors)
	}
	if got := strings.Join(m.args(), " "); got != "--mirror=" {
		t.Fatalf("args of no mirror %q", got)
	}
}
