package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func needTool(t *testing.T, tools ...string) {
	for _, x := range tools {
		if _, err := exec.LookPath(x); err != nil {
			t.Fatalf("%s not installed: run make deps", x)
		}
	}
}

func tool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// serveVolume serves vol of host h on a unix socket until the test ends.
func serveVolume(t *testing.T, h *host, o *serveOptions, vols ...string) []string {
	o.Foreground = true
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan []string, 1)
	done := make(chan error, 1)
	go func() { done <- runServe(ctx, &bytes.Buffer{}, h.g, o, vols, ready) }()
	var uris []string
	select {
	case uris = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not start")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve returned %v", err)
		}
	})
	return uris
}

// Real NBD clients against obdvol serve: qemu-img convert equals obdvol
// export, nbdinfo --map shows the chain's holes and data, qemu-io writes
// and reads back, fio verifies random writes, a live snapshot works.
func TestServeNBDClients(t *testing.T) {
	needTool(t, "qemu-img", "qemu-io", "nbdinfo", "fio")
	ctx := context.Background()
	h := newHost(t)
	h.g.JSON = false
	h.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, h.g, &createOptions{Size: "32M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "v")
	})
	h.run(func(o *bytes.Buffer) error {
		return runImport(ctx, o, h.g, &importOptions{Offset: "8M"}, "v", writeImage(t, 4<<20, 4))
	})
	h.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, h.g, "v@s1") })
	h.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, h.g, &createOptions{Size: "1M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "other")
	})
	want := h.export("v@s1")
	sock := filepath.Join(t.TempDir(), "s.sock")
	uris := serveVolume(t, h, &serveOptions{NBD: "unix:" + sock}, "v", "other")
	uri := uris[0]
	out := filepath.Join(t.TempDir(), "out.raw")
	tool(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, out)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatal("qemu-img convert from the export differs from obdvol export")
	}
	m := tool(t, "nbdinfo", "--map", uri)
	if !strings.Contains(m, "0     8388608    3  hole,zero") || !strings.Contains(m, "data") {
		t.Fatalf("nbdinfo --map:\n%s", m)
	}
	io := tool(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 64k", "-c", "read -P 0xab 1M 64k", uri)
	if strings.Contains(io, "Pattern verification failed") {
		t.Fatalf("qemu-io:\n%s", io)
	}
	// A live snapshot through the control socket, then more writes.
	h.run(func(o *bytes.Buffer) error { return runSnapshot(ctx, o, h.g, "v@live") })
	tool(t, "qemu-io", "-f", "raw", "-c", "write -P 0xcd 1M 64k", uri)
	fio := tool(t, "fio", "--name=v", "--ioengine=nbd", "--uri="+uri, "--rw=randwrite", "--bs=4k", "--size=16M",
		"--offset=16M", "--iodepth=16", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--verify_state_save=0")
	if !strings.Contains(fio, "err= 0") {
		t.Fatalf("fio:\n%s", fio)
	}
	live := h.export("v@live")
	if !bytes.Equal(live[1<<20:1<<20+4], []byte{0xab, 0xab, 0xab, 0xab}) {
		t.Fatal("live snapshot does not hold the write made before it")
	}
	// The other export is untouched by all of this.
	out2 := filepath.Join(t.TempDir(), "other.raw")
	tool(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uris[1], out2)
	if got, _ := os.ReadFile(out2); !bytes.Equal(got, make([]byte, 1<<20)) {
		t.Fatal("the other export changed")
	}
}

func TestServeReadOnly(t *testing.T) {
	needTool(t, "qemu-io")
	ctx := context.Background()
	h := newHost(t)
	h.run(func(o *bytes.Buffer) error {
		return runCreate(ctx, o, h.g, &createOptions{Size: "1M", Codec: "zstd", BlockSize: 4096, ChunkSize: "64K"}, "v")
	})
	uris := serveVolume(t, h, &serveOptions{NBD: "unix:" + filepath.Join(t.TempDir(), "s.sock"), ReadOnly: true}, "v")
	out, _ := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", uris[0]).CombinedOutput()
	if !strings.Contains(strings.ToLower(string(out)), "read-only") && !strings.Contains(strings.ToLower(string(out)), "permission") {
		t.Fatalf("write to a read-only export:\n%s", out)
	}
}
