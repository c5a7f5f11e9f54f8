package daemon

import (
	"os"
	"path/filepath"
	"testing"
)

// A root's identity is made once and kept (a restarted daemon must tag
// and recognise the same devices); the tags of two roots, or of two
// volumes of one root, differ and are never zero.
func TestRootIDAndTags(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	ida, err := rootID(a)
	if err != nil {
		t.Fatal(err)
	}
	again, err := rootID(a)
	if err != nil || again != ida {
		t.Fatalf("root identity changed: %q then %q (%v)", ida, again, err)
	}
	idb, err := rootID(b)
	if err != nil || idb == ida {
		t.Fatalf("two roots share identity %q (%v)", ida, err)
	}
	if fi, err := os.Stat(filepath.Join(a, rootIDFile)); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("root.id: %v %v, want a private file", fi, err)
	}
	tags := map[uint64]string{}
	for _, c := range []struct{ id, vol string }{{ida, "v"}, {ida, "w"}, {idb, "v"}, {idb, "w"}} {
		tg := ublkTag(c.id, c.vol)
		if tg == 0 {
			t.Fatalf("tag of %s/%s is zero", c.id, c.vol)
		}
		if prev, dup := tags[tg]; dup {
			t.Fatalf("tag %#x shared by %s and %s/%s", tg, prev, c.id, c.vol)
		}
		tags[tg] = c.id + "/" + c.vol
		if ublkTag(c.id, c.vol) != tg {
			t.Fatal("a tag is not stable")
		}
	}
	// A damaged identity is an error, never silently replaced (the
	// devices tagged with the old one would no longer be recognised).
	os.WriteFile(filepath.Join(a, rootIDFile), []byte("garbage\n"), 0o600)
	if _, err := rootID(a); err == nil {
		t.Fatal("a damaged root.id was accepted")
	}
	// A host opens with it and keeps it across a stop.
	root := filepath.Join(t.TempDir(), "root")
	m := newManager(t, root)
	h := startHost(t, root, m)
	first := h.id
	h.Stop()
	h2 := startHost(t, root, m)
	if h2.id != first || len(first) != 32 {
		t.Fatalf("host identity %q then %q", first, h2.id)
	}
}
