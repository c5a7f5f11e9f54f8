package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// obdvol resize of a volume exported by a real daemon process grows it
// online: a new NBD connection (nbdinfo, qemu-io) sees the new size, the
// data is intact and grown space reads as zeros; shrinking it is refused
// (also with --shrink) and changes nothing; a volume nobody serves still
// resizes offline; once deactivated, the grown size stays.
func TestDaemonResizeOnline(t *testing.T) {
	needTool(t, "qemu-io", "nbdinfo")
	h := newCLI(t)
	h.ok("create", "v", "--size", "4M")
	h.ok("create", "idle", "--size", "1M")
	h.startDaemon()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	uri := jstrs(t, h.json("serve", "v", "--nbd", "unix:"+sock), "serving")[0]
	qemu := func(cmds ...string) {
		t.Helper()
		args := []string{"-f", "raw"}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		out, err := exec.Command("qemu-io", append(args, uri)...).CombinedOutput()
		if err != nil || strings.Contains(string(out), "failed") {
			t.Fatalf("qemu-io %v: %v\n%s", cmds, err, out)
		}
	}
	size := func() string {
		t.Helper()
		return strings.TrimSpace(tool(t, "nbdinfo", "--size", uri))
	}
	qemu("write -P 0x5c 1M 2M", "flush")
	if s := size(); s != "4194304" {
		t.Fatalf("precondition: size %s", s)
	}
	m := h.json("resize", "v", "10M")
	if m["online"] != true || jint(t, m, "size") != 10<<20 || !strings.Contains(jstr(t, m, "device"), sock) {
		t.Fatalf("resize of the active volume: %v", m)
	}
	if s := size(); s != "10485760" {
		t.Fatalf("a new connection after the grow sees %s bytes, want 10485760", s)
	}
	qemu("read -P 0x5c 1M 2M", "read -P 0 0 1M", "read -P 0 3M 7M", "write -P 0x5d 9M 1M", "flush")
	// Shrinking an active volume is refused, --shrink or not.
	h.fails(1, []string{"shrinking", "deactivate, resize --shrink, activate"}, "resize", "v", "2M")
	h.fails(1, []string{"shrinking"}, "resize", "v", "2M", "--shrink")
	if s := size(); s != "10485760" {
		t.Fatalf("size %s after a refused shrink", s)
	}
	// Offline resize of a volume nobody serves is unchanged.
	if r := h.ok("resize", "idle", "2M"); strings.Contains(r.stdout, "online") {
		t.Errorf("offline resize says online: %s", r.stdout)
	}
	h.ok("deactivate", "v")
	if got := jint(t, h.json("info", "v"), "volume", "size"); got != 10<<20 {
		t.Fatalf("size after deactivate: %d", got)
	}
	want := make([]byte, 10<<20)
	for i := 1 << 20; i < 3<<20; i++ {
		want[i] = 0x5c
	}
	for i := 9 << 20; i < 10<<20; i++ {
		want[i] = 0x5d
	}
	h.wantDisk("v", want)
}

// A volume served by serve --foreground is not grown online: the
// foreground server refuses, naming what to do, and the size stays.
func TestResizeRefusedByForegroundServe(t *testing.T) {
	needTool(t, "nbdinfo")
	h := newCLI(t)
	h.ok("create", "v", "--size", "4M")
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := h.command(ctx, "serve", "v", "--nbd", "unix:"+sock, "--foreground")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel() // kills it
		cmd.Wait()
	}()
	uri := "nbd+unix:///v?socket=" + sock
	deadline := time.Now().Add(60 * time.Second)
	for exec.Command("nbdinfo", "--size", uri).Run() != nil {
		if time.Now().After(deadline) {
			t.Fatal("serve --foreground did not answer in 60s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.fails(1, []string{"serve --foreground", "does not resize online"}, "resize", "v", "8M")
	if s := strings.TrimSpace(tool(t, "nbdinfo", "--size", uri)); s != "4194304" {
		t.Fatalf("size %s after a refused resize", s)
	}
}
