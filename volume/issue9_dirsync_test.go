package volume_test

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/obdvol/obdvol/volume"
)

// Issue 9 #14: creating volumes/<name>/ and w-<gen>/ fsyncs their parents
// (and the new layer directory itself, for the names of its files), so a
// power cut after a commit that references them cannot lose them.
func TestNewDirectoriesAreSynced(t *testing.T) {
	root := t.TempDir()
	m := newManager(t, root)
	var mu sync.Mutex
	var synced []string
	restore := volume.SetSyncDirHook(func(dir string) {
		mu.Lock()
		synced = append(synced, filepath.Clean(dir))
		mu.Unlock()
	})
	defer restore()
	want := func(step string, dirs ...string) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		for _, d := range dirs {
			if !slices.Contains(synced, filepath.Join(root, d)) {
				t.Errorf("%s: directory %q was not fsynced (synced: %q)", step, d, synced)
			}
		}
		synced = nil
	}
	if _, err := m.Create("v", 1<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("create", ".", "volumes")
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	want("open", "volumes/v", "volumes/v/w-1")
	v.WriteAt(make([]byte, 4096), 0)
	if _, err := v.Snapshot(context.Background(), "s"); err != nil {
		t.Fatal(err)
	}
	want("snapshot", "volumes/v", "volumes/v/w-2")
}
