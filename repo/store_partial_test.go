package repo

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/obdvol/obdvol/tests/regtest"
)

// CleanLeftovers removes what dead writers left and keeps what live ones
// hold, whatever the age: a pull's partial file held by openPartial, a
// blob writer's temp file. Once the pull's writer is gone, its partial
// file goes too.
func TestCleanLeftoversKeepsLiveWriters(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	old := time.Now().Add(-72 * time.Hour)
	put := func(path, body string) string {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(path, old, old)
		return path
	}
	hexOf := func(c string) string { return strings.Repeat(c, 64) }
	live, err := s.openPartial(ctx, "sha256:"+hexOf("a"))
	if err != nil || live == nil {
		t.Fatalf("openPartial: %v", err)
	}
	live.Write([]byte("a pull in flight"))
	livePath := live.Name()
	os.Chtimes(livePath, old, old)
	w, err := s.Create()
	if err != nil {
		t.Fatal(err)
	}
	w.Write(bytes.Repeat([]byte("seal in flight"), 1000))
	deadPart := put(filepath.Join(s.PartialDir(), hexOf("b")+".part"), "a failed pull")
	deadTmp := put(filepath.Join(s.tmpDir(), "blob-1"), "a killed seal")
	orphanMap := put(filepath.Join(s.PartialDir(), hexOf("c")+".map"), "map")
	put(filepath.Join(s.PartialDir(), hexOf("d")+".lazy"), "")
	keptMap := put(filepath.Join(s.PartialDir(), hexOf("d")+".map"), "map")

	paths, n, err := s.CleanLeftovers(false)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{deadPart, deadTmp, orphanMap}
	slices.Sort(want)
	slices.Sort(paths)
	if !slices.Equal(paths, want) || n != int64(len("a failed pull")+len("a killed seal")+len("map")) {
		t.Fatalf("removed %v (%d bytes), want %v", paths, n, want)
	}
	for _, p := range []string{livePath, keptMap} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if _, _, err := w.Commit(""); err != nil {
		t.Fatalf("live writer after CleanLeftovers: %v", err)
	}
	live.Close() // the pull is gone
	paths, _, err = s.CleanLeftovers(false)
	if err != nil || !slices.Equal(paths, []string{livePath}) {
		t.Fatalf("after the pull ended: removed %v, %v", paths, err)
	}
	if paths, _, _ := s.CleanLeftovers(false); len(paths) != 0 {
		t.Fatalf("second sweep removed %v", paths)
	}
}

// A pull cut by the network keeps its partial file for a resume; once
// that pull is over, CleanLeftovers (obdvol gc) frees the space.
func TestFailedPullFreedByCleanLeftovers(t *testing.T) {
	ctx := context.Background()
	reg := regtest.Start(t)
	a, b := newStore(t), newStore(t)
	cfg := chainOf(t, a, 11, 4<<20)
	if _, err := Push(ctx, a, target(t, reg.Addr+"/f:v1", nil), cfg, PushOptions{}); err != nil {
		t.Fatal(err)
	}
	fp := newFaultProxy(t, reg, cfg.Layers[0].Digest, 2<<20)
	fp.cut.Store(true)
	if _, err := Pull(ctx, b, target(t, fp.addr()+"/f:v1", nil), PullOptions{}); err == nil {
		t.Fatal("pull through a cut connection succeeded")
	}
	part := filepath.Join(b.PartialDir(), cfg.Layers[0].Digest[7:]+".part")
	fi, err := os.Stat(part)
	if err != nil || fi.Size() == 0 {
		t.Fatalf("the failed pull left no partial file: %v", err)
	}
	paths, n, err := b.CleanLeftovers(false)
	if err != nil || !slices.Equal(paths, []string{part}) || n != fi.Size() {
		t.Fatalf("CleanLeftovers = %v, %d, %v; want %s (%d bytes)", paths, n, err, part, fi.Size())
	}
	if _, err := os.Stat(part); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("partial file still there: %v", err)
	}
	fp.cut.Store(false)
	if _, err := Pull(ctx, b, target(t, fp.addr()+"/f:v1", nil), PullOptions{}); err != nil {
		t.Fatal(err)
	}
	sameBlobs(t, a, b, cfg)
}
