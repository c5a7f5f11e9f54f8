package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serve --nbd unix:PATH replaces nothing but a stale socket: a regular
// file and a live server's socket are refused and left alone; the NBD
// and control sockets it creates are 0600.
func TestServeUnixSocketSafety(t *testing.T) {
	ctx := context.Background()
	h := newHost(t)
	for _, v := range []string{"a", "b"} {
		h.run(func(o *bytes.Buffer) error {
			return runCreate(ctx, o, h.g, &createOptions{Size: "1M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, v)
		})
	}
	dir := t.TempDir()

	file := filepath.Join(dir, "precious")
	if err := os.WriteFile(file, []byte("do not delete"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := serveRefused(t, h, "unix:"+file, "a")
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("serve over a regular file: %v, want a refusal", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "do not delete" {
		t.Errorf("serve replaced a regular file: %q, %v", b, err)
	}

	sock := filepath.Join(dir, "nbd.sock")
	serveVolume(t, h, &serveOptions{NBD: "unix:" + sock}, "a")
	for _, p := range []string{sock, controlPath(h.g.Root, "a")} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want a socket with 0600", p, fi.Mode())
		}
	}
	err = serveRefused(t, h, "unix:"+sock, "b")
	if err == nil || !strings.Contains(err.Error(), "in use") || errorKind(err) != "busy" {
		t.Errorf("second serve on a live socket: %v (kind %s), want busy: in use", err, errorKind(err))
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("the first server's socket was taken over: %v", err)
	}
	c.Close()
}

// serveRefused runs a serve that should fail at once; one that starts
// instead is stopped after a while, and nil returned.
func serveRefused(t *testing.T, h *host, spec string, vols ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := runServe(ctx, &bytes.Buffer{}, h.g, &serveOptions{NBD: spec}, vols, nil)
	if ctx.Err() != nil {
		t.Errorf("serve --nbd %s started (stopped after 5s, %v)", spec, err)
		return nil
	}
	return err
}
