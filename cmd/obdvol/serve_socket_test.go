package main

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obdvol/obdvol/daemon"
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
	for _, p := range []string{sock, daemon.VolumeSocketPath(h.g.Root, "a")} {
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
	err := runServe(ctx, &bytes.Buffer{}, h.g, &serveOptions{NBD: spec, Foreground: true}, vols, nil)
	if ctx.Err() != nil {
		t.Errorf("serve --nbd %s started (stopped after 5s, %v)", spec, err)
		return nil
	}
	return err
}

// After kill -9 of a serve process, its device record and socket are
// stale: the next command that needs the volume clears them and goes on
// (the server's liveness is its volume lock, not its PID).
func TestServeKilledLeavesNothingActive(t *testing.T) {
	h := newCLI(t)
	h.ok("create", "v", "--size", "1M")
	h.ok("snapshot", "v@s1")
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := h.command(ctx, "serve", "v", "--foreground", "--nbd", "unix:"+sock)
	stdout, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	srv.Stderr = &stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if !strings.HasPrefix(line, "serving ") {
		srv.Process.Kill()
		srv.Wait()
		t.Fatalf("serve printed %q\n%s", line, stderr.String())
	}
	if r := h.ok("info", "v"); !strings.Contains(r.stdout, "device:") {
		t.Fatalf("precondition: info shows no device while serving:\n%s", r.stdout)
	}
	if err := srv.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	srv.Wait()
	if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("precondition: kill -9 left no stale socket (%v)", err)
	}

	h.ok("resize", "v", "2M")
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("the dead server's socket is still there (%v)", err)
	}
	if r := h.ok("info", "v"); strings.Contains(r.stdout, "device:") {
		t.Errorf("info still shows a device after the server died:\n%s", r.stdout)
	}
	h.ok("rollback", "v@s1")
	h.ok("delete", "v")
}
