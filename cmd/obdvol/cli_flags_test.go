package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// export refuses to overwrite an existing file without --force, never
// replaces anything but a regular file, and a failed export leaves
// neither the file nor a temporary one.
func TestCLIExportTarget(t *testing.T) {
	t.Parallel()
	h := newCLI(t)
	h.ok("create", "v", "--size", "1M")
	img := bytes.Repeat([]byte{7}, 8192)
	h.ok("import", "v", writeFile(t, "img", img))
	want := make([]byte, mib)
	copy(want, img)
	dir := t.TempDir()
	out := filepath.Join(dir, "out.img")
	if err := os.WriteFile(out, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.fails(1, []string{"exists", "--force"}, "export", "v", out)
	h.jsonErr(1, "refused", "export", "v", out)
	if b, _ := os.ReadFile(out); string(b) != "precious" {
		t.Fatalf("export without --force overwrote the file: %d bytes", len(b))
	}
	h.ok("export", "v", out, "--force")
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, "export --force", got, want)

	// Not a regular file: refused even with --force (a rename would
	// replace the node itself).
	fifo := filepath.Join(dir, "fifo")
	if err := os.Mkdir(fifo, 0o700); err != nil {
		t.Fatal(err)
	}
	h.fails(1, []string{"not a regular file"}, "export", "v", fifo, "--force")

	// A failed export (a layer's chunk corrupted) leaves nothing behind.
	m := h.json("snapshot", "v@s")
	blob := blobPath(h.root, jstr(t, m, "layer", "digest"))
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[40] ^= 0xff // inside the first chunk
	if err := os.WriteFile(blob, b, 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.img")
	r := h.run("export", "v@s", bad)
	if r.code != 1 || !strings.Contains(r.stderr, "checksum") {
		t.Errorf("export of a corrupted layer: want exit 1, a checksum error\n%s", r)
	}
	if !strings.Contains(r.stderr, "layer "+jstr(t, m, "layer", "digest")) {
		t.Errorf("the checksum error does not name the layer's digest\n%s", r)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != "out.img" && e.Name() != "fifo" {
			t.Errorf("a failed export left %s", e.Name())
		}
	}
}

// A clone takes its layout from its snapshot: --codec, --block-size and
// --chunk-size with --from are refused, not silently ignored.
func TestCLICreateFromRefusesLayoutFlags(t *testing.T) {
	t.Parallel()
	h := newCLI(t)
	h.ok("create", "v", "--size", "1M")
	h.ok("snapshot", "v@s")
	for _, args := range [][]string{
		{"--codec", "s2"},
		{"--chunk-size", "16K"},
		{"--block-size", "512"},
		{"--codec", "s2", "--chunk-size", "16K"},
	} {
		h.fails(2, []string{args[0], "--from"}, append([]string{"create", "c", "--from", "v@s"}, args...)...)
	}
	if m := h.json("list"); len(jget(t, m, "volumes").([]any)) != 1 {
		t.Errorf("a refused clone was created: %v", m)
	}
	h.ok("create", "c", "--from", "v@s")
}
