package volume_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/obdvol/obdvol/metadata"
	"github.com/obdvol/obdvol/repo"
	"github.com/obdvol/obdvol/volume"
)

type sealCall struct {
	vol string
	d   time.Duration
	err error
}

// Options.OnSeal hears once from every Snapshot that got past its checks,
// with the volume, a duration and the outcome; refused calls are not seals.
func TestOnSealObservesSnapshots(t *testing.T) {
	root := t.TempDir()
	cat, err := metadata.Open(filepath.Join(root, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := repo.NewStore(root)
	if err != nil {
		t.Fatal(err)
	}
	var calls []sealCall // Snapshot is called from this goroutine only
	m := volume.NewManager(root, cat, repo.Blobs{Store: st}, volume.Options{CacheBytes: 4 << 20,
		OnSeal: func(vol string, d time.Duration, err error) { calls = append(calls, sealCall{vol, d, err}) }})
	t.Cleanup(func() { m.Close() })
	if _, err := m.Create("v", 4<<20, volume.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v, err := m.Open("v")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := v.WriteAt(make([]byte, 8192), 4096); err != nil {
		t.Fatal(err)
	}
	res, err := v.Snapshot(context.Background(), "s1")
	if err != nil || res.Layer == nil {
		t.Fatalf("snapshot with writes: %v (layer %v)", err, res)
	}
	if len(calls) != 1 || calls[0].vol != "v" || calls[0].err != nil || calls[0].d < res.Duration {
		t.Fatalf("after one seal OnSeal saw %+v (seal took %v)", calls, res.Duration)
	}
	if _, err := v.Snapshot(context.Background(), "bad/name"); err == nil {
		t.Fatal("a snapshot named bad/name was taken")
	}
	if _, err := v.Snapshot(context.Background(), "s1"); err == nil {
		t.Fatal("a second snapshot named s1 was taken")
	}
	if len(calls) != 2 || calls[1].err == nil {
		t.Fatalf("a refused name is no seal; a duplicate one is a failed seal: OnSeal saw %+v", calls)
	}
}
