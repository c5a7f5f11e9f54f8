package daemon

import (
	"os"
	"path/filepath"
	"testing"
)

// Stable names: a symlink replaced atomically, never anything else; a
// name that is not a volume name is refused; unlink removes only a link
// that still names the device being deleted.
func TestStableNames(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dev", "obdvol")
	h := &Host{cfg: Config{DevDir: dir}}
	p, err := h.link("web1", "/dev/ublkb3")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.Readlink(p); p != filepath.Join(dir, "web1") || got != "/dev/ublkb3" {
		t.Fatalf("link %s -> %s", p, got)
	}
	// A new device after a reboot: the link moves.
	if _, err := h.link("web1", "/dev/ublkb0"); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.Readlink(p); got != "/dev/ublkb0" {
		t.Fatalf("after relink: -> %s", got)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("leftovers beside the link: %v", ents)
	}
	for _, bad := range []string{"../etc", "a/b", ".hidden", ""} {
		if _, err := h.link(bad, "/dev/ublkb0"); err == nil {
			t.Errorf("link %q accepted", bad)
		}
	}
	file := filepath.Join(dir, "precious")
	os.WriteFile(file, []byte("x"), 0o600)
	if _, err := h.link("precious", "/dev/ublkb1"); err == nil {
		t.Error("a regular file was replaced by a link")
	}
	if b, _ := os.ReadFile(file); string(b) != "x" {
		t.Error("the regular file changed")
	}
	h.unlink(p, "/dev/ublkb3") // an older device's: the link stays
	if _, err := os.Lstat(p); err != nil {
		t.Fatal("unlink removed a link to another device")
	}
	h.unlink(p, "/dev/ublkb0")
	if _, err := os.Lstat(p); !os.IsNotExist(err) {
		t.Fatal("unlink left the link")
	}
}
